package org.mooncake4j.pg.chaos;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/**
 * One chaos trial: a store in this JVM, N worker JVMs running {@link ChaosWorker}, one fault injected
 * into one of them after it has printed K iterations, and every check on what each rank printed.
 *
 * <p>Checks (each failure is one line, prefixed with its category for the summary):
 * <ul>
 * <li>every survivor prints DONE and exits 0 within the bound, without ERROR lines, with one OP line
 *     per iteration, all {@code ok=true};</li>
 * <li>for every iteration the survivors print the same epoch, mask and collective, and the same
 *     digest where the result is the same on every rank (all but reduce_scatter and all_to_all);</li>
 * <li>the victim's own OP lines are correct and agree with the survivors', and it never completes an
 *     iteration past the one in which the survivors dropped it (no split brain);</li>
 * <li>after the fault the victim's bit is 0 and no other rank was dropped; some survivor reports
 *     the victim in {@code dropped};</li>
 * <li>a stopped or cut-off victim, once resumed, prints FENCED with the epoch it was removed in and
 *     the way back ({@code joinGroup}), and exits normally;</li>
 * <li>from the fault to each survivor's next completed operation, and to its first one completed
 *     without the victim: at most the group timeout plus a slack ({@link #OP_SLACK_MS}); the latter is
 *     the latency the summary reports;</li>
 * <li>afterwards no worker process is left, no /dev/shm/mooncake4j-* file of a worker remains, and
 *     this JVM's platform threads are back to the count before the trial (within 2).</li>
 * </ul>
 *
 * <p>Driven by the calling test thread; not thread-safe.
 */
final class ChaosTrial {
    enum Fault { KILL9, STOP_PAST_TIMEOUT_THEN_CONT, NETCUT }

    /** Beyond the group timeout, what one operation (up to ~4 MB, verified on the worker) may take on a loaded 2-core machine. */
    static final long OP_SLACK_MS = Long.getLong("chaos.opSlackMs", 3000);
    private static final long STARTUP_MS = 90_000;
    /** Iterations after the one the fault follows: enough for the survivors to go on for a while over the new mask. */
    static final int POST_FAULT_ITERATIONS = 12;
    private static final Path SHM = Path.of("/dev/shm");
    /** JDK-internal pools whose idle threads linger by design; not the library's or the harness's threads. */
    private static final List<String> JDK_POOLS = List.of("process reaper", "ForkJoinPool", "InnocuousThread", "Common-Cleaner", "Attach Listener");

    /**
     * Everything a trial does, derived from {@code seed} (see {@link #of}).
     *
     * @param faultAfter   the fault comes once the victim has printed this many OP lines
     * @param iterations   iterations every worker runs
     * @param pauseMicros  pause after each iteration, plus {@code rank * skewMicros} (see {@link ChaosWorker})
     * @param faultDelayMs extra delay after seeing the victim's line, so the fault lands at varied points of an operation
     * @param resumeDelayMs how long a stopped/cut victim stays so after the survivors dropped it
     */
    record Spec(long seed, int world, String transport, Fault fault, int victim, int faultAfter, long iterations, long timeoutMs,
                long pauseMicros, long skewMicros, long faultDelayMs, long resumeDelayMs, ChaosStep.Profile profile, long dataSeed) {

        /** A random trial: world 3-4, group timeout 1-2 s, fault after 1-20 iterations, a third with skewed ranks; NETCUT trials use tcp. */
        static Spec of(long seed, boolean netcut) {
            SplittableRandom r = new SplittableRandom(seed);
            int world = 3 + r.nextInt(2);
            String transport = netcut || r.nextBoolean() ? "tcp" : "shm";
            Fault fault = netcut ? Fault.NETCUT : r.nextBoolean() ? Fault.KILL9 : Fault.STOP_PAST_TIMEOUT_THEN_CONT;
            int victim = r.nextInt(world);
            int k = 1 + r.nextInt(20);
            long timeout = 1000 + 250L * r.nextInt(5);
            long skew = r.nextInt(3) == 0 ? r.nextInt(10_000) : 0;
            return new Spec(seed, world, transport, fault, victim, k, k + POST_FAULT_ITERATIONS, timeout, 1000 + r.nextInt(3000), skew,
                    r.nextInt(12), r.nextInt(300), ChaosStep.Profile.MIXED, r.nextLong());
        }

        String describe() {
            return "trial seed=" + seed + " world=" + world + " transport=" + transport + " fault=" + fault + " victim=" + victim
                    + " after=" + faultAfter + " iterations=" + iterations + " timeout_ms=" + timeoutMs + " pause_us=" + pauseMicros + " skew_us=" + skewMicros
                    + " fault_delay_ms=" + faultDelayMs + " resume_delay_ms=" + resumeDelayMs + " profile=" + profile + " data_seed=" + dataSeed;
        }
    }

    /**
     * What a trial found. {@code latencyNanos}: from the fault until every survivor had completed an
     * operation without the victim (-1 when unknown); {@code perRankLatencyNanos} by survivor.
     */
    record Outcome(Spec spec, List<String> violations, long latencyNanos, Map<Integer, Long> perRankLatencyNanos, Path log) {
        boolean passed() { return violations.isEmpty(); }

        Set<String> categories() {
            return violations.stream().map(v -> v.substring(0, v.indexOf(':'))).collect(Collectors.toCollection(TreeSet::new));
        }

        String report() {
            return spec.describe() + "\n  " + String.join("\n  ", violations) + (log == null ? "" : "\n  worker logs: " + log.toAbsolutePath());
        }
    }

    private final Spec spec;
    private final NetworkCut cut;
    private final Path logDir;
    private final List<String> violations = new ArrayList<>();
    private final List<String> notes = new ArrayList<>();
    private long faultNanos = -1;
    private long startNanos;

    private ChaosTrial(Spec spec, NetworkCut cut, Path logDir) {
        this.spec = spec;
        this.cut = cut;
        this.logDir = logDir;
    }

    /**
     * Runs {@code spec}; {@code cut} is needed for NETCUT only. Worker logs go to {@code logDir} when the
     * trial fails (or always with -Dchaos.keepLogs=true).
     */
    static Outcome run(Spec spec, NetworkCut cut, Path logDir) throws Exception {
        return new ChaosTrial(spec, cut, logDir).run();
    }

    private Outcome run() throws Exception {
        Set<String> shmBefore = shmFiles();
        Set<Thread> threadsBefore = platformThreads();
        startNanos = System.nanoTime();
        boolean netcut = spec.fault() == Fault.NETCUT;
        String bindIp = netcut ? cut.survivorIp() : "127.0.0.1";
        List<WorkerLog> logs = new ArrayList<>();
        Map<Integer, Optional<Integer>> exits = new HashMap<>();
        List<Long> pids;
        WorkerProcesses procs = new WorkerProcesses();
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start(bindIp, 0)) {
            try {
                for (int r = 0; r < spec.world(); r++) {
                    Map<String, String> env = new HashMap<>();
                    env.put("MOONCAKE_STORE", store.uri());
                    env.put("MOONCAKE_STORE_HOSTED", "1");
                    env.put("MOONCAKE_TIMEOUT_MS", Long.toString(spec.timeoutMs()));
                    env.put("MOONCAKE_TRANSPORT", spec.transport());
                    env.put("MOONCAKE_HOST_IP", netcut && r == spec.victim() ? cut.victimIp() : bindIp);
                    List<String> prefix = netcut && r == spec.victim() ? cut.victimPrefix() : List.of();
                    procs.start(ChaosWorker.class, r, spec.world(), env, prefix, Long.toString(spec.dataSeed()), Long.toString(spec.iterations()),
                            Long.toString(spec.pauseMicros()), Long.toString(spec.skewMicros()), spec.profile().name());
                }
                if (netcut) cut.attachVictim(procs.pid(spec.victim()));
                drive(procs);
                long deadline = System.nanoTime() + ((spec.iterations() + 2) * OP_SLACK_MS + 3 * spec.timeoutMs() + 20_000) * 1_000_000L;
                for (int r = 0; r < spec.world(); r++) exits.put(r, procs.awaitExit(r, deadline));
            } finally {
                if (netcut) cut.heal();
                pids = procs.pids();
                procs.close();
                for (int r = 0; r < procs.size(); r++) logs.add(new WorkerLog(r, procs.output(r)));
            }
        }
        Map<Integer, Long> perRank = new HashMap<>();
        long latency = evaluate(logs, exits, perRank);
        checkLeaks(pids, shmBefore, threadsBefore);
        Path log = violations.isEmpty() && !Boolean.getBoolean("chaos.keepLogs") ? null : writeLog(logs);
        return new Outcome(spec, List.copyOf(violations), latency, perRank, log);
    }

    /** Waits for the victim's K-th line, injects the fault, and for STOP/NETCUT resumes the victim once the survivors dropped it. */
    private void drive(WorkerProcesses procs) throws Exception {
        int v = spec.victim();
        String mark = "OP " + (spec.faultAfter() - 1) + " ";
        long bound = STARTUP_MS + spec.faultAfter() * (spec.timeoutMs() + OP_SLACK_MS);
        if (procs.awaitLine(v, l -> l.startsWith(mark), Duration.ofMillis(bound)).isEmpty()) {
            violations.add("startup: the victim (rank " + v + ") did not print iteration " + (spec.faultAfter() - 1) + " within " + bound + " ms");
            return;
        }
        Thread.sleep(spec.faultDelayMs());
        if (procs.output(v).stream().anyMatch(l -> l.text().startsWith("DONE "))) {
            violations.add("harness: the victim finished all iterations before the fault; lower the pace or raise the iterations");
            return;
        }
        switch (spec.fault()) {
            case KILL9 -> {
                faultNanos = System.nanoTime();
                procs.signal(v, WorkerProcesses.SIGKILL);
            }
            case STOP_PAST_TIMEOUT_THEN_CONT -> {
                faultNanos = System.nanoTime();
                procs.signal(v, WorkerProcesses.SIGSTOP);
            }
            case NETCUT -> {
                cut.cut();
                faultNanos = System.nanoTime(); // when the victim's link is certainly down
            }
        }
        notes.add("fault at +" + (faultNanos - startNanos) / 1_000_000 + " ms; the victim had printed "
                + procs.output(v).stream().filter(l -> l.text().startsWith("OP ")).count() + " OP lines");
        if (spec.fault() == Fault.KILL9) return;
        long dropBound = 3 * spec.timeoutMs() + 10_000;
        for (int r = 0; r < spec.world(); r++) {
            if (r == v) continue;
            if (procs.awaitLine(r, l -> droppedIn(l, v), Duration.ofMillis(dropBound)).isEmpty()) {
                violations.add("hang: rank " + r + " did not complete an operation without the " + (spec.fault() == Fault.NETCUT ? "cut-off" : "stopped")
                        + " victim within " + dropBound + " ms of the fault");
            }
        }
        Thread.sleep(spec.resumeDelayMs());
        notes.add("victim resumed at +" + (System.nanoTime() - startNanos) / 1_000_000 + " ms");
        if (spec.fault() == Fault.NETCUT) cut.heal();
        else if (procs.alive(v)) procs.signal(v, WorkerProcesses.SIGCONT);
        else violations.add("exit: the stopped victim (rank " + v + ") was gone before SIGCONT");
    }

    /** Whether {@code line} is a complete OP line whose mask no longer has rank {@code v}. */
    private static boolean droppedIn(String line, int v) {
        if (!line.startsWith("OP ")) return false;
        WorkerLog.Op op = WorkerLog.parseOp(line);
        return op != null && !op.active(v);
    }

    /** Checks what every rank printed; returns the fault-to-completion latency (or -1). */
    private long evaluate(List<WorkerLog> logs, Map<Integer, Optional<Integer>> exits, Map<Integer, Long> perRank) {
        int v = spec.victim();
        List<WorkerLog> survivors = logs.stream().filter(l -> l.rank != v).toList();
        WorkerLog victim = logs.get(v);
        for (WorkerLog s : survivors) checkSurvivor(s, exits.get(s.rank));
        if (faultNanos < 0) return -1;

        // the survivors agree on every iteration
        for (long i = 0; i < spec.iterations(); i++) {
            Map<String, List<Integer>> seen = new HashMap<>();
            for (WorkerLog s : survivors) {
                WorkerLog.Op op = s.ops.get(i);
                if (op != null) seen.computeIfAbsent(op.agreed(), k -> new ArrayList<>()).add(s.rank);
            }
            if (seen.size() > 1) {
                final long idx = i;
                violations.add("disagree: survivors differ at iteration " + i + ": " + survivors.stream().filter(s -> s.ops.containsKey(idx))
                        .map(s -> "rank " + s.rank + ": " + s.ops.get(idx).line()).collect(Collectors.joining(" | ")));
            }
        }

        // where the survivors dropped the victim
        long dropIndex = Long.MAX_VALUE, dropEpoch = -1;
        for (WorkerLog s : survivors) {
            for (WorkerLog.Op op : s.ops.values()) {
                if (!op.active(v)) {
                    if (op.index() < dropIndex) {
                        dropIndex = op.index();
                        dropEpoch = op.epoch();
                    }
                    break;
                }
            }
            WorkerLog.Op last = s.ops.isEmpty() ? null : s.ops.lastEntry().getValue();
            if (last != null && last.active(v)) {
                violations.add("mask: rank " + s.rank + " still counts the victim " + v + " active at its last line: " + last.line());
            }
            for (WorkerLog.Op op : s.ops.values()) {
                int healthy = IntStream.range(0, spec.world()).filter(r -> r != v && !op.active(r)).findFirst().orElse(-1);
                if (healthy >= 0) {
                    violations.add("false-suspicion: rank " + s.rank + " dropped healthy rank " + healthy + " (first seen here): " + op.line());
                    break;
                }
            }
        }
        boolean reported = survivors.stream().flatMap(s -> s.ops.values().stream())
                .anyMatch(op -> op.dropped().matches("\\[(.*,)?" + v + "(,.*)?]"));
        if (dropIndex != Long.MAX_VALUE && !reported) violations.add("report: no survivor listed the victim " + v + " in dropped= of any operation");

        // the victim's own lines
        for (WorkerLog.Op op : victim.ops.values()) {
            if (!op.ok()) violations.add(category(victim, op.index()) + ": victim rank " + v + ": " + op.line() + mismatchOf(victim, op.index()));
            if (op.index() > dropIndex) {
                violations.add("split-brain: victim rank " + v + " completed iteration " + op.index() + " after the survivors dropped it at iteration "
                        + dropIndex + ": " + op.line());
            }
            for (WorkerLog s : survivors) {
                WorkerLog.Op so = s.ops.get(op.index());
                if (so != null && op.kind().sameResultOnEveryRank() && so.op().equals(op.op()) && !so.crc().equals(op.crc())) {
                    violations.add("disagree: victim rank " + v + " and rank " + s.rank + " hold different results for iteration " + op.index()
                            + ": " + op.line() + " | " + so.line());
                    break;
                }
            }
        }
        if (spec.fault() != Fault.KILL9) checkFenced(victim, exits.get(v), dropEpoch);

        // latency: from the fault to each survivor's next completed operation, and to its first one without the victim
        long worst = -1;
        for (WorkerLog s : survivors) {
            WorkerLog.Op next = s.firstAfter(faultNanos);
            WorkerLog.Op without = s.ops.values().stream().filter(o -> o.t() - faultNanos > 0 && !o.active(v)).findFirst().orElse(null);
            long bound = (spec.timeoutMs() + OP_SLACK_MS) * 1_000_000L;
            if (next != null && next.t() - faultNanos > bound) {
                violations.add("slow: rank " + s.rank + " completed its next operation " + (next.t() - faultNanos) / 1_000_000 + " ms after the fault"
                        + " (bound: timeout " + spec.timeoutMs() + " + " + OP_SLACK_MS + " ms): " + next.line());
            }
            if (without != null) {
                long lat = without.t() - faultNanos;
                perRank.put(s.rank, lat);
                worst = Math.max(worst, lat);
                if (lat > bound && (next == null || next != without)) {
                    violations.add("slow: rank " + s.rank + " completed its first operation without the victim " + lat / 1_000_000
                            + " ms after the fault (bound: timeout " + spec.timeoutMs() + " + " + OP_SLACK_MS + " ms): " + without.line());
                }
            }
            if (s.doneNanos > 0) {
                long finish = (spec.iterations() - spec.faultAfter() + 1) * OP_SLACK_MS + spec.timeoutMs();
                if (s.doneNanos - faultNanos > finish * 1_000_000L) {
                    violations.add("slow: rank " + s.rank + " printed DONE " + (s.doneNanos - faultNanos) / 1_000_000 + " ms after the fault (bound "
                            + finish + " ms)");
                }
            }
        }
        return worst;
    }

    private void checkSurvivor(WorkerLog s, Optional<Integer> exit) {
        String who = "rank " + s.rank;
        if (exit.isEmpty()) violations.add("hang: " + who + " was still running at the deadline and was killed; last lines:\n" + s.tail(15));
        else if (exit.get() != 0) violations.add("exit: " + who + " exited with " + exit.get() + "; last lines:\n" + s.tail(15));
        if (s.doneNanos < 0 && exit.isPresent()) violations.add("exit: " + who + " did not print DONE");
        for (String e : s.errors) violations.add((e.startsWith("INITFAIL") ? "init: " : "error: ") + who + ": " + e);
        if (s.fenced != null) violations.add("fencing: survivor " + who + " was fenced: " + s.fenced);
        for (String d : s.duplicates) violations.add("duplicate: " + who + " printed an iteration twice: " + d);
        for (String m : s.malformed) violations.add("garbled: " + who + " printed an incomplete OP line: " + m);
        for (long i = 0; i < spec.iterations(); i++) {
            WorkerLog.Op op = s.ops.get(i);
            if (op == null) {
                if (exit.isPresent() && exit.get() == 0) violations.add("missing: " + who + " printed no OP line for iteration " + i);
            } else if (!op.ok()) {
                violations.add(category(s, i) + ": " + who + ": " + op.line() + mismatchOf(s, i));
            }
        }
    }

    /**
     * "misreport" when the result is right for the other mask (the library computed over one mask and
     * reported the other through lastLocalSuccess/localSuccess or the mask), "wrong-result" otherwise.
     */
    private static String category(WorkerLog l, long index) {
        String m = mismatchOf(l, index);
        return m.contains("it equals the reference over mask") && !m.contains("Work reports") && !m.contains("mask went from") ? "misreport" : "wrong-result";
    }

    private static String mismatchOf(WorkerLog l, long index) {
        return l.mismatches.stream().filter(m -> m.startsWith("MISMATCH " + index + " ")).map(m -> " => " + m).collect(Collectors.joining());
    }

    private void checkFenced(WorkerLog victim, Optional<Integer> exit, long dropEpoch) {
        String who = "victim rank " + victim.rank;
        if (victim.fenced == null) {
            violations.add("fencing: " + who + " printed no FENCED line after it was resumed; last lines:\n" + victim.tail(15));
        } else {
            String want = "was removed from process group 'world' in epoch " + dropEpoch;
            if (dropEpoch >= 0 && !victim.fenced.contains(want)) violations.add("fencing: " + who + "'s message lacks '" + want + "': " + victim.fenced);
            if (!victim.fenced.contains("joinGroup")) violations.add("fencing: " + who + "'s message does not say how to rejoin (joinGroup): " + victim.fenced);
        }
        for (String e : victim.errors) notes.add("victim error line: " + e);
        if (exit.isEmpty()) violations.add("hang: " + who + " did not exit after it was resumed; last lines:\n" + victim.tail(15));
        else if (exit.get() != 0) violations.add("exit: " + who + " exited with " + exit.get() + " after it was resumed; last lines:\n" + victim.tail(15));
    }

    private void checkLeaks(List<Long> pids, Set<String> shmBefore, Set<Thread> threadsBefore) throws Exception {
        for (long pid : pids) {
            if (ProcessHandle.of(pid).map(ProcessHandle::isAlive).orElse(false)) violations.add("leak-process: worker pid " + pid + " is still running");
        }
        List<String> leaked = new ArrayList<>();
        for (String f : shmFiles()) {
            if (shmBefore.contains(f)) continue;
            if (pids.stream().noneMatch(pid -> f.contains("-" + pid + "-"))) continue; // another test's file
            leaked.add(f + " (" + Files.size(SHM.resolve(f)) + " bytes)");
            Files.deleteIfExists(SHM.resolve(f)); // so later trials start clean
        }
        if (!leaked.isEmpty()) violations.add("leak-shm: " + leaked.size() + " segment file(s) of workers remain in /dev/shm: " + leaked);
        long end = System.nanoTime() + 5_000_000_000L;
        List<Thread> extra;
        do {
            extra = platformThreads().stream().filter(t -> !threadsBefore.contains(t)).toList();
            if (extra.size() <= 2) return;
            Thread.sleep(50);
        } while (System.nanoTime() < end);
        violations.add("leak-threads: " + extra.size() + " more platform threads than before the trial: "
                + extra.stream().map(Thread::getName).sorted().collect(Collectors.joining(", ")));
    }

    private static Set<String> shmFiles() throws IOException {
        if (!Files.isDirectory(SHM)) return Set.of();
        try (Stream<Path> s = Files.list(SHM)) {
            return s.map(p -> p.getFileName().toString()).filter(n -> n.startsWith("mooncake4j-")).collect(Collectors.toCollection(HashSet::new));
        }
    }

    private static Set<Thread> platformThreads() {
        Set<Thread> s = new HashSet<>();
        for (Thread t : Thread.getAllStackTraces().keySet()) {
            if (t.isAlive() && JDK_POOLS.stream().noneMatch(p -> t.getName().startsWith(p))) s.add(t);
        }
        return s;
    }

    private Path writeLog(List<WorkerLog> logs) throws IOException {
        Files.createDirectories(logDir);
        Path p = logDir.resolve("trial-" + spec.seed() + ".log");
        StringBuilder sb = new StringBuilder(spec.describe()).append('\n');
        for (String n : notes) sb.append("note: ").append(n).append('\n');
        for (String v : violations) sb.append("violation: ").append(v).append('\n');
        for (WorkerLog l : logs) {
            sb.append("==== rank ").append(l.rank).append(l.rank == spec.victim() ? " (victim)" : "").append(" ====\n");
            for (WorkerProcesses.Line line : l.lines) {
                sb.append(String.format("%+9.3f ", (line.nanos() - (faultNanos > 0 ? faultNanos : startNanos)) / 1e6)).append(line.text()).append('\n');
            }
        }
        Files.writeString(p, sb);
        return p;
    }
}
