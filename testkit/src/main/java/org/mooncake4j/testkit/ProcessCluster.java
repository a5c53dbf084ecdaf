package org.mooncake4j.testkit;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Runs N real JVM processes of one main class (the test class path, the same JDK), one per rank,
 * with RANK / WORLD_SIZE / LOCAL_RANK set plus any extra environment, and collects each one's exit
 * code and output. Every wait has a deadline: {@link #awaitAll} kills what is still running when it
 * passes and says so in the result.
 *
 * <p>Not thread-safe; one test drives one cluster. {@link #close()} kills every process left.
 */
public final class ProcessCluster implements AutoCloseable {
    /** The outcome of one rank's process. {@code exitCode} is -1 when it was killed at the deadline. */
    public record Result(int rank, int exitCode, List<String> output, boolean timedOut) {
        public String text() { return String.join("\n", output); }

        /** Lines printed as {@code RESULT <key>=<value>}: the values a test asserts. */
        public Map<String, String> results() {
            Map<String, String> m = new HashMap<>();
            for (String l : output) {
                if (l.startsWith("RESULT ")) {
                    int eq = l.indexOf('=');
                    m.put(l.substring(7, eq), l.substring(eq + 1));
                }
            }
            return m;
        }
    }

    private final List<Process> processes = new ArrayList<>();
    private final List<List<String>> outputs = new ArrayList<>();
    private final List<Thread> pumps = new ArrayList<>();

    /** A free TCP port on the loopback interface (racy by nature; good enough for tests). */
    public static int freePort() {
        try (ServerSocket s = new ServerSocket(0)) {
            s.setReuseAddress(true);
            return s.getLocalPort();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    public static Path javaBinary() {
        return Path.of(System.getProperty("java.home"), "bin", "java");
    }

    /** Starts ranks {@code 0..worldSize-1}. */
    public static ProcessCluster start(Class<?> main, int worldSize, Map<String, String> env, String... args) {
        ProcessCluster c = new ProcessCluster();
        for (int r = 0; r < worldSize; r++) c.startRank(main, r, worldSize, env, args);
        return c;
    }

    /** Starts one more process as {@code rank} (e.g. a replacement); returns its index in this cluster. */
    public int startRank(Class<?> main, int rank, int worldSize, Map<String, String> env, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(javaBinary().toString());
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.add("-XX:+UseSerialGC");
        cmd.add("-XX:TieredStopAtLevel=1".equals(System.getenv("MOONCAKE_TEST_JIT")) ? "-XX:TieredStopAtLevel=1" : "-XX:+TieredCompilation");
        cmd.add("-Xss1m");
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(main.getName());
        Collections.addAll(cmd, args);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        Map<String, String> e = pb.environment();
        e.put("RANK", Integer.toString(rank));
        e.put("WORLD_SIZE", Integer.toString(worldSize));
        e.put("LOCAL_RANK", Integer.toString(rank));
        e.putAll(env);
        try {
            Process p = pb.start();
            List<String> out = Collections.synchronizedList(new ArrayList<>());
            Thread pump = Thread.ofPlatform().daemon().name("rank-" + rank + "-output").start(() -> {
                try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                    for (String line; (line = r.readLine()) != null; ) {
                        out.add(line);
                        if (System.getenv("MOONCAKE_TEST_ECHO") != null) System.err.println("[" + rank + "] " + line);
                    }
                } catch (IOException ignored) {
                    // the process went away; what it printed is kept
                }
            });
            processes.add(p);
            outputs.add(out);
            pumps.add(pump);
            return processes.size() - 1;
        } catch (IOException ex) {
            throw new IllegalStateException("could not start " + cmd.get(0), ex);
        }
    }

    public Process process(int index) { return processes.get(index); }

    /** A snapshot of what process {@code index} has printed so far (its output thread keeps appending). */
    public List<String> output(int index) {
        List<String> out = outputs.get(index);
        synchronized (out) {
            return new ArrayList<>(out);
        }
    }

    /** Kills the process with SIGKILL. */
    public void kill(int index) { processes.get(index).destroyForcibly(); }

    /** Sends a POSIX signal by name (STOP, CONT, KILL) with kill(1). */
    public void signal(int index, String sig) {
        try {
            new ProcessBuilder("kill", "-" + sig, Long.toString(processes.get(index).pid())).start().waitFor(5, TimeUnit.SECONDS);
        } catch (IOException | InterruptedException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Waits until some output line of process {@code index} contains {@code text}; false at the deadline. */
    public boolean awaitOutput(int index, String text, Duration timeout) throws InterruptedException {
        long end = System.nanoTime() + timeout.toNanos();
        while (System.nanoTime() < end) {
            synchronized (outputs.get(index)) {
                for (String l : outputs.get(index)) if (l.contains(text)) return true;
            }
            Thread.sleep(5);
        }
        return false;
    }

    /** Waits for every process; those still running at the deadline are killed and marked timed out. */
    public List<Result> awaitAll(Duration timeout) throws InterruptedException {
        long end = System.nanoTime() + timeout.toNanos();
        List<Result> results = new ArrayList<>();
        for (int i = 0; i < processes.size(); i++) {
            Process p = processes.get(i);
            long left = Math.max(0, end - System.nanoTime());
            boolean done = p.waitFor(left, TimeUnit.NANOSECONDS);
            if (!done) {
                p.destroyForcibly();
                p.waitFor(5, TimeUnit.SECONDS);
            }
            pumps.get(i).join(2000);
            List<String> out;
            synchronized (outputs.get(i)) { out = new ArrayList<>(outputs.get(i)); }
            results.add(new Result(i, done ? p.exitValue() : -1, out, !done));
        }
        return results;
    }

    /** Describes failed processes with their output, for assertion messages. */
    public static String describe(List<Result> results) {
        StringBuilder sb = new StringBuilder();
        // first a line per process with its exit and its first failure line: a log shortened from the
        // end still shows which process failed and why
        for (Result r : results) {
            sb.append(exit(r));
            for (String l : r.output()) {
                if (l.startsWith("FAIL")) {
                    sb.append(": ").append(l);
                    break;
                }
            }
            sb.append('\n');
        }
        for (Result r : results) {
            sb.append("--- ").append(exit(r)).append('\n');
            List<String> o = r.output();
            for (String l : o.subList(Math.max(0, o.size() - 60), o.size())) sb.append(l).append('\n');
        }
        return sb.toString();
    }

    private static String exit(Result r) {
        return "process " + r.rank() + " exit=" + r.exitCode() + (r.timedOut() ? " (killed at deadline)" : "");
    }

    @Override
    public void close() {
        for (Process p : processes) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        }
    }
}
