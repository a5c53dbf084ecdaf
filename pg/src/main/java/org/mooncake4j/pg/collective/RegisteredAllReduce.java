package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.CollectiveMismatchException;
import org.mooncake4j.pg.ReduceOp;

/**
 * Large all-reduce over registered memory ({@link SharedMemory}), read in place: when every member's
 * tensor is registered and every member is on this host, no byte goes through the staging inboxes.
 *
 * <ol>
 * <li>Describe: each rank writes a description (its tensor's region id and offset, the byte count,
 *     its scratch region) into every member's segment and publishes {@code 2·op}. If any member's
 *     tensor is not registered, every member sees that in the same descriptions and all of them run
 *     the staged algorithm instead ({@link #run} returns false).</li>
 * <li>Reduce: member {@code i} reduces part {@code i} of the message, reading it from every member's
 *     tensor in rank order, into its own scratch (registered too).</li>
 * <li>Barrier: each rank publishes {@code 2·op + 1} once its part is in its scratch and waits for
 *     every member's. After it, every part of the result exists in shared memory.</li>
 * <li>Gather: each rank copies every member's part from that member's scratch into its tensor.</li>
 * </ol>
 * Per rank that is read N + write N/n, then read N + write N, against about 3.25 (2 ranks) to 3.85
 * (4 ranks) copies of N for the staged algorithm with its backup, and two rounds of flags instead
 * of one per chunk. The reduction and the gather are split over {@link Stripes} on hosts with cores
 * to spare.
 *
 * <p>In place ({@link #IN_PLACE}, up to {@link #inPlaceMaxBytes}): member {@code i} reduces part
 * {@code i} into its own tensor instead, piece by piece, each piece of its input first copied to its
 * scratch (the backup for a redo, {@link Reduction#reduceInPlace}); nobody else reads that part of
 * its tensor. After the barrier each rank copies the other parts from the members' tensors, and its
 * own is there already: per rank read N + write 2N/n, then read and write N(n-1)/n, with the own
 * part's writes to lines just read. A redo puts the part back from the scratch first (the group's
 * {@link Backup}); the peers read the sums from a tensor only before the operation's sync step, after
 * which its owner may change it.
 *
 * <p>Failures: a rank overwrites its tensor only after the barrier (in place: beyond its own part,
 * kept in its scratch), which it passes only when every member has finished its part. A member that
 * fails before the barrier leaves every tensor intact or restorable (survivors report the data phase:
 * the agreement redoes the operation without it). One that fails after it leaves its part in its
 * scratch (in place: in its tensor), whose pages stay mapped in the survivors, who complete the
 * gather and report the sync phase: the agreement commits. Scratches (scratch mode) alternate by the parity of the
 * operation number, so a fast rank's next operation never writes the scratch a slow rank still
 * reads: the operation after that first passes a sync that the slow rank joins only after its
 * gather. In place, a rank's next operation changes its tensor only after every member described
 * that operation, which a slow rank does after its gather.
 *
 * <p>Owned by one group context (its operation thread); allocates only when a scratch grows or a
 * peer's region is first seen.
 */
final class RegisteredAllReduce implements AutoCloseable {
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG;
    /** Description words. */
    private static final int D_OPCODE = 0, D_INPUT = 1, D_INPUT_OFF = 2, D_BYTES = 3, D_SCRATCH = 4, D_SCRATCH_OFF = 5, D_KIND = 6, D_MODE = 7;
    /** Per-peer cache of mapped regions. */
    private static final int CACHE = 8;
    /** Stripes below this many bytes are not worth a thread's wake-up. */
    private static final long MIN_STRIPE_BYTES = 256 * 1024;
    /** {@code -Dmooncake4j.allreduce.registered=false} keeps large all-reduces on the staged algorithm. */
    static final boolean ENABLED = Boolean.parseBoolean(System.getProperty("mooncake4j.allreduce.registered", "true"));
    /**
     * {@code -Dmooncake4j.allreduce.registered.inplace=false} reduces into the scratch (the sums that
     * peers read live there) instead of into the tensor with the scratch as the backup of the part
     * overwritten. Every rank must use the same mode (the descriptions carry it and are checked).
     */
    static final boolean IN_PLACE = Boolean.parseBoolean(System.getProperty("mooncake4j.allreduce.registered.inplace", "true"));
    /**
     * In place only up to this many bytes: {@code -Dmooncake4j.allreduce.registered.inplaceMaxBytes}
     * for any number of ranks; without it {@link #IN_PLACE_MAX_BYTES_TWO} between two ranks and
     * {@link #IN_PLACE_MAX_BYTES} among more. Measured on a 2-vCPU VM (float32 SUM, five to six runs
     * alternating both modes, medians): in place took 0.51-0.69 of the time at 2 ranks from 2 to
     * 16 MiB (0.73-0.92 at 1 MiB), 0.60-0.88 at 4 ranks from 2 to 16 MiB (at 1 MiB among four, 1.24,
     * within that VM's noise). Beyond that, working sets far beyond the caches, the backup's extra
     * write stream cost the reduction more than the saved copy of the own part gained among four ranks
     * (32 MiB: 13.2-13.5 against 11.3-12.6 ms) and at 64 MiB between two (12.3-13.4 against
     * 11.1-12.2 ms), but not at 32 MiB between two, where each rank's saved copy is half the message
     * (5.3-6.9 against 6.6-9.0 ms in eight alternating runs).
     */
    static final long IN_PLACE_MAX_BYTES = 16L << 20;
    /** {@link #IN_PLACE_MAX_BYTES} between two ranks. */
    static final long IN_PLACE_MAX_BYTES_TWO = 32L << 20;
    private static final Long IN_PLACE_MAX_BYTES_SET = Long.getLong("mooncake4j.allreduce.registered.inplaceMaxBytes");

    /** The largest all-reduce (bytes) that runs in place among {@code n} ranks. */
    static long inPlaceMaxBytes(int n) {
        if (IN_PLACE_MAX_BYTES_SET != null) return IN_PLACE_MAX_BYTES_SET;
        return n == 2 ? IN_PLACE_MAX_BYTES_TWO : IN_PLACE_MAX_BYTES;
    }

    /**
     * Fault injection for tests: {@code -Dmooncake4j.fault.haltAfterReduce=K} halts this process right
     * after the reduction of its K-th all-reduce here, before it tells the peers (so they find their
     * parts overwritten in place and must redo from the restored inputs). 0: never.
     */
    private static final long HALT_AFTER_REDUCE = Long.getLong("mooncake4j.fault.haltAfterReduce", 0);
    private static final java.util.concurrent.atomic.AtomicLong REDUCES = new java.util.concurrent.atomic.AtomicLong();

    private final CollectiveContext c;
    private final SharedMemory shared;
    private final MemorySegment body;
    private final MemorySegment[] src, scr, desc;
    private final long[] srcOff, scrOff;
    private final long[][] stripeOff, pieceOff;
    private final long[][] cacheId;
    private final MemorySegment[][] cacheMem;
    private final int[] cacheNext;
    private SharedMemory.Region scratch;
    private Stripes stripes;
    private final Stripes.Task reduceTask = this::reduceStripe, gatherTask = this::gatherStripe;
    /** In place: puts the part this rank overwrote back from the scratch, for a redo. */
    private final Backup.Restorer restorer = this::restorePart;
    private boolean inPlace;
    // what restorePart puts back: set before an in-place reduction, kept after run() returns (a failed
    // sync step may still lead to a redo; the group restores before it closes this epoch's state)
    private MemorySegment restoreData;
    private long restoreAt, restoreBytes;
    // the operation the stripes work on
    private DType dtype;
    private ReduceOp op;
    private int n, me, es;
    private long count;
    private MemorySegment data;

    RegisteredAllReduce(CollectiveContext c, SharedMemory shared, int slots) {
        this.c = c;
        this.shared = shared;
        this.body = java.lang.foreign.Arena.ofAuto().allocate(GroupLayout.LINE, 64);
        src = new MemorySegment[slots];
        scr = new MemorySegment[slots];
        desc = new MemorySegment[slots];
        srcOff = new long[slots];
        scrOff = new long[slots];
        int threads = Stripes.configuredThreads();
        stripeOff = new long[threads][slots];
        pieceOff = new long[threads][slots];
        cacheId = new long[slots][CACHE];
        cacheMem = new MemorySegment[slots][CACHE];
        cacheNext = new int[slots];
    }

    /** Whether this algorithm may run: it is enabled and every other member's group segment is mapped here (same host, shm). */
    boolean applicable() {
        return ENABLED && allMapped();
    }

    /** Whether every other member's group segment is mapped here (same host, shm). */
    private boolean allMapped() {
        for (int p : c.members) if (p != c.rank && c.ch.peerMapping(p) == null) return false;
        return true;
    }

    /**
     * Runs the all-reduce in place if every member's tensor is registered; returns false (having
     * changed nothing) when some member's is not, and the caller runs the staged algorithm.
     */
    boolean run(DType dtype, ReduceOp op, MemorySegment data, long count) {
        int[] m = c.members;
        int n = m.length;
        int es = dtype.byteSize();
        long bytes = count * es;
        long half = align(AllReduce.partLen(count, n, 0) * es, 64);
        SharedMemory.Region in = shared.find(data); // every peer is mapped: the caller checked applicable()
        boolean mine = in != null;
        inPlace = IN_PLACE && bytes <= inPlaceMaxBytes(n);
        // in place the scratch is this rank's own backup, needed only within this operation: one half
        // for every operation keeps the working set smaller; else halves alternate (see the class comment)
        if (mine) ensureScratch(inPlace ? half : 2 * half);
        long parity = inPlace ? 0 : (c.opSeq & 1) * half;
        body.set(LONG, 8L * D_OPCODE, c.op.ordinal());
        body.set(LONG, 8L * D_INPUT, mine ? in.id() : -1);
        body.set(LONG, 8L * D_INPUT_OFF, mine ? data.address() - in.start() : 0);
        body.set(LONG, 8L * D_BYTES, bytes);
        body.set(LONG, 8L * D_SCRATCH, mine ? scratch.id() : -1);
        body.set(LONG, 8L * D_SCRATCH_OFF, parity);
        body.set(LONG, 8L * D_KIND, kind(dtype, op));
        body.set(LONG, 8L * D_MODE, inPlace ? 1 : 0);
        long described = 2 * c.opSeq, reduced = described + 1;
        for (int p : m) if (p != c.rank) c.ch.describe(p, described, body, c.deadline);
        boolean all = mine;
        for (int i = 0; i < n; i++) {
            int p = m[i];
            if (p == c.rank) continue;
            MemorySegment d = c.ch.awaitDescription(p, described, c.deadline);
            if (d == null) throw otherAlgorithm(p, bytes);
            check(p, d, dtype, op, bytes);
            if (d.get(LONG, 8L * D_INPUT) < 0) all = false;
            desc[i] = d;
        }
        if (!all) return false;
        for (int i = 0; i < n; i++) {
            int p = m[i];
            if (p == c.rank) {
                src[i] = data;
                srcOff[i] = 0;
                scr[i] = scratch.memory();
                scrOff[i] = parity;
                continue;
            }
            MemorySegment d = desc[i];
            src[i] = peerRegion(p, d.get(LONG, 8L * D_INPUT));
            srcOff[i] = d.get(LONG, 8L * D_INPUT_OFF);
            // in place, the sums that this rank gathers are in the peers' tensors, and their scratch is their own backup
            scr[i] = inPlace ? null : peerRegion(p, d.get(LONG, 8L * D_SCRATCH));
            scrOff[i] = inPlace ? 0 : d.get(LONG, 8L * D_SCRATCH_OFF);
            if (srcOff[i] < 0 || srcOff[i] + bytes > src[i].byteSize() || scrOff[i] < 0 || !inPlace && scrOff[i] + half > scr[i].byteSize()) {
                throw new IllegalStateException("all_reduce #" + c.opSeq + ": rank " + p + " described registered memory that does not hold "
                        + bytes + " bytes at offset " + srcOff[i] + " (its region has " + src[i].byteSize() + "); the process group state"
                        + " is inconsistent: restart the job");
            }
        }
        this.dtype = dtype;
        this.op = op;
        this.n = n;
        this.me = c.position();
        this.es = es;
        this.count = count;
        this.data = data;
        long myBytes = AllReduce.partLen(count, n, me) * es;
        if (inPlace) {
            // from here on this rank's part of its tensor changes: a redo first puts it back from the scratch
            restoreData = data;
            restoreAt = AllReduce.partStart(count, n, me) * es;
            restoreBytes = myBytes;
            c.backup.saveWith(restorer);
        }
        stripes().run(reduceTask, stripesFor(myBytes));
        if (HALT_AFTER_REDUCE > 0 && REDUCES.incrementAndGet() == HALT_AFTER_REDUCE) Runtime.getRuntime().halt(3);
        for (int p : m) if (p != c.rank) c.ch.describe(p, reduced, null, c.deadline);
        for (int p : m) {
            if (p != c.rank && c.ch.awaitDescription(p, reduced, c.deadline) == null) throw otherAlgorithm(p, bytes);
        }
        // every part is complete in shared memory: the tensor may now be overwritten
        stripes().run(gatherTask, stripesFor(bytes / n));
        this.data = null;
        return true;
    }

    /**
     * One stripe of the reduction of my part, read from every member's tensor: into my scratch, or in
     * place into my tensor, piece by piece, each piece copied to the scratch first (the backup for a
     * redo) and summed while it is still in cache.
     */
    private void reduceStripe(int stripe, int stripes) {
        long len = AllReduce.partLen(count, n, me);
        long s0 = AllReduce.partStart(len, stripes, stripe), sl = AllReduce.partLen(len, stripes, stripe);
        long base = (AllReduce.partStart(count, n, me) + s0) * es;
        long[] off = stripeOff[stripe];
        for (int i = 0; i < n; i++) off[i] = srcOff[i] + base;
        if (inPlace) Reduction.reduceInPlace(dtype, op, src, off, n, me, scr[me], scrOff[me] + s0 * es, sl, pieceOff[stripe]);
        else Reduction.reduce(dtype, op, src, off, n, scr[me], scrOff[me] + s0 * es, sl);
    }

    /** The redo's restorer (in place): my part of the tensor back from the scratch (the backup is at its start). */
    private void restorePart() {
        MemorySegment.copy(scratch.memory(), 0, restoreData, restoreAt, restoreBytes);
    }

    /**
     * One stripe of the gather: the same slice of every member's part, from its scratch into my tensor,
     * or in place from its tensor (my own part is there already).
     */
    private void gatherStripe(int stripe, int stripes) {
        for (int j = 0; j < n; j++) {
            if (inPlace && j == me) continue;
            long len = AllReduce.partLen(count, n, j);
            long s0 = AllReduce.partStart(len, stripes, stripe), sl = AllReduce.partLen(len, stripes, stripe);
            if (sl == 0) continue;
            long at = (AllReduce.partStart(count, n, j) + s0) * es;
            if (inPlace) MemorySegment.copy(src[j], srcOff[j] + at, data, at, sl * es);
            else MemorySegment.copy(scr[j], scrOff[j] + s0 * es, data, at, sl * es);
        }
    }

    private int stripesFor(long bytes) {
        int t = stripeOff.length;
        return (int) Math.max(1, Math.min(t, bytes / MIN_STRIPE_BYTES));
    }

    private Stripes stripes() {
        if (stripes == null) stripes = new Stripes(stripeOff.length, "mooncake-pg-stripe");
        return stripes;
    }

    private void ensureScratch(long bytes) {
        if (scratch != null && scratch.end() - scratch.start() >= bytes) return;
        // peers may still read the old scratch of the previous operation: their mappings outlive this unregistration
        if (scratch != null) shared.free(scratch);
        scratch = null;
        scratch = shared.allocate(Math.max(bytes, 1 << 20));
    }

    /** Peer {@code p}'s region {@code id}, mapped (cached per peer). */
    private MemorySegment peerRegion(int p, long id) {
        long[] ids = cacheId[p];
        MemorySegment[] mem = cacheMem[p];
        for (int k = 0; k < CACHE; k++) if (mem[k] != null && ids[k] == id) return mem[k];
        MemorySegment seg = shared.openPeer(c.ch.peerEngine(p), id, c.deadline);
        if (seg == null) {
            throw new IllegalStateException("all_reduce #" + c.opSeq + ": rank " + p + "'s registered memory " + SharedMemory.segmentName(c.ch.peerEngine(p), id)
                    + " is reachable only over tcp although its group segment is mapped; check that every rank on this host uses the same /dev/shm");
        }
        int k = cacheNext[p];
        cacheNext[p] = (k + 1) % CACHE;
        ids[k] = id;
        mem[k] = seg;
        return seg;
    }

    private void check(int p, MemorySegment d, DType dtype, ReduceOp op, long bytes) {
        long code = d.get(LONG, 8L * D_OPCODE), theirBytes = d.get(LONG, 8L * D_BYTES), kind = d.get(LONG, 8L * D_KIND);
        if (code != c.op.ordinal()) {
            String theirs = code >= 0 && code < OpCode.values().length ? OpCode.values()[(int) code].torchName() : "opcode " + code;
            throw new CollectiveMismatchException("Collective mismatch: rank " + p + " runs " + theirs + " #" + c.opSeq + " while rank " + c.rank
                    + " runs " + c.op.torchName() + " #" + c.opSeq + ". Every rank of a group must call the same collectives in the same order.");
        }
        if (theirBytes != bytes || kind != kind(dtype, op)) {
            throw new CollectiveMismatchException("Size mismatch in " + c.op.torchName() + " #" + c.opSeq + ": rank " + p + " passed " + theirBytes
                    + " bytes (" + describeKind(kind) + ") but rank " + c.rank + " passed " + bytes + " bytes (" + describeKind(kind(dtype, op))
                    + "). Every rank must pass tensors of matching shapes and dtypes, and the same reduce op.");
        }
        // the mode follows the size, so it is compared once the sizes agree: a differing size is reported as such
        if (d.get(LONG, 8L * D_MODE) != (inPlace ? 1 : 0)) {
            throw new CollectiveMismatchException("all_reduce #" + c.opSeq + " of " + bytes + " bytes: rank " + p + " reduces registered memory "
                    + (inPlace ? "into its scratch" : "in place") + " while rank " + c.rank + " reduces it " + (inPlace ? "in place" : "into its scratch")
                    + ". Every process of the job must use the same -Dmooncake4j.allreduce.registered.inplace and .inplaceMaxBytes.");
        }
    }

    private CollectiveMismatchException otherAlgorithm(int p, long bytes) {
        return new CollectiveMismatchException("Size mismatch in " + c.op.torchName() + " #" + c.opSeq + ": rank " + p
                + " sent a staged chunk while rank " + c.rank + " (" + bytes + " bytes) runs the algorithm for large messages between"
                + " processes on one host. Every rank must pass tensors of matching shapes and dtypes, and every process on the host"
                + " must use the same transport setting (MOONCAKE_TRANSPORT, -Dmooncake4j.allreduce.registered).");
    }

    private static long kind(DType dtype, ReduceOp op) { return dtype.ordinal() * 64L + op.ordinal(); }

    private static String describeKind(long kind) {
        int d = (int) (kind / 64), o = (int) (kind % 64);
        String dt = d >= 0 && d < DType.values().length ? DType.values()[d].torchName() : "dtype " + d;
        String rop = o >= 0 && o < ReduceOp.values().length ? ReduceOp.values()[o].name() : "op " + o;
        return dt + ", " + rop;
    }

    private static long align(long v, long a) { return (v + a - 1) / a * a; }

    @Override
    public void close() {
        if (stripes != null) stripes.close();
        stripes = null;
        if (scratch != null) shared.free(scratch);
        scratch = null;
    }
}
