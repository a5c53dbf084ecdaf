package org.mooncake4j.pg.chaos;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.IntStream;
import java.util.zip.CRC32;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.MooncakeBackendOptions;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.PeerFailureException;
import org.mooncake4j.pg.RankRemovedException;
import org.mooncake4j.pg.Work;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;

/**
 * One rank of a chaos run (started by {@link ChaosTest} with RANK, WORLD_SIZE, MOONCAKE_STORE,
 * MOONCAKE_TIMEOUT_MS and MOONCAKE_TRANSPORT set). Arguments: {@code seed iterations pauseMicros skewMicros
 * profile}: after each iteration rank r pauses {@code pauseMicros + r * skewMicros}, so with a skew the
 * ranks enter each collective at different times (a failure then finds some of them between
 * operations).
 *
 * <p>Iteration i runs the collective {@link ChaosStep#plan} picks for (seed, i) on the public API,
 * checks the result against {@link ChaosData}'s reference for the mask the operation covered (the
 * mask before it when {@code lastLocalSuccess()}/{@code Work.localSuccess()} says it covered every
 * rank active at its start, else the mask after it), and prints one line:
 * <pre>OP i epoch=E mask=1101 covered=true dropped=[2] crc=1a2b3c4d ok=true op=all_reduce/int32/SUM/n=7 us=250 verify_us=40 t=NANOS</pre>
 * {@code t} is {@link System#nanoTime()} (CLOCK_MONOTONIC, shared by every process of the host) when
 * the operation returned, {@code us} how long it took from filling the input to that moment,
 * {@code verify_us} how long the check took. A failed check adds a {@code MISMATCH i ...} line saying
 * what the result equals instead, if anything. Ranks outside the covered mask contribute nothing: their
 * all-gather slots and all-to-all pieces stay zero, and their reduce-scatter parts are nobody's.
 * {@link RankRemovedException} ends the loop with {@code FENCED epoch=E msg=...};
 * any other error prints {@code ERROR i ...} (three in a row end the loop with {@code GAVEUP}). The
 * worker ends with {@code DONE}, closes the group ({@code CLOSED}) and exits 0.
 */
public final class ChaosWorker {
    private static final Duration RENDEZVOUS = Duration.ofSeconds(90);

    private final ProcessGroup pg;
    private final int rank;
    private final int world;

    private ChaosWorker(ProcessGroup pg, int world) {
        this.pg = pg;
        this.rank = pg.rank();
        this.world = world;
    }

    public static void main(String[] args) {
        AsyncConsole console = AsyncConsole.install();
        long seed = Long.parseLong(args[0]);
        long iterations = Long.parseLong(args[1]);
        int world = Integer.parseInt(System.getenv("WORLD_SIZE"));
        int rank = Integer.parseInt(System.getenv("RANK"));
        long pauseMicros = Long.parseLong(args[2]) + rank * Long.parseLong(args[3]);
        ChaosStep.Profile profile = ChaosStep.Profile.valueOf(args[4]);
        ProcessGroup pg;
        try {
            rendezvous(rank, world);
            pg = ProcessGroup.builder().options(new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, world))).init();
        } catch (Throwable t) {
            System.out.println("INITFAIL rank=" + rank + " " + oneLine(t.toString()));
            t.printStackTrace(System.out);
            console.drain();
            System.exit(2);
            return;
        }
        System.out.println("READY rank=" + rank + " pid=" + ProcessHandle.current().pid() + " timeout_ms=" + pg.timeout().toMillis()
                + " t=" + System.nanoTime());
        new ChaosWorker(pg, world).loop(seed, iterations, pauseMicros, profile);
        System.out.println("DONE rank=" + rank + " epoch=" + pg.epoch() + " t=" + System.nanoTime());
        System.out.flush();
        try {
            pg.close();
            System.out.println("CLOSED rank=" + rank);
        } catch (RuntimeException e) {
            System.out.println("CLOSEFAIL rank=" + rank + " " + oneLine(e.toString()));
        }
        console.drain();
        System.exit(0);
    }

    /**
     * Waits until every rank's JVM is up before any of them starts the group, so a short group timeout
     * (which also bounds init) measures the ranks, not JVM start-up skew.
     */
    private static void rendezvous(int rank, int world) {
        MetadataStore store = MetadataStores.open(URI.create(System.getenv("MOONCAKE_STORE")), RENDEZVOUS);
        try {
            store.set("chaos/ready/" + rank, "1".getBytes(StandardCharsets.UTF_8));
            List<String> keys = IntStream.range(0, world).mapToObj(r -> "chaos/ready/" + r).toList();
            store.waitFor(keys, Deadline.after(RENDEZVOUS));
        } finally {
            store.close();
        }
    }

    private void loop(long seed, long iterations, long pauseMicros, ChaosStep.Profile profile) {
        int errors = 0;
        for (long i = 0; i < iterations; i++) {
            try {
                iteration(ChaosStep.plan(seed, i, world, profile));
                errors = 0;
            } catch (RankRemovedException e) {
                System.out.println("FENCED epoch=" + e.epoch() + " t=" + System.nanoTime() + " msg=" + oneLine(e.getMessage()));
                return;
            } catch (RuntimeException | Error e) {
                System.out.println("ERROR " + i + " t=" + System.nanoTime() + " " + oneLine(e.toString()));
                e.printStackTrace(System.out);
                if (++errors == 3) {
                    System.out.println("GAVEUP after 3 errors in a row");
                    return;
                }
            }
            if (pauseMicros > 0) LockSupport.parkNanos(pauseMicros * 1000);
        }
    }

    /** The tensors of one collective; {@code result} is what the digest and the check cover (null for a barrier). */
    private record Issued(Work work, Tensor result, int root, List<Tensor> owned) implements AutoCloseable {
        @Override
        public void close() { for (Tensor t : owned) t.close(); }
    }

    /**
     * One iteration. A rooted operation whose root was dropped while it ran fails alike on every
     * survivor (the library's contract: the root's data is lost); that agreed outcome is printed as an
     * OP line naming the dropped root, so the trial compares it across survivors like any other.
     */
    private void iteration(ChaosStep step) {
        int[] before = activeMask();
        try {
            runIteration(step, before);
        } catch (PeerFailureException e) {
            int[] after = activeMask();
            int[] r = e.ranks();
            if (r.length != 1 || before[r[0]] == 0 || after[r[0]] != 0 || !e.getMessage().contains("root rank " + r[0] + " was dropped")) throw e;
            System.out.println("OP " + step.index() + " epoch=" + pg.epoch() + " mask=" + bits(after) + " covered=false dropped=" + list(r)
                    + " crc=0 ok=true op=" + step.describe() + " root=" + r[0] + " us=0 verify_us=0 t=" + System.nanoTime() + " root-dropped");
        }
    }

    private void runIteration(ChaosStep step, int[] before) {
        List<String> problems = new ArrayList<>();
        long t0 = System.nanoTime();
        Issued issued = issue(step, members(before));
        try (issued) {
            if (issued.work() != null) issued.work().await();
            long t = System.nanoTime();
            int[] dropped = issued.work() != null ? issued.work().droppedRanks() : pg.lastDroppedRanks();
            boolean covered = issued.work() != null ? issued.work().localSuccess() : pg.lastLocalSuccess();
            if (issued.work() != null && (!Arrays.equals(dropped, pg.lastDroppedRanks()) || covered != pg.lastLocalSuccess())) {
                problems.add("Work reports dropped=" + Arrays.toString(dropped) + " localSuccess=" + covered + " but the group reports lastDroppedRanks="
                        + Arrays.toString(pg.lastDroppedRanks()) + " lastLocalSuccess=" + pg.lastLocalSuccess());
            }
            int[] after = activeMask();
            checkMaskChange(before, after, dropped, problems);
            int[] coveredMask = covered ? before : after;
            long crc = 0;
            long v0 = System.nanoTime();
            if (issued.result() != null) {
                MemorySegment got = issued.result().segment();
                CRC32 c = new CRC32();
                c.update(got.asByteBuffer());
                crc = c.getValue();
                String wrong = compare(step, members(coveredMask), issued.root(), got);
                if (wrong != null) {
                    problems.add(wrong + " (expected the reference over mask " + bits(coveredMask) + diagnose(step, before, after, issued.root(), got) + ")");
                }
            }
            boolean ok = problems.isEmpty();
            long verifyMicros = (System.nanoTime() - v0) / 1000;
            System.out.println("OP " + step.index() + " epoch=" + pg.epoch() + " mask=" + bits(after) + " covered=" + covered
                    + " dropped=" + list(dropped) + " crc=" + Long.toHexString(crc) + " ok=" + ok + " op=" + step.describe()
                    + (step.kind() == ChaosStep.Kind.BROADCAST ? " root=" + issued.root() : "") + " us=" + (t - t0) / 1000
                    + " verify_us=" + verifyMicros + " t=" + t);
            for (String p : problems) System.out.println("MISMATCH " + step.index() + " " + p);
        }
    }

    private void checkMaskChange(int[] before, int[] after, int[] dropped, List<String> problems) {
        for (int d : dropped) {
            if (d < 0 || d >= world || before[d] == 0) problems.add("dropped rank " + d + " was not active before the operation (mask " + bits(before) + ")");
        }
        int[] expect = before.clone();
        for (int d : dropped) if (d >= 0 && d < world) expect[d] = 0;
        if (!Arrays.equals(expect, after)) {
            problems.add("mask went from " + bits(before) + " to " + bits(after) + " but the dropped ranks reported are " + list(dropped));
        }
        if (after[rank] != 1) problems.add("this rank's own bit is 0 in " + bits(after) + " but the operation returned normally");
    }

    private Issued issue(ChaosStep s, int[] members) {
        DType dt = s.dtype();
        int es = dt.byteSize();
        long n = s.count();
        List<Tensor> owned = new ArrayList<>();
        try {
            switch (s.kind()) {
                case ALL_REDUCE -> {
                    Tensor t = own(owned, Tensor.empty(dt, Device.CPU, n));
                    ChaosData.fillReduction(t.segment(), s, rank, 0, n);
                    return new Issued(s.async() ? pg.allReduceAsync(t, s.op()) : sync(() -> pg.allReduce(t, s.op())), t, -1, owned);
                }
                case BROADCAST -> {
                    int root = members[s.rootPick() % members.length];
                    Tensor t = own(owned, Tensor.zeros(dt, Device.CPU, n));
                    if (rank == root) ChaosData.fillBytes(t.segment(), 0, s, root, 0, n * es);
                    return new Issued(s.async() ? pg.broadcastAsync(t, root) : sync(() -> pg.broadcast(t, root)), t, root, owned);
                }
                case ALL_GATHER_INTO_TENSOR -> {
                    Tensor in = own(owned, Tensor.empty(dt, Device.CPU, n));
                    Tensor out = own(owned, Tensor.zeros(dt, Device.CPU, n * world));
                    ChaosData.fillBytes(in.segment(), 0, s, rank, 0, n * es);
                    return new Issued(s.async() ? pg.allGatherIntoTensorAsync(out, in) : sync(() -> pg.allGatherIntoTensor(out, in)), out, -1, owned);
                }
                case REDUCE_SCATTER -> {
                    Tensor in = own(owned, Tensor.empty(dt, Device.CPU, n * world));
                    Tensor out = own(owned, Tensor.zeros(dt, Device.CPU, n));
                    ChaosData.fillReduction(in.segment(), s, rank, 0, n * world);
                    return new Issued(s.async() ? pg.reduceScatterTensorAsync(out, in, s.op()) : sync(() -> pg.reduceScatterTensor(out, in, s.op())),
                            out, -1, owned);
                }
                case ALL_TO_ALL_SINGLE -> {
                    long[] inSplits = new long[world], outSplits = new long[world];
                    for (int p = 0; p < world; p++) {
                        inSplits[p] = s.rows(rank, p);
                        outSplits[p] = s.rows(p, rank);
                    }
                    long inRows = Arrays.stream(inSplits).sum(), outRows = Arrays.stream(outSplits).sum();
                    Tensor in = own(owned, Tensor.empty(dt, Device.CPU, inRows));
                    Tensor out = own(owned, Tensor.zeros(dt, Device.CPU, outRows));
                    ChaosData.fillBytes(in.segment(), 0, s, rank, 0, inRows * es);
                    return new Issued(s.async() ? pg.allToAllSingleAsync(out, in, outSplits, inSplits)
                            : sync(() -> pg.allToAllSingle(out, in, outSplits, inSplits)), out, -1, owned);
                }
                case BARRIER -> {
                    return new Issued(s.async() ? pg.barrierAsync() : sync(pg::barrier), null, -1, owned);
                }
                default -> throw new IllegalStateException(s.kind().name());
            }
        } catch (RuntimeException | Error e) {
            for (Tensor t : owned) t.close();
            throw e;
        }
    }

    private static Tensor own(List<Tensor> owned, Tensor t) {
        owned.add(t);
        return t;
    }

    private static Work sync(Runnable blocking) {
        blocking.run();
        return null;
    }

    /** Null when {@code got} equals the reference over {@code members}, else what differs. */
    private String compare(ChaosStep s, int[] members, int root, MemorySegment got) {
        int es = s.dtype().byteSize();
        long n = s.count();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment want = arena.allocate(Math.max(1, got.byteSize()), 64).asSlice(0, got.byteSize());
            switch (s.kind()) {
                case ALL_REDUCE -> ChaosData.reduceReference(want, s, members, 0, n);
                case REDUCE_SCATTER -> ChaosData.reduceReference(want, s, members, (long) rank * n, n);
                case BROADCAST -> {
                    if (contains(members, root)) ChaosData.fillBytes(want, 0, s, root, 0, n * es);
                }
                case ALL_GATHER_INTO_TENSOR -> {
                    for (int r : members) ChaosData.fillBytes(want, r * n * es, s, r, 0, n * es);
                }
                case ALL_TO_ALL_SINGLE -> {
                    long o = 0;
                    for (int src = 0; src < world; src++) {
                        long len = s.rows(src, rank) * es;
                        long from = 0;
                        for (int d = 0; d < rank; d++) from += s.rows(src, d) * es;
                        if (contains(members, src)) ChaosData.fillBytes(want, o, s, src, from, len);
                        o += len;
                    }
                }
                case BARRIER -> { }
                default -> throw new IllegalStateException(s.kind().name());
            }
            long at = got.mismatch(want);
            if (at < 0) return null;
            long e = at / es;
            return s.describe() + " differs at element " + e + " (byte " + at + " of " + got.byteSize() + "): got "
                    + ChaosData.element(got, s.dtype(), e) + ", expected " + ChaosData.element(want, s.dtype(), e);
        }
    }

    /**
     * What a wrong result equals instead, for the report: the reference over the other mask, or for a
     * reduce-scatter another rank's part.
     */
    private String diagnose(ChaosStep s, int[] before, int[] after, int root, MemorySegment got) {
        for (int[] mask : List.of(before, after)) {
            if (compare(s, members(mask), root, got) == null) return "; it equals the reference over mask " + bits(mask);
            if (s.kind() != ChaosStep.Kind.REDUCE_SCATTER) continue;
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment want = arena.allocate(Math.max(1, got.byteSize()), 64).asSlice(0, got.byteSize());
                for (int part = 0; part < world; part++) {
                    ChaosData.reduceReference(want, s, members(mask), (long) part * s.count(), s.count());
                    if (got.mismatch(want) < 0) return "; it is part " + part + " (not this rank's part " + rank + ") reduced over mask " + bits(mask);
                }
            }
        }
        return "; it matches no reference over masks " + bits(before) + " or " + bits(after);
    }

    private int[] activeMask() { return pg.activeRanks().toIntArray(); }

    private static int[] members(int[] mask) { return IntStream.range(0, mask.length).filter(r -> mask[r] != 0).toArray(); }

    private static boolean contains(int[] a, int v) { return Arrays.stream(a).anyMatch(x -> x == v); }

    static String bits(int[] mask) {
        StringBuilder sb = new StringBuilder();
        for (int b : mask) sb.append(b != 0 ? '1' : '0');
        return sb.toString();
    }

    private static String list(int[] a) {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < a.length; i++) sb.append(i == 0 ? "" : ",").append(a[i]);
        return sb.append(']').toString();
    }

    private static String oneLine(String s) { return s == null ? "null" : s.replace('\n', ' ').replace('\r', ' '); }
}
