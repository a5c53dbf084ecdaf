package org.mooncake4j.pg.chaos;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import org.mooncake4j.testkit.ProcessCluster;

/**
 * The worker JVMs of one chaos trial. Like {@link ProcessCluster}, plus what fault injection needs: a
 * command prefix per process (to start one inside a network namespace), the arrival time of every
 * output line, waiting for a line that matches a predicate, and POSIX signals sent with kill(2)
 * directly, so the moment of a fault is known to the microsecond. Every wait has a deadline.
 *
 * <p>Driven by one test thread; each process has a daemon thread pumping its output (stdout and
 * stderr merged), which ends when the process does. {@link #close()} kills what is left and joins
 * the pumps.
 */
final class WorkerProcesses implements AutoCloseable {
    /** One output line and {@link System#nanoTime()} when the pump read it. */
    record Line(long nanos, String text) {}

    static final int SIGKILL = 9, SIGCONT = 18, SIGSTOP = 19; // Linux numbers (x86-64 and arm64 alike)
    private static final MethodHandle KILL = Linker.nativeLinker().downcallHandle(
            Linker.nativeLinker().defaultLookup().find("kill").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT));

    private final List<Process> processes = new ArrayList<>();
    private final List<List<Line>> outputs = new ArrayList<>();
    private final List<Thread> pumps = new ArrayList<>();
    private final Object arrivals = new Object();

    /** Starts {@code main} as {@code rank} of {@code worldSize}, behind {@code prefix} (may be empty); returns its index. */
    int start(Class<?> main, int rank, int worldSize, Map<String, String> env, List<String> prefix, String... args) {
        List<String> cmd = new ArrayList<>(prefix);
        Collections.addAll(cmd, ProcessCluster.javaBinary().toString(), "--enable-native-access=ALL-UNNAMED", "-XX:+UseSerialGC",
                "-Xss1m", "-Xmx384m", "-Dorg.slf4j.simpleLogger.showDateTime=true", "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-cp", System.getProperty("java.class.path"), main.getName());
        Collections.addAll(cmd, args);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().put("RANK", Integer.toString(rank));
        pb.environment().put("WORLD_SIZE", Integer.toString(worldSize));
        pb.environment().put("LOCAL_RANK", Integer.toString(rank));
        pb.environment().putAll(env);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new IllegalStateException("could not start " + String.join(" ", cmd.subList(0, Math.min(cmd.size(), prefix.size() + 1))), e);
        }
        List<Line> out = Collections.synchronizedList(new ArrayList<>());
        Thread pump = Thread.ofPlatform().daemon().name("chaos-rank-" + rank + "-output").start(() -> {
            try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = r.readLine()) != null; ) {
                    out.add(new Line(System.nanoTime(), line));
                    synchronized (arrivals) { arrivals.notifyAll(); }
                }
            } catch (IOException ignored) {
                // the process is gone; what it printed is kept
            }
        });
        processes.add(p);
        outputs.add(out);
        pumps.add(pump);
        return processes.size() - 1;
    }

    long pid(int index) { return processes.get(index).pid(); }

    List<Long> pids() { return processes.stream().map(Process::pid).toList(); }

    List<Line> output(int index) {
        List<Line> o = outputs.get(index);
        synchronized (o) { return new ArrayList<>(o); }
    }

    /** The first line of process {@code index} matching {@code p}, waiting up to {@code timeout}; empty at the deadline or when it exited without one. */
    Optional<Line> awaitLine(int index, Predicate<String> p, Duration timeout) throws InterruptedException {
        long end = System.nanoTime() + timeout.toNanos();
        while (true) {
            for (Line l : output(index)) if (p.test(l.text())) return Optional.of(l);
            long left = end - System.nanoTime();
            if (left <= 0) return Optional.empty();
            if (!processes.get(index).isAlive() && !pumps.get(index).isAlive()) {
                for (Line l : output(index)) if (p.test(l.text())) return Optional.of(l);
                return Optional.empty();
            }
            synchronized (arrivals) { arrivals.wait(Math.max(1, Math.min(50, left / 1_000_000))); }
        }
    }

    /** Sends signal {@code sig} (e.g. {@link #SIGSTOP}) to process {@code index} with kill(2), at once (no helper process). */
    void signal(int index, int sig) {
        int rc;
        try {
            rc = (int) KILL.invokeExact((int) pid(index), sig);
        } catch (Throwable t) {
            throw new IllegalStateException("kill(" + pid(index) + ", " + sig + ") could not be called", t);
        }
        if (rc != 0) throw new IllegalStateException("kill(" + pid(index) + ", " + sig + ") failed: the process is gone");
    }

    /** Waits for process {@code index} to exit by {@code deadlineNanos}; its exit code, or empty if it still runs. */
    Optional<Integer> awaitExit(int index, long deadlineNanos) throws InterruptedException {
        Process p = processes.get(index);
        if (!p.waitFor(Math.max(0, deadlineNanos - System.nanoTime()), TimeUnit.NANOSECONDS)) return Optional.empty();
        pumps.get(index).join(2000);
        return Optional.of(p.exitValue());
    }

    boolean alive(int index) { return processes.get(index).isAlive(); }

    int size() { return processes.size(); }

    /** Kills every process (and its children) still running, waits for them and for the output pumps. */
    @Override
    public void close() throws InterruptedException {
        for (Process p : processes) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        }
        for (Process p : processes) p.waitFor(10, TimeUnit.SECONDS);
        for (Thread t : pumps) t.join(2000);
    }
}
