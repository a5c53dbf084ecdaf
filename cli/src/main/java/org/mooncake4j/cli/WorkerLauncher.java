package org.mooncake4j.cli;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * Starts the worker JVMs of one node and supervises them, as torchrun does: worker {@code i} of
 * node {@code R} is rank {@code R·nproc + i} and gets {@code RANK}, {@code LOCAL_RANK},
 * {@code WORLD_SIZE}, {@code LOCAL_WORLD_SIZE}, {@code GROUP_RANK}, {@code MASTER_ADDR},
 * {@code MASTER_PORT}, {@code MOONCAKE_STORE} and {@code MOONCAKE_STORE_HOSTED=1}. Every line a
 * worker prints goes to the {@link LineSink} tagged with its rank. The job succeeds when every
 * worker's last process exits with 0; when one exits otherwise and no restart is left, the launcher
 * names it, stops the others (SIGTERM, then SIGKILL after the grace period) and ends with that
 * worker's exit code.
 *
 * <p>Elastic restarts ({@link Builder#maxRestarts}): while this launcher has restarts left, a worker
 * whose process dies (non-zero exit, or killed by a signal) is restarted alone, with the same
 * {@code RANK}, {@code LOCAL_RANK} and {@code WORLD_SIZE} plus {@code MOONCAKE_EXTENSION=1} and
 * {@code MOONCAKE_RESTART_COUNT=n} (how many times this rank has been restarted), so that it rejoins
 * the running process group as an extension rank (see {@link Elastic}); the other workers keep
 * running. (torchrun restarts every worker instead.) First processes get {@code MOONCAKE_EXTENSION=0}
 * and {@code MOONCAKE_RESTART_COUNT=0}. The budget counts restarts of this launcher's own workers,
 * like torchrun's per-agent {@code --max-restarts}; a restart needs nothing but the local processes
 * (no store, no other launcher), so with several launchers (one per node, sharing one store, e.g.
 * etcd) each restarts its own workers.
 *
 * <p>Threading: {@link #run()} blocks its caller until the job ends; it is the only consumer of the
 * exit events, which one daemon thread per worker process produces (not the common fork-join pool,
 * so the caller may run on that pool). Two more daemon threads per worker process copy its stdout
 * and stderr to the sink, so the sink must accept calls from several threads. A JVM shutdown hook
 * (Ctrl-C, SIGTERM to the launcher) stops the workers from the hook thread; stopping is
 * synchronized and idempotent.
 *
 * <p>Ownership: the launcher owns every process it starts and stops all of them before
 * {@link #run()} returns or the JVM exits. A {@link Worker} holds one rank for the whole job and an
 * exit event names the worker and the process that ended; a restart is one more
 * {@link Worker#start()} of the same worker, made under the same lock as {@link #stopAll()}, so a
 * replacement is never started behind a stop. {@link Events} are called on the supervising thread
 * (the caller of {@link #run()}). Every wait is bounded: the job by its time limit when one is set,
 * the stop by the grace period plus a fixed reaping bound.
 */
public final class WorkerLauncher {
    /** How long to wait for processes after SIGKILL, and for their output to drain. */
    private static final Duration REAP = Duration.ofSeconds(5);

    /** Receives the workers' output lines and the launcher's own messages; called from several threads. */
    public interface LineSink {
        void workerLine(int rank, boolean stderr, String line);

        void launcherLine(String line);

        /**
         * Prints to this JVM's stdout and stderr, each worker line prefixed {@code [rank]: }. With
         * {@code plainRankZeroStdout}, rank 0's stdout is printed as is (for tools whose rank 0 prints the report).
         */
        static LineSink console(boolean plainRankZeroStdout) {
            return new LineSink() {
                @Override
                public void workerLine(int rank, boolean stderr, String line) {
                    PrintStream s = stderr ? System.err : System.out;
                    s.println(plainRankZeroStdout && rank == 0 && !stderr ? line : "[" + rank + "]: " + line);
                }

                @Override
                public void launcherLine(String line) { System.err.println("[mooncake4j]: " + line); }
            };
        }
    }

    /** Environment variable: {@code 1} in a restarted worker process, which must rejoin as an extension rank; {@code 0} otherwise. */
    public static final String EXTENSION_ENV = "MOONCAKE_EXTENSION";
    /** Environment variable: how many times this rank's process has been restarted (0 for the first one). */
    public static final String RESTART_COUNT_ENV = "MOONCAKE_RESTART_COUNT";

    /** Hears of worker processes as they start; called on the thread that runs {@link #run()}. */
    public interface Events {
        /**
         * A process for {@code rank} was started at {@code at} ({@code restartCount} 0 for the first
         * one, n for its n-th replacement). It must return quickly: the launcher waits for it.
         */
        void workerStarted(int rank, long pid, int restartCount, Instant at);

        /** Events nobody listens to. */
        Events NONE = (rank, pid, restartCount, at) -> { };
    }

    /** How the job ended: {@code exitCode} is the launcher's; {@code failedRank} is -1 when no single worker failed. */
    public record Outcome(int exitCode, int failedRank, String message) {
        public boolean succeeded() { return exitCode == 0; }
    }

    /** A process of a worker ended. */
    private record Exit(Worker worker, Process process) {}

    private final String mainClass;
    private final List<String> classPath;
    private final List<String> jvmOptions;
    private final List<String> args;
    private final int nprocPerNode;
    private final int nodeRank;
    private final int nnodes;
    private final Rendezvous rendezvous;
    private final Map<String, String> environment;
    private final Duration jobTimeout;
    private final Duration stopGrace;
    private final LineSink sink;
    private final Events events;
    private final int maxRestarts;
    /** Restarts made so far; written by the supervising thread under this launcher's lock. */
    private int restartsUsed;
    private final String javaCommand;
    private final List<Worker> workers = new ArrayList<>();
    private final BlockingQueue<Exit> exits = new LinkedBlockingQueue<>();
    private volatile boolean shuttingDown;

    private WorkerLauncher(Builder b) {
        this.mainClass = b.mainClass;
        this.classPath = List.copyOf(b.classPath);
        this.jvmOptions = List.copyOf(b.jvmOptions);
        this.args = List.copyOf(b.args);
        this.nprocPerNode = b.nprocPerNode;
        this.nodeRank = b.nodeRank;
        this.nnodes = b.nnodes;
        this.rendezvous = Objects.requireNonNull(b.rendezvous, "rendezvous");
        this.environment = Map.copyOf(b.environment);
        this.jobTimeout = b.jobTimeout;
        this.stopGrace = b.stopGrace;
        this.sink = b.sink;
        this.events = b.events;
        this.maxRestarts = b.maxRestarts;
        this.javaCommand = b.javaCommand;
        for (int i = 0; i < nprocPerNode; i++) workers.add(new Worker(nodeRank * nprocPerNode + i, i));
    }

    /** A launcher of {@code mainClass} with this JVM's binary and class path, one worker, on one node. */
    public static Builder builder(String mainClass) { return new Builder(mainClass); }

    /**
     * Runs {@code ranks} workers of {@code mainClass} on this host around a host-local rendezvous (an
     * embedded store, closed afterwards), with the rest of the launch set by {@code configure}.
     */
    public static Outcome runLocal(String mainClass, int ranks, java.util.function.Consumer<Builder> configure) {
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            Builder b = builder(mainClass).nprocPerNode(ranks).rendezvous(rdzv);
            configure.accept(b);
            return b.build().run();
        }
    }

    /** The java binary of this JVM, so workers run on the same JDK. */
    static String currentJava() {
        return ProcessHandle.current().info().command()
                .orElse(Path.of(System.getProperty("java.home"), "bin", "java").toString());
    }

    /** This JVM's class path, entry by entry. */
    static List<String> currentClassPath() {
        List<String> cp = new ArrayList<>();
        for (String e : System.getProperty("java.class.path", "").split(File.pathSeparator)) if (!e.isEmpty()) cp.add(e);
        return cp;
    }

    /** Settings of a launch; {@link #build()} checks them. Used on one thread. */
    public static final class Builder {
        private final String mainClass;
        private List<String> classPath = currentClassPath();
        private List<String> jvmOptions = List.of();
        private List<String> args = List.of();
        private int nprocPerNode = 1;
        private int nodeRank;
        private int nnodes = 1;
        private Rendezvous rendezvous;
        private Map<String, String> environment = Map.of();
        private Duration jobTimeout = Duration.ZERO;
        private Duration stopGrace = Duration.ofSeconds(5);
        private LineSink sink = LineSink.console(false);
        private Events events = Events.NONE;
        private int maxRestarts;
        private String javaCommand = currentJava();

        private Builder(String mainClass) { this.mainClass = Objects.requireNonNull(mainClass, "mainClass"); }

        public Builder classPath(List<String> entries) { this.classPath = entries; return this; }

        /** Options placed before {@code -cp}, e.g. {@code -Xmx4g}; {@code --enable-native-access=ALL-UNNAMED} is always there. */
        public Builder jvmOptions(List<String> options) { this.jvmOptions = options; return this; }

        public Builder args(List<String> a) { this.args = a; return this; }

        public Builder nprocPerNode(int n) { this.nprocPerNode = n; return this; }

        public Builder node(int rank, int count) {
            this.nodeRank = rank;
            this.nnodes = count;
            return this;
        }

        public Builder rendezvous(Rendezvous r) { this.rendezvous = r; return this; }

        /** Extra variables for every worker, set after the launcher's own. */
        public Builder environment(Map<String, String> env) { this.environment = env; return this; }

        /** Wall-clock limit of the whole job; zero means none. */
        public Builder jobTimeout(Duration d) { this.jobTimeout = d; return this; }

        /** Time between SIGTERM and SIGKILL when workers are stopped. */
        public Builder stopGrace(Duration d) { this.stopGrace = d; return this; }

        public Builder sink(LineSink s) { this.sink = s; return this; }

        /** Listener for worker process starts (first ones and restarts). */
        public Builder events(Events e) { this.events = Objects.requireNonNull(e, "events"); return this; }

        /**
         * How many times in all this launcher may restart one of its workers whose process died
         * (non-zero exit or a signal); the replacement gets {@code MOONCAKE_EXTENSION=1}. 0 (the
         * default): the first failure ends the job.
         */
        public Builder maxRestarts(int k) { this.maxRestarts = k; return this; }

        public WorkerLauncher build() {
            if (nprocPerNode < 1) throw new IllegalArgumentException("--nproc-per-node must be at least 1, got " + nprocPerNode);
            if (nnodes < 1) throw new IllegalArgumentException("--nnodes must be at least 1, got " + nnodes);
            if (nodeRank < 0 || nodeRank >= nnodes) {
                throw new IllegalArgumentException("--node-rank " + nodeRank + " is not a node of 0.." + (nnodes - 1) + " (--nnodes " + nnodes + ")");
            }
            if (jobTimeout.isNegative()) throw new IllegalArgumentException("the job time limit must not be negative, got " + jobTimeout);
            if (stopGrace.isNegative()) throw new IllegalArgumentException("the stop grace period must not be negative, got " + stopGrace);
            if (maxRestarts < 0) throw new IllegalArgumentException("--max-restarts must be 0 or more, got " + maxRestarts);
            return new WorkerLauncher(this);
        }
    }

    /** The world size: workers per node times nodes. */
    public int worldSize() { return nprocPerNode * nnodes; }

    /**
     * Starts every worker and waits until the job ends: all exited with 0 (exit code 0), one failed
     * with no restart left (its exit code; the others are stopped), or the time limit passed (124;
     * all are stopped). A worker that dies while restarts are left is restarted alone. Throws
     * {@link IllegalStateException} when a worker's first process cannot be started.
     */
    public Outcome run() {
        Thread hook = Thread.ofPlatform().name("mooncake4j-launcher-shutdown").unstarted(this::onShutdown);
        Runtime.getRuntime().addShutdownHook(hook);
        try {
            for (Worker w : workers) {
                w.start();
                events.workerStarted(w.rank, w.process.pid(), 0, Instant.now());
            }
            return supervise();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            stopAll();
            return new Outcome(130, -1, "interrupted while supervising the workers; stopped them");
        } finally {
            stopAll();
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shutdownInProgress) {
                // the hook is running or has run; it stops the workers itself
            }
        }
    }

    private Outcome supervise() throws InterruptedException {
        long deadline = jobTimeout.isZero() ? Long.MAX_VALUE : System.nanoTime() + jobTimeout.toNanos();
        int running = workers.size();
        while (running > 0) {
            Exit e = exits.poll(Math.min(deadline - System.nanoTime(), TimeUnit.SECONDS.toNanos(1)), TimeUnit.NANOSECONDS);
            if (shuttingDown) return new Outcome(130, -1, "the launcher is shutting down; stopped the workers");
            if (e == null) {
                if (System.nanoTime() - deadline >= 0) return timedOut();
                continue;
            }
            running--;
            int code = e.process().exitValue();
            if (code == 0) continue;
            if (restartsUsed >= maxRestarts) return failed(e.worker(), e.process(), code);
            Outcome notRestarted = restart(e.worker(), e.process(), code);
            if (notRestarted != null) return notRestarted;
            running++;
        }
        drainOutput(System.nanoTime() + REAP.toNanos());
        return new Outcome(0, -1, "all " + workers.size() + " workers exited with code 0");
    }

    /**
     * Starts a replacement process for {@code w}, an extension rank; null when it runs, otherwise how
     * the job ends (the launcher is shutting down, or the process could not be started).
     */
    private synchronized Outcome restart(Worker w, Process dead, int code) {
        if (shuttingDown) return new Outcome(130, -1, "the launcher is shutting down; stopped the workers");
        restartsUsed++;
        w.restarts++;
        sink.launcherLine("rank " + w.rank + " (local rank " + w.localRank + ", pid " + dead.pid() + ") exited with code " + code + signalName(code)
                + "; restarting it alone as an extension rank (" + EXTENSION_ENV + "=1, " + RESTART_COUNT_ENV + "=" + w.restarts + "), restart "
                + restartsUsed + " of " + maxRestarts + " on this node; the other workers keep running");
        try {
            w.start();
        } catch (IllegalStateException e) {
            String msg = "could not restart rank " + w.rank + ": " + e.getMessage();
            sink.launcherLine(msg + "; stopping the other workers");
            stopAll();
            return new Outcome(code, w.rank, msg);
        }
        sink.launcherLine("rank " + w.rank + " restarted as pid " + w.process.pid());
        events.workerStarted(w.rank, w.process.pid(), w.restarts, Instant.now());
        return null;
    }

    private Outcome failed(Worker w, Process p, int code) {
        String msg = "rank " + w.rank + " (local rank " + w.localRank + ", pid " + p.pid() + ") exited with code " + code + signalName(code)
                + (maxRestarts > 0 ? " and no restart is left (" + restartsUsed + " of --max-restarts " + maxRestarts + " used)" : "");
        int others = (int) workers.stream().filter(x -> x != w && x.isAlive()).count();
        sink.launcherLine(msg + (others > 0 ? "; stopping the other " + others + " worker" + (others == 1 ? "" : "s") : ""));
        stopAll();
        return new Outcome(code, w.rank, msg);
    }

    private Outcome timedOut() {
        List<Integer> alive = workers.stream().filter(Worker::isAlive).map(w -> w.rank).toList();
        String msg = "the job passed its time limit of " + jobTimeout.toSeconds() + " s with ranks " + alive
                + " still running; stopped them (raise the limit with --timeout-s)";
        sink.launcherLine(msg);
        stopAll();
        return new Outcome(124, -1, msg);
    }

    private static String signalName(int code) {
        if (code <= 128 || code > 128 + 64) return "";
        String name = switch (code - 128) {
            case 1 -> "SIGHUP";
            case 2 -> "SIGINT";
            case 6 -> "SIGABRT";
            case 9 -> "SIGKILL";
            case 11 -> "SIGSEGV";
            case 15 -> "SIGTERM";
            default -> "signal " + (code - 128);
        };
        return " (killed by " + name + ")";
    }

    private void onShutdown() {
        shuttingDown = true;
        if (workers.stream().anyMatch(Worker::isAlive)) sink.launcherLine("shutting down: stopping the workers");
        stopAll();
    }

    /** SIGTERM to every live worker (and its children), SIGKILL to those alive after the grace period, then drains their output. */
    private synchronized void stopAll() {
        List<ProcessHandle> live = new ArrayList<>();
        for (Worker w : workers) {
            Process p = w.process;
            if (p == null || !p.isAlive()) continue;
            p.descendants().forEach(live::add);
            live.add(p.toHandle());
        }
        for (ProcessHandle h : live) h.destroy();
        long graceEnd = System.nanoTime() + stopGrace.toNanos();
        awaitExit(live, graceEnd);
        boolean killed = false;
        for (ProcessHandle h : live) {
            if (h.isAlive()) {
                h.destroyForcibly();
                killed = true;
            }
        }
        long reapEnd = System.nanoTime() + REAP.toNanos();
        if (killed) awaitExit(live, reapEnd);
        for (ProcessHandle h : live) {
            if (h.isAlive()) sink.launcherLine("process " + h.pid() + " is still alive after SIGKILL; it may be stuck in the kernel (check with: ps -o stat= -p " + h.pid() + ")");
        }
        drainOutput(reapEnd);
    }

    /** Waits until every process is gone or {@code endNanos}; polls, because {@code onExit()} would need the common pool. */
    private static void awaitExit(List<ProcessHandle> handles, long endNanos) {
        for (ProcessHandle h : handles) {
            while (h.isAlive()) {
                if (System.nanoTime() - endNanos >= 0) return;
                try {
                    Thread.sleep(10);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
        }
    }

    private void drainOutput(long endNanos) {
        for (Worker w : workers) w.joinPumps(endNanos);
    }

    /**
     * The environment of {@code w}'s next process: the launcher's variables, the caller's extra ones,
     * then the restart variables, which nothing overrides (an inherited {@code MOONCAKE_EXTENSION=1}
     * must not turn a first process into an extension rank).
     */
    private Map<String, String> workerEnvironment(Worker w) {
        Map<String, String> env = new LinkedHashMap<>();
        env.put("RANK", Integer.toString(w.rank));
        env.put("LOCAL_RANK", Integer.toString(w.localRank));
        env.put("WORLD_SIZE", Integer.toString(worldSize()));
        env.put("LOCAL_WORLD_SIZE", Integer.toString(nprocPerNode));
        env.put("GROUP_RANK", Integer.toString(nodeRank));
        env.put("MASTER_ADDR", rendezvous.masterAddr());
        env.put("MASTER_PORT", Integer.toString(rendezvous.masterPort()));
        env.put("MOONCAKE_STORE", rendezvous.storeUri());
        env.put("MOONCAKE_STORE_HOSTED", "1");
        env.putAll(environment);
        env.put(EXTENSION_ENV, w.restarts > 0 ? "1" : "0");
        env.put(RESTART_COUNT_ENV, Integer.toString(w.restarts));
        return env;
    }

    private List<String> command() {
        List<String> cmd = new ArrayList<>();
        cmd.add(javaCommand);
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.addAll(jvmOptions);
        String level = environment.getOrDefault("MOONCAKE_LOG", System.getenv("MOONCAKE_LOG"));
        if (level != null && !level.isBlank()) cmd.add("-Dorg.slf4j.simpleLogger.log.org.mooncake4j=" + Main.logLevel(level));
        if (!classPath.isEmpty()) {
            cmd.add("-cp");
            cmd.add(String.join(File.pathSeparator, classPath));
        }
        cmd.add(mainClass);
        cmd.addAll(args);
        return cmd;
    }

    /** One rank on this node: its current process, how often it was restarted, and the threads copying its processes' output. */
    private final class Worker {
        final int rank;
        final int localRank;
        volatile Process process;
        /** Replacement processes started so far; written under the launcher's lock. */
        int restarts;
        private final List<Thread> pumps = new ArrayList<>();

        Worker(int rank, int localRank) {
            this.rank = rank;
            this.localRank = localRank;
        }

        boolean isAlive() {
            Process p = process;
            return p != null && p.isAlive();
        }

        /** Starts a process for this rank; its exit is reported on the launcher's queue. */
        void start() {
            List<String> cmd = command();
            ProcessBuilder pb = new ProcessBuilder(cmd);
            pb.environment().putAll(workerEnvironment(this));
            Process p;
            try {
                p = pb.start();
            } catch (IOException e) {
                throw new IllegalStateException("Could not start the worker for rank " + rank + " with " + cmd.getFirst() + ": " + e.getMessage()
                        + ". Check that the java binary exists and is executable.", e);
            }
            try {
                p.getOutputStream().close();
            } catch (IOException ignored) {
                // the worker reads no input; a pipe that is already gone needs no closing
            }
            synchronized (pumps) {
                pumps.add(pump(p.getInputStream(), false));
                pumps.add(pump(p.getErrorStream(), true));
            }
            process = p;
            // a thread of its own, not Process.onExit(): that completes on the common fork-join pool, which a
            // caller may be blocking (a launcher run from CompletableFuture.supplyAsync on two cores never heard of its exits)
            Thread.ofPlatform().daemon().name("mooncake4j-rank" + rank + "-exit").start(() -> {
                boolean waited = false;
                while (!waited) {
                    try {
                        p.waitFor(); // bounded: the launcher kills its processes before it returns
                        waited = true;
                    } catch (InterruptedException e) {
                        // nobody interrupts this launcher-owned thread; keep waiting for the exit to report
                    }
                }
                exits.add(new Exit(this, p));
            });
        }

        private Thread pump(InputStream in, boolean stderr) {
            return Thread.ofPlatform().daemon().name("mooncake4j-rank" + rank + (stderr ? "-stderr" : "-stdout")).start(() -> {
                try (BufferedReader r = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
                    for (String line; (line = r.readLine()) != null; ) sink.workerLine(rank, stderr, line);
                } catch (IOException ignored) {
                    // the process is gone and its pipe closed; the lines read so far were delivered
                }
            });
        }

        void joinPumps(long endNanos) {
            List<Thread> ts;
            synchronized (pumps) { ts = new ArrayList<>(pumps); }
            for (Thread t : ts) {
                long left = endNanos - System.nanoTime();
                try {
                    if (left > 0) t.join(Duration.ofNanos(left));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return;
                }
            }
        }
    }
}
