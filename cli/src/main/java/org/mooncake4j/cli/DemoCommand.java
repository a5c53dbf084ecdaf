package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import org.mooncake4j.ep.examples.MoeExample;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code mooncake4j demo}, in three phases, each with its own embedded store and {@link WorkerLauncher}:
 * first {@link DemoWorker} on N ranks (backend mooncake-cpu), whose rank 0 prints one checked, timed
 * row per collective; then the fault-tolerance phase: {@link FaultDemoWorker} on N ranks with one
 * restart allowed, a short group timeout, and this process killing one rank with SIGKILL when rank 0
 * says the loop is steady. The launcher restarts that rank alone as an extension rank, the survivors
 * admit it, and rank 0 prints the timeline. Last the MoE phase: {@link MoeExample} on N ranks, a small
 * MoE layer expert-parallel over EpBuffer checked against its single-process reference, whose last
 * rank ends its process between dispatch and combine (exit code 0, so the launcher lets the others
 * go on); rank 0 prints the checks of each step. Exits non-zero when a check fails, a rank dies for
 * good, the rejoin does not happen in time, or the time limit (all phases together) passes.
 *
 * <p>One run per instance, on the picocli thread; the fault phase's kill runs on the thread that
 * copies rank 0's output (see {@link FaultDriver}).
 */
@Command(name = "demo", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"Run every collective on 4 local ranks with known inputs, check each result, and print a table.",
                "Then show fault tolerance: 4 ranks loop checked all-reduces, the demo kills rank 2 with SIGKILL, the survivors go on "
                        + "with the smaller sum, the launcher restarts rank 2 alone as an extension rank (as run --max-restarts 1 does), "
                        + "the survivors admit it and the sums return to the full one; rank 0 prints the timeline.",
                "Last, a small MoE layer runs expert-parallel over EpBuffer on the ranks, checked against a single-process reference; "
                        + "the last rank exits between dispatch and combine, and the survivors' outputs must equal the reference without its experts."})
final class DemoCommand implements Callable<Integer> {
    /** Small, short-lived JVMs: C1 and the serial collector start fastest when several share two cores. */
    private static final List<String> DEMO_JVM_OPTIONS = List.of("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1");
    /** The fault phase's group timeout: short, so that nothing in the demo waits long. */
    static final Duration FAULT_GROUP_TIMEOUT = Duration.ofSeconds(2);
    /** How long the restarted rank may wait to be admitted. */
    static final Duration FAULT_JOIN_WAIT = Duration.ofSeconds(60);

    @Option(names = {"-g", "--ranks"}, defaultValue = "4", description = "Number of ranks (default: ${DEFAULT-VALUE})")
    int ranks;

    @Option(names = "--timeout-s", defaultValue = "120", paramLabel = "T", description = "Stop the demo after T seconds, both phases together (default: ${DEFAULT-VALUE})")
    long timeoutS;

    @Override
    public Integer call() throws IOException {
        if (ranks < 2) throw new IllegalArgumentException("-g/--ranks must be at least 2 (the demo sends around a ring of ranks), got " + ranks);
        long end = System.nanoTime() + Duration.ofSeconds(timeoutS).toNanos();
        List<String> jvm = new ArrayList<>(PgBenchCommand.WORKER_JVM_OPTIONS);
        jvm.addAll(DEMO_JVM_OPTIONS);
        WorkerLauncher.Outcome outcome = WorkerLauncher.runLocal(DemoWorker.class.getName(), ranks, b -> b.jvmOptions(jvm)
                .jobTimeout(Duration.ofSeconds(timeoutS)).sink(WorkerLauncher.LineSink.console(true)));
        if (!outcome.succeeded()) return outcome.exitCode();
        long left = end - System.nanoTime();
        if (left < Duration.ofSeconds(1).toNanos()) {
            System.err.println("[mooncake4j]: the demo's time limit of " + timeoutS + " s passed before the fault-tolerance phase could start");
            return 124;
        }
        int fault = faultPhase(jvm, Duration.ofNanos(left));
        if (fault != 0) return fault;
        left = end - System.nanoTime();
        if (left < Duration.ofSeconds(1).toNanos()) {
            System.err.println("[mooncake4j]: the demo's time limit of " + timeoutS + " s passed before the MoE phase could start");
            return 124;
        }
        return moePhase(jvm, Duration.ofNanos(left));
    }

    /**
     * The MoE phase: {@link MoeExample} with its defaults (4 experts per rank, top-4, hidden 256, 32
     * tokens per rank, 4 steps, EP timeout 1 s), the last rank leaving in step 2. 0 when rank 0 printed
     * {@link MoeExample#PASSED} and every process ended with 0.
     */
    private int moePhase(List<String> jvm, Duration limit) {
        AtomicBoolean passed = new AtomicBoolean();
        WorkerLauncher.LineSink console = WorkerLauncher.LineSink.console(true);
        System.out.println();
        WorkerLauncher.Outcome outcome = WorkerLauncher.runLocal(MoeExample.class.getName(), ranks, b -> b
                .jvmOptions(jvm)
                .environment(Map.of("MOONCAKE_TIMEOUT_MS", Long.toString(FAULT_GROUP_TIMEOUT.toMillis())))
                .jobTimeout(limit)
                .sink(new WorkerLauncher.LineSink() {
                    @Override
                    public void workerLine(int rank, boolean stderr, String line) {
                        if (line.startsWith("RESULT ")) return;
                        console.workerLine(rank, stderr, line);
                        if (rank == 0 && !stderr && line.startsWith(MoeExample.PASSED)) passed.set(true);
                    }

                    @Override
                    public void launcherLine(String line) { console.launcherLine(line); }
                }));
        if (!outcome.succeeded()) return outcome.exitCode();
        if (!passed.get()) {
            System.err.println("[mooncake4j]: the MoE phase did not pass (rank 0's checks above)");
            return 1;
        }
        return 0;
    }

    /** The fault-tolerance phase: 0 when rank 0 printed its verdict as passed and every process ended well. */
    private int faultPhase(List<String> jvm, Duration limit) throws IOException {
        int victim = Math.min(2, ranks - 1);
        Path events = Files.createTempFile("mooncake4j-demo-", ".events");
        try {
            System.out.println();
            FaultDriver driver = new FaultDriver(victim, events, WorkerLauncher.LineSink.console(true));
            WorkerLauncher.Outcome outcome = WorkerLauncher.runLocal(FaultDemoWorker.class.getName(), ranks, b -> b
                    .jvmOptions(jvm)
                    .environment(Map.of("MOONCAKE_TIMEOUT_MS", Long.toString(FAULT_GROUP_TIMEOUT.toMillis()),
                            Elastic.JOIN_TIMEOUT_ENV, Long.toString(FAULT_JOIN_WAIT.toMillis()),
                            FaultDemoWorker.EVENTS_ENV, events.toString(),
                            FaultDemoWorker.VICTIM_ENV, Integer.toString(victim)))
                    .maxRestarts(1)
                    .jobTimeout(limit)
                    .stopGrace(Duration.ofSeconds(2))
                    .sink(driver)
                    .events(driver));
            if (!outcome.succeeded()) return outcome.exitCode();
            if (!driver.passed()) {
                System.err.println("[mooncake4j]: the fault-tolerance phase did not pass (rank 0's verdict above)");
                return 1;
            }
            return 0;
        } finally {
            Files.deleteIfExists(events);
        }
    }

    /**
     * Prints the fault phase's output, kills the victim when rank 0 prints the steady line, and
     * records the kill and the replacement's start for rank 0's timeline (one line each, appended to
     * the events file as {@code kill <epoch us> <rank> <pid>} and
     * {@code start <epoch us> <rank> <pid> <restart count>}).
     *
     * <p>Threading: lines arrive on the launcher's output threads, starts on its supervising
     * thread; the pid map is concurrent, the file appends are synchronized, the kill happens once.
     */
    static final class FaultDriver implements WorkerLauncher.LineSink, WorkerLauncher.Events {
        private final int victim;
        private final Path events;
        private final WorkerLauncher.LineSink out;
        private final Map<Integer, Long> pids = new ConcurrentHashMap<>();
        private final AtomicBoolean killed = new AtomicBoolean();
        private volatile boolean passed;

        FaultDriver(int victim, Path events, WorkerLauncher.LineSink out) {
            this.victim = victim;
            this.events = events;
            this.out = out;
        }

        boolean passed() { return passed; }

        @Override
        public void workerLine(int rank, boolean stderr, String line) {
            out.workerLine(rank, stderr, line);
            if (rank != 0 || stderr) return;
            if (line.startsWith(FaultDemoWorker.STEADY_PREFIX) && killed.compareAndSet(false, true)) kill();
            if (line.startsWith(FaultDemoWorker.PASSED_PREFIX)) passed = true;
        }

        @Override
        public void launcherLine(String line) { out.launcherLine(line); }

        @Override
        public void workerStarted(int rank, long pid, int restartCount, Instant at) {
            pids.put(rank, pid);
            if (restartCount > 0) append("start " + FaultDemoWorker.micros(at) + " " + rank + " " + pid + " " + restartCount);
        }

        private void kill() {
            Long pid = pids.get(victim);
            ProcessHandle h = pid == null ? null : ProcessHandle.of(pid).orElse(null);
            if (h == null) {
                out.launcherLine("demo: rank " + victim + " has no live process to kill");
                return;
            }
            Instant at = Instant.now();
            if (!h.destroyForcibly()) {
                out.launcherLine("demo: could not send SIGKILL to rank " + victim + " (pid " + pid + ")");
                return;
            }
            append("kill " + FaultDemoWorker.micros(at) + " " + victim + " " + pid);
            out.launcherLine("demo: sent SIGKILL to rank " + victim + " (pid " + pid + ")");
        }

        private synchronized void append(String line) {
            try {
                Files.writeString(events, line + "\n", StandardOpenOption.CREATE, StandardOpenOption.APPEND);
            } catch (IOException e) {
                out.launcherLine("demo: could not record '" + line + "' in " + events + ": " + e.getMessage());
            }
        }
    }
}
