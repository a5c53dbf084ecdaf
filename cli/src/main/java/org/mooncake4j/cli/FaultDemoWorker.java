package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;

/**
 * One rank of the fault-tolerance phase of {@code mooncake4j demo}, started by the launcher with
 * restarts enabled. Every rank loops all-reduces of {@code rank + 1} and checks each sum against the
 * mask the operation covered (the mask before it when {@code lastLocalSuccess()}, else the mask after
 * it), then calls {@link Elastic#recoverReady} and pauses. After {@value #STEADY_ITERS} iterations rank 0 prints
 * the {@value #STEADY_PREFIX} line, on which the demo kills the victim rank with SIGKILL; the
 * survivors go on with the smaller sum, the launcher restarts the victim as an extension rank
 * ({@link Elastic#initFromEnv}), the survivors' {@code recoverReady} admits it, {@link Elastic#syncState}
 * gives it the iteration number, and the sums return to the full one. Rank 0 decides when to stop
 * (the decision travels in the all-reduce, so every rank stops after the same iteration), adds up
 * every rank's wrong sums, and prints a timeline of the events, times relative to the kill, with the
 * kill and replacement-start times read from the file the demo writes ({@value #EVENTS_ENV}), then a
 * {@value #PASSED_PREFIX} or {@value #FAILED_PREFIX} line (the demo's verdict). It exits with 0
 * whenever the loop ran to its agreed end, so that a failed check is not mistaken by the launcher for
 * a dead rank to restart; an exception ends the rank with a stack trace and a non-zero code.
 *
 * <p>Single-threaded: the main thread runs the loop and every collective. It owns its group and
 * tensors and releases them before exiting.
 */
public final class FaultDemoWorker {
    /** Environment: the file where the demo appends {@code kill} and {@code start} events. */
    static final String EVENTS_ENV = "MOONCAKE_DEMO_EVENTS";
    /** Environment: the rank the demo kills. */
    static final String VICTIM_ENV = "MOONCAKE_DEMO_VICTIM";
    /** Rank 0's line that tells the demo to kill the victim. */
    static final String STEADY_PREFIX = "# steady:";
    static final String PASSED_PREFIX = "# fault tolerance passed:";
    static final String FAILED_PREFIX = "# fault tolerance FAILED:";
    static final int STEADY_ITERS = 40;
    /** Full-sum iterations after the rejoin before the ranks stop. */
    static final int TAIL_ITERS = 40;
    private static final long PERIOD_MS = 10;
    private static final Duration KILL_BOUND = Duration.ofSeconds(30);
    private static final Duration REJOIN_BOUND = Duration.ofSeconds(60);
    /** Every rank votes to stop after this long, whatever rank 0 thinks: the loop ends even if rank 0's checks cannot. */
    private static final Duration LOOP_BOUND = KILL_BOUND.plus(REJOIN_BOUND).plusSeconds(30);
    private static final Duration EVENTS_WAIT = Duration.ofSeconds(5);

    /**
     * One iteration as rank 0 saw it: the sum, whether it matched the mask it covered, and the epoch
     * and mask after it ({@code covered} differs from {@code mask} when a failure during the
     * operation was agreed after every member held its result: it then stands over the old mask).
     */
    private record Step(long iter, long atMicros, long sum, boolean ok, long epoch, String mask, String covered) {
        String text() {
            return "iter " + iter + " sum " + sum + " " + (ok ? "OK" : "WRONG") + " (epoch " + epoch + ", mask " + mask
                    + (covered.equals(mask) ? "" : ", covered " + covered) + ")";
        }
    }

    /** A timeline entry. */
    private record Event(long atMicros, String what) {}

    private final ProcessGroup pg;
    private final int rank;
    private final int victim;
    private final int full;
    private final List<Step> steps = new ArrayList<>();
    private long wrong;
    // rank 0's view of the events
    private Step failure;
    private String failureWhere;
    private long joinedMicros;
    private long joinedAfterIter = -1;
    private Step firstFull;
    private String stopReason;
    private boolean stopFailed;

    private FaultDemoWorker(ProcessGroup pg, int victim) {
        this.pg = pg;
        this.rank = pg.rank();
        this.victim = victim;
        int f = 0;
        for (int r = 0; r < pg.worldSize(); r++) f += r + 1;
        this.full = f;
    }

    public static void main(String[] args) {
        try {
            boolean joining = Elastic.isExtension();
            int victim = Integer.parseInt(System.getenv().getOrDefault(VICTIM_ENV, "2").trim());
            ProcessGroup pg = Elastic.initFromEnv();
            try {
                new FaultDemoWorker(pg, victim).run(joining);
            } finally {
                Elastic.close(pg);
            }
        } catch (Throwable t) {
            // exit for sure, so that the launcher sees the failure at once: the group's threads must not keep this JVM alive
            System.err.println("rank " + System.getenv("RANK") + " failed: " + t);
            t.printStackTrace();
            System.exit(1);
        }
        System.out.flush();
        System.exit(0);
    }

    private void run(boolean joining) throws InterruptedException {
        long iter = 0;
        try (Tensor t = Tensor.zeros(DType.INT64, Device.CPU, 2); Tensor shared = Tensor.zeros(DType.INT64, Device.CPU, 1)) {
            if (joining) {
                Elastic.syncState(pg, shared, true);
                iter = shared.getLong(0) + 1;
                long jvmStart = ProcessHandle.current().info().startInstant().map(Instant::toEpochMilli).orElse(System.currentTimeMillis());
                System.out.println("rank " + rank + " restarted (" + WorkerLauncher.RESTART_COUNT_ENV + "=" + Elastic.restartCount() + "): joined in epoch "
                        + pg.epoch() + " (mask " + mask(pg.activeRanks().toIntArray()) + ") " + (System.currentTimeMillis() - jvmStart)
                        + " ms after its JVM started; continuing at iteration " + iter);
            } else if (rank == 0) {
                System.out.println("# fault tolerance: " + pg.size() + " ranks loop all_reduce(rank+1) (full sum " + full + ") with a group timeout of "
                        + pg.timeout().toMillis() + " ms; the demo kills rank " + victim + " with SIGKILL and the launcher restarts it as an extension rank");
            }
            long loopStart = System.nanoTime();
            while (true) {
                int[] before = pg.activeRanks().toIntArray();
                t.setLong(0, rank + 1);
                t.setLong(1, rank == 0 ? stopVote(iter, loopStart) : System.nanoTime() - loopStart > LOOP_BOUND.toNanos() ? 1 : 0);
                pg.allReduce(t, ReduceOp.SUM);
                int[] after = pg.activeRanks().toIntArray();
                int[] covered = pg.lastLocalSuccess() ? before : after;
                long sum = t.getLong(0);
                boolean ok = sum == sumOf(covered);
                if (!ok) {
                    wrong++;
                    System.out.println("rank " + rank + ": iter " + iter + " sum " + sum + " WRONG: want " + sumOf(covered) + " over mask " + mask(covered)
                            + (pg.lastLocalSuccess() ? " (before the operation)" : " (after it; the operation was redone)"));
                }
                if (rank == 0) observe(iter, sum, ok, after, covered);
                if (t.getLong(1) != 0) break;
                int droppedBefore = pg.droppedRanks().length;
                int[] recovered = Elastic.recoverReady(pg);
                if (rank == 0 && failure == null && pg.droppedRanks().length > droppedBefore) {
                    // the failure surfaced in the recovery poll's own collective
                    String now = mask(pg.activeRanks().toIntArray());
                    failure = new Step(iter, nowMicros(), sum, ok, pg.epoch(), now, now);
                    failureWhere = "in the recovery poll after iter " + iter;
                    System.out.println("iter " + iter + ": rank(s) " + Arrays.toString(pg.droppedRanks()) + " dropped " + failureWhere + " (epoch " + failure.epoch()
                            + ", mask " + failure.mask() + ")");
                }
                if (recovered.length > 0) {
                    if (rank == 0) {
                        joinedMicros = nowMicros();
                        joinedAfterIter = iter;
                        System.out.println("iter " + iter + ": recovered rank(s) " + Arrays.toString(recovered) + " (epoch " + pg.epoch() + ", mask "
                                + mask(pg.activeRanks().toIntArray()) + ")");
                    }
                    shared.setLong(0, iter);
                    Elastic.syncState(pg, shared, false);
                }
                if (rank == 0 && iter == STEADY_ITERS) {
                    // printed at the end of the iteration, so that the kill usually lands in the pause and the next all_reduce meets it
                    System.out.println(STEADY_PREFIX + " " + steps.getLast().text() + " on " + pg.size() + " ranks; the demo now kills rank " + victim
                            + " with SIGKILL");
                }
                iter++;
                Thread.sleep(PERIOD_MS);
            }
            // every rank's wrong sums, added up for rank 0's verdict
            try (Tensor w = Tensor.of(new long[] {wrong})) {
                pg.allReduce(w, ReduceOp.SUM);
                if (rank == 0) report(w.getLong(0));
            }
        }
    }

    /** Rank 0: records the iteration and notices the events. */
    private void observe(long iter, long sum, boolean ok, int[] after, int[] covered) {
        Step s = new Step(iter, nowMicros(), sum, ok, pg.epoch(), mask(after), mask(covered));
        steps.add(s);
        if (failure == null && pg.lastDroppedRanks().length > 0) {
            failure = s;
            failureWhere = "in iter " + iter + "'s all_reduce";
            System.out.println(s.text() + ": rank(s) " + Arrays.toString(pg.lastDroppedRanks()) + " dropped, the survivors agreed on epoch " + s.epoch());
        }
        if (failure != null && firstFull == null && joinedAfterIter >= 0 && sum == full && ok) {
            firstFull = s;
            System.out.println(s.text() + ": the full sum again");
        }
    }

    /** Rank 0: 1 when every rank should stop after this iteration (done, or a bound passed), else 0. */
    private long stopVote(long iter, long loopStart) {
        if (stopReason != null) return 1;
        long now = System.nanoTime();
        if (firstFull != null && iter >= firstFull.iter() + TAIL_ITERS) {
            stopReason = TAIL_ITERS + " full-sum iterations after the rejoin";
        } else if (failure == null && now - loopStart > KILL_BOUND.toNanos()) {
            stopReason = "no rank was dropped within " + KILL_BOUND.toSeconds() + " s of the loop's start (the demo did not kill rank " + victim + ")";
            stopFailed = true;
        } else if (failure != null && joinedAfterIter < 0 && nowMicros() - failure.atMicros() > REJOIN_BOUND.toNanos() / 1000) {
            stopReason = "rank " + victim + " did not rejoin within " + REJOIN_BOUND.toSeconds() + " s of the failure";
            stopFailed = true;
        } else if (joinedAfterIter >= 0 && firstFull == null && iter > joinedAfterIter + TAIL_ITERS) {
            stopReason = "the sums did not return to " + full + " within " + TAIL_ITERS + " iterations of the rejoin";
            stopFailed = true;
        }
        return stopReason == null ? 0 : 1;
    }

    /** Rank 0: the timeline and the verdict. */
    private void report(long wrongAll) {
        long[] kill = null;   // micros, rank, pid
        long[] start = null;  // micros, rank, pid, restart count
        long waitEnd = System.nanoTime() + EVENTS_WAIT.toNanos();
        String eventsFile = System.getenv(EVENTS_ENV);
        while (eventsFile != null) {
            for (String line : readLines(Path.of(eventsFile))) {
                String[] f = line.trim().split(" ");
                if (f[0].equals("kill") && f.length == 4 && kill == null) kill = new long[] {Long.parseLong(f[1]), Long.parseLong(f[2]), Long.parseLong(f[3])};
                if (f[0].equals("start") && f.length == 5 && start == null) {
                    start = new long[] {Long.parseLong(f[1]), Long.parseLong(f[2]), Long.parseLong(f[3]), Long.parseLong(f[4])};
                }
            }
            if (kill != null && start != null || failure == null || System.nanoTime() - waitEnd > 0) break;
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        List<String> problems = new ArrayList<>();
        if (stopFailed) problems.add(stopReason);
        if (wrongAll > 0) problems.add(wrongAll + " wrong sum(s) over all ranks");
        if (kill == null) problems.add("no kill was recorded in " + (eventsFile == null ? EVENTS_ENV + " (unset)" : eventsFile));
        if (failure == null) problems.add("the failure was never detected");
        if (start == null) problems.add("no replacement process start was recorded");
        if (joinedAfterIter < 0) problems.add("rank " + victim + " never rejoined");
        if (firstFull == null) problems.add("the sums never returned to " + full);

        if (kill != null) {
            long t0 = kill[0];
            List<Event> events = new ArrayList<>();
            events.add(new Event(kill[0], "kill sent: SIGKILL to rank " + kill[1] + " (pid " + kill[2] + ")|" + around(kill[0])));
            if (failure != null) {
                events.add(new Event(failure.atMicros(), "failure detected " + failureWhere + ": epoch " + failure.epoch() + ", agreed mask " + failure.mask()
                        + "|" + around(failure.atMicros() - 1)));
            }
            if (start != null) {
                events.add(new Event(start[0], "replacement process started: rank " + start[1] + ", pid " + start[2] + ", " + WorkerLauncher.RESTART_COUNT_ENV
                        + "=" + start[3] + "|" + around(start[0])));
            }
            if (joinedAfterIter >= 0) {
                events.add(new Event(joinedMicros, "replacement joined: recoverRanks returned after iter " + joinedAfterIter + "|" + around(joinedMicros)));
            }
            if (firstFull != null) {
                events.add(new Event(firstFull.atMicros(), "first full sum again: " + firstFull.text() + "|" + around(firstFull.atMicros() - 1)));
            }
            events.sort(Comparator.comparingLong(Event::atMicros));
            int width = events.stream().mapToInt(e -> e.what().indexOf('|')).max().orElse(0);
            System.out.println("# timeline on rank 0, ms relative to the kill (iterations around each event: last before | first after)");
            for (Event e : events) {
                String[] parts = e.what().split("\\|", 2);
                System.out.println(String.format(Locale.ROOT, "%+10.1f ms  %-" + width + "s  %s", (e.atMicros() - t0) / 1000.0, parts[0], parts[1]));
            }
        }
        long iters = steps.isEmpty() ? 0 : steps.getLast().iter() + 1;
        if (problems.isEmpty()) {
            int lessOne = full - (victim + 1);
            System.out.println(PASSED_PREFIX + " " + iters + " iterations, every sum on every rank checked OK against the mask it covered ("
                    + full + " with all ranks, " + lessOne + " while rank " + victim + " was out); rank " + victim + " was back "
                    + String.format(Locale.ROOT, "%.2f", (joinedMicros - kill[0]) / 1e6) + " s after the kill");
        } else {
            System.out.println(FAILED_PREFIX + " " + String.join("; ", problems));
        }
    }

    /** The last iteration that ended at or before {@code micros} and the first one after it. */
    private String around(long micros) {
        Step before = null;
        Step after = null;
        for (Step s : steps) {
            if (s.atMicros() <= micros) before = s;
            else if (after == null) after = s;
        }
        return (before == null ? "(none before)" : before.text()) + " | " + (after == null ? "(none after)" : after.text());
    }

    private static List<String> readLines(Path p) {
        try {
            return Files.exists(p) ? Files.readAllLines(p) : List.of();
        } catch (IOException e) {
            return List.of();
        }
    }

    static long nowMicros() { return micros(Instant.now()); }

    static long micros(Instant t) { return t.getEpochSecond() * 1_000_000L + t.getNano() / 1000; }

    private static String mask(int[] m) {
        StringBuilder sb = new StringBuilder();
        for (int v : m) sb.append(v != 0 ? '1' : '0');
        return sb.toString();
    }

    private static long sumOf(int[] mask) {
        long s = 0;
        for (int r = 0; r < mask.length; r++) if (mask[r] != 0) s += r + 1;
        return s;
    }
}
