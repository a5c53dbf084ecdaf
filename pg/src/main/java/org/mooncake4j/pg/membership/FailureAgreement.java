package org.mooncake4j.pg.membership;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.Optional;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Predicate;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.transfer.store.MetadataStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Survivors agree on membership through the metadata store, so no two survivors ever disagree about
 * who is in the group or about the result of the operation in flight.
 *
 * <p>Protocol for a group in epoch E with members M:
 * <ol>
 * <li>A rank that sees a peer die (connection closed) or waits past its deadline flips the state
 *     from "E normal" to "E recovering" by compare-and-set. Every member's watcher sees the flip at
 *     once and interrupts its waits.</li>
 * <li>Each member that is alive and inside an operation appends a report to {@code recover/E}:
 *     the operation it is in, its phase there (not started / exchanging data / holding the complete
 *     result and syncing), the peers it saw die and the peers it timed out on.</li>
 * <li>When every member of M has reported or is known dead, or the unreported ones were timed out on
 *     and had a short grace period, or the group timeout has passed, any reporter decides: the new
 *     mask is exactly the reporters; the operation in flight K (the lowest reported) is committed as
 *     computed over M if some reporter already moved past it or every reporter holds its complete
 *     result, and otherwise redone over the new mask. The decision is written by compare-and-set from
 *     "E recovering" to "E+1": the first writer wins and everyone adopts it.</li>
 * </ol>
 * A rank returns from an operation only after every member has told it that it holds the complete
 * result (the sync step), so "some rank moved past K" implies "every member held K's result": commit
 * is then safe for all, and a redo can never contradict a result someone returned. A member that did
 * not report is fenced: its next operation finds itself outside the mask and fails.
 *
 * <p>Thread-safe. A watcher thread follows the state key; {@link #close()} stops it.
 */
public final class FailureAgreement implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(FailureAgreement.class);

    /** Where a rank is inside the operation it reports on. */
    public enum Phase { IDLE, DATA, SYNC }

    /** One member's report for a recovery. */
    public record Report(int rank, long op, Phase phase, int[] dead, int[] timedOut) {
        String encode() {
            return rank + " " + op + " " + phase.name() + " " + join(dead) + " " + join(timedOut);
        }

        static Report decode(String line) {
            String[] f = line.trim().split(" ");
            return new Report(Integer.parseInt(f[0]), Long.parseLong(f[1]), Phase.valueOf(f[2]), split(f[3]), split(f[4]));
        }

        private static String join(int[] a) {
            if (a.length == 0) return "-";
            StringBuilder sb = new StringBuilder();
            for (int x : a) sb.append(sb.isEmpty() ? "" : ",").append(x);
            return sb.toString();
        }

        private static int[] split(String s) {
            return s.equals("-") ? new int[0] : Arrays.stream(s.split(",")).mapToInt(Integer::parseInt).toArray();
        }
    }

    private final MetadataStore store;
    private final String prefix;
    private final String group;
    private final int rank;
    private final Duration timeout;
    private final long graceNanos;
    private final AtomicReference<GroupState> latest = new AtomicReference<>();
    private volatile boolean closed;
    private Thread watcher;

    public FailureAgreement(MetadataStore store, String prefix, String group, int rank, Duration timeout) {
        this.store = store;
        this.prefix = prefix;
        this.group = group;
        this.rank = rank;
        this.timeout = timeout;
        this.graceNanos = suspectGraceNanos(timeout);
        warmUp();
    }

    /**
     * How long the agreement waits for members that a peer timed out on and that have not reported
     * (they may be alive and only slow) before it drops them. A live member reports within
     * milliseconds of the recovery's start (its waits end as soon as its watcher sees the state flip);
     * only a starved CPU delays it. So: 50 ms on a host with two cores per local rank, else a quarter
     * of the timeout (at least 250 ms, at most 2 s). {@code MOONCAKE_SUSPECT_GRACE_MS} (or
     * {@code -Dmooncake4j.suspectGraceMs}) sets it, e.g. higher for processes with long GC pauses.
     */
    static long suspectGraceNanos(Duration timeout) {
        String s = System.getProperty("mooncake4j.suspectGraceMs", System.getenv("MOONCAKE_SUSPECT_GRACE_MS"));
        if (s != null && !s.isBlank()) {
            long ms;
            try {
                ms = Long.parseLong(s.trim());
            } catch (NumberFormatException e) {
                ms = -1;
            }
            if (ms < 0) {
                throw new IllegalArgumentException("MOONCAKE_SUSPECT_GRACE_MS must be a whole number of milliseconds >= 0, got '" + s
                        + "'; unset it for the default (50 ms with two cores per local rank, else a quarter of the timeout)");
            }
            return ms * 1_000_000L;
        }
        if (org.mooncake4j.core.internal.Waiter.spareCores()) return Math.min(50_000_000L, timeout.toNanos() / 4);
        return Math.min(Math.max(250_000_000L, timeout.toNanos() / 4), 2_000_000_000L);
    }

    /** The grace period in force (see {@link #suspectGraceNanos}). */
    public Duration suspectGrace() { return Duration.ofNanos(graceNanos); }

    private static volatile boolean warm;

    /**
     * Runs the recovery's own code once, on made-up data, when the first group of this process is
     * created: loading, linking and first interpretation of these classes (and the first use of each
     * string-concatenation shape) otherwise cost tens of milliseconds inside the first real recovery,
     * between a peer's death and the survivors' result. (The recovery path itself avoids stream
     * pipelines and {@code Duration} arithmetic, whose first use is as slow.)
     */
    static void warmUp() {
        if (warm) return;
        warm = true;
        GroupState s = GroupState.initial(3, 3, new boolean[] {true, true, true});
        TreeMap<Integer, Report> reports = new TreeMap<>();
        for (int r = 0; r < 2; r++) {
            Report rep = Report.decode(new Report(r, 7, r == 0 ? Phase.DATA : Phase.SYNC, new int[] {2}, new int[0]).encode());
            reports.putIfAbsent(rep.rank(), rep);
        }
        TreeSet<Integer> dead = new TreeSet<>();
        for (Report r : reports.values()) for (int d : r.dead()) dead.add(d);
        GroupState decided = GroupState.decode(decide(GroupState.decode(s.beginRecovery().encode()), reports).encode());
        if (!Arrays.equals(decided.members(), new int[] {0, 1}) || !dead.contains(2)) {
            throw new IllegalStateException("the failure agreement's self-check failed: " + decided + " (expected rank 2 dropped)");
        }
    }

    String stateKey() { return prefix + "state"; }

    /** Creates the group state if absent; otherwise checks this rank's configuration against it. */
    public GroupState initOrCheck(GroupState mine, boolean extension) {
        if (store.compareAndSet(stateKey(), null, mine.encode())) {
            offer(mine);
            return mine;
        }
        GroupState g = read();
        if (g.slots() != mine.slots()) {
            throw new IllegalArgumentException("max_world_size mismatch: rank " + rank + " was started with max_world_size " + mine.slots()
                    + " but group '" + group + "' has " + g.slots() + ". Every rank, joining ranks included, must use the same max_world_size.");
        }
        if (!extension && g.worldSize() != mine.worldSize() && g.epoch() == 0) {
            throw new IllegalArgumentException("world_size mismatch: rank " + rank + " was started with world_size " + mine.worldSize()
                    + " but group '" + group + "' has " + g.worldSize() + ". Every rank must use the same world_size.");
        }
        if (!extension && (g.epoch() > 0 || !g.isActive(rank))) {
            throw new IllegalStateException("rank " + rank + " cannot start as a regular member of group '" + group + "': the group is running"
                    + " (epoch " + g.epoch() + ", active ranks " + Arrays.toString(g.members()) + "). A replacement or joining process must be"
                    + " started with MooncakeBackendOptions(activeRanks, isExtension=true, maxWorldSize) and call joinGroup().");
        }
        offer(g);
        return g;
    }

    public GroupState read() {
        return store.get(stateKey()).map(GroupState::decode)
                .orElseThrow(() -> new IllegalStateException("group '" + group + "' has no state in the store " + store.uri()));
    }

    /** The newest state this rank has seen (by the watcher, a read, or its own compare-and-set). */
    public GroupState latest() { return latest.get(); }

    /**
     * Makes {@code s} the latest state unless a newer one is already known. The watcher thread, the
     * operation thread's reads and its compare-and-sets each learn of states at their own time: a
     * watcher descheduled between reading a state and storing it must not put back an older epoch
     * (that would make {@link #changedSince} report a change that did not happen, and a plane build
     * fail for a member that is there).
     */
    private void offer(GroupState s) {
        latest.accumulateAndGet(s, (known, seen) -> known == null || !known.isAfter(seen) ? seen : known);
    }

    /** True when the group has left {@code epoch} or a recovery of it is under way. */
    public boolean changedSince(long epoch) {
        GroupState s = latest.get();
        return s != null && (s.epoch() != epoch || s.recovering());
    }

    /** Starts the watcher that keeps {@link #latest()} current (one daemon thread per group). */
    public synchronized void startWatcher() {
        if (watcher != null) return;
        watcher = Thread.ofPlatform().daemon().name("mooncake-pg-" + group + "-r" + rank + "-watch").start(() -> {
            GroupState known = latest.get();
            byte[] cur = known == null ? null : known.encode();
            while (!closed) {
                try {
                    Optional<byte[]> v = store.awaitChange(stateKey(), cur, Deadline.afterMillis(1000));
                    if (v.isPresent() && !Arrays.equals(v.get(), cur)) {
                        cur = v.get();
                        offer(GroupState.decode(cur));
                    }
                } catch (RuntimeException e) {
                    if (closed) return;
                    LOG.debug("state watch of group {} failed: {}", group, e.toString());
                    try {
                        Thread.sleep(50);
                    } catch (InterruptedException ie) {
                        return;
                    }
                }
            }
        });
    }

    /** Replaces the state by compare-and-set; updates {@link #latest()} when it wins. */
    public boolean compareAndSet(GroupState expected, GroupState next) {
        if (store.compareAndSet(stateKey(), expected.encode(), next.encode())) {
            offer(next);
            return true;
        }
        return false;
    }

    /** Waits until the stored state satisfies {@code p}. */
    public GroupState awaitState(Predicate<GroupState> p, Deadline deadline, String what) {
        byte[] cur = store.get(stateKey()).orElse(null);
        while (true) {
            if (cur != null) {
                GroupState s = GroupState.decode(cur);
                if (p.test(s)) {
                    offer(s);
                    return s;
                }
            }
            if (deadline.expired()) {
                throw new TimeoutException("Timed out waiting for " + what + " in group '" + group + "' (state now: "
                        + (cur == null ? "absent" : new String(cur, StandardCharsets.UTF_8)) + ")");
            }
            cur = store.awaitChange(stateKey(), cur, deadline.min(Deadline.afterMillis(1000))).orElse(null);
        }
    }

    /**
     * Runs the recovery of epoch {@code from.epoch()} with this rank's {@code report} and returns the
     * decided next state (epoch > from's). The caller checks whether it is still a member.
     */
    public GroupState agree(GroupState from, Report report) {
        long e = from.epoch();
        long t0 = System.nanoTime();
        while (true) {
            GroupState cur = read();
            if (cur.epoch() > e) return adopt(cur, t0);
            if (cur.recovering() || compareAndSet(cur, cur.beginRecovery())) break;
        }
        String reportsKey = prefix + "recover/" + e;
        while (true) {
            byte[] cur = store.get(reportsKey).orElse(null);
            String text = cur == null ? "" : new String(cur, StandardCharsets.UTF_8);
            byte[] next = (text + report.encode() + "\n").getBytes(StandardCharsets.UTF_8);
            if (store.compareAndSet(reportsKey, cur, next)) break;
        }
        LOG.info("failure suspected group={} rank={} epoch={} report=[{}]", group, rank, e, report.encode());
        // a timed-out suspect that is merely slow gets the grace period to report (suspectGraceNanos)
        Deadline hard = Deadline.after(timeout);
        long graceEnd = System.nanoTime() + graceNanos;
        while (true) {
            GroupState st = read();
            if (st.epoch() > e) return adopt(st, t0);
            TreeMap<Integer, Report> reports = new TreeMap<>();
            byte[] raw = store.get(reportsKey).orElse(new byte[0]);
            for (String line : new String(raw, StandardCharsets.UTF_8).split("\n")) {
                if (line.isBlank()) continue;
                Report r = Report.decode(line);
                if (from.isActive(r.rank())) reports.putIfAbsent(r.rank(), r);
            }
            TreeSet<Integer> dead = new TreeSet<>(), timedOut = new TreeSet<>(), waiting = new TreeSet<>();
            for (Report r : reports.values()) {
                for (int d : r.dead()) dead.add(d);
                for (int d : r.timedOut()) timedOut.add(d);
            }
            for (int m : from.members()) if (!reports.containsKey(m) && !dead.contains(m)) waiting.add(m);
            boolean onlySuspectsLeft = timedOut.containsAll(waiting) && System.nanoTime() - graceEnd >= 0;
            if (waiting.isEmpty() || onlySuspectsLeft || hard.expired()) {
                GroupState decided = decide(from, reports);
                if (compareAndSet(st, decided)) return adopt(decided, t0);
                continue;
            }
            store.awaitChange(reportsKey, raw.length == 0 ? null : raw, Deadline.afterMillis(10));
        }
    }

    /** The decision rule (see the class comment); deterministic in the reports. */
    static GroupState decide(GroupState from, TreeMap<Integer, Report> reports) {
        boolean[] mask = new boolean[from.slots()];
        long k = Long.MAX_VALUE;
        for (Report r : reports.values()) {
            mask[r.rank()] = true;
            k = Math.min(k, r.op());
        }
        boolean someoneMovedOn = false, allHoldResult = true;
        for (Report r : reports.values()) {
            if (r.op() > k) someoneMovedOn = true;
            else if (r.phase() != Phase.SYNC) allHoldResult = false;
        }
        GroupState.Outcome o = someoneMovedOn || allHoldResult ? GroupState.Outcome.COMMIT : GroupState.Outcome.REDO;
        return from.next(mask, from.worldSize(), k, o);
    }

    private GroupState adopt(GroupState s, long t0) {
        offer(s);
        LOG.info("epoch change group={} rank={} epoch={} active={} op={} outcome={} after {} ms", group, rank, s.epoch(),
                Arrays.toString(s.members()), s.decidedOp(), s.outcome(), (System.nanoTime() - t0) / 1_000_000);
        return s;
    }

    @Override
    public void close() {
        closed = true;
        Thread w;
        synchronized (this) { w = watcher; }
        if (w != null) {
            w.interrupt();
            try {
                w.join(2000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }
}
