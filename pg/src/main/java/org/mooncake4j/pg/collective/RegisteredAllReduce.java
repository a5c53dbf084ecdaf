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
 * <p>Failures: a rank overwrites its tensor only after the barrier, which it passes only when every
 * member has finished its part. A member that fails before the barrier leaves every tensor intact
 * (survivors report the data phase: the agreement redoes the operation without it, and no backup is
 * needed). One that fails after it leaves its part in its scratch, whose pages stay mapped in the
 * survivors, who complete the gather and report the sync phase: the agreement commits. Scratches
 * alternate by the parity of the operation number, so a fast rank's next operation never writes the
 * scratch a slow rank still reads: the operation after that first passes a sync that the slow rank
 * joins only after its gather.
 *
 * <p>Owned by one group context (its operation thread); allocates only when a scratch grows or a
 * peer's region is first seen.
 */
final class RegisteredAllReduce implements AutoCloseable {
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG;
    /** Description words. */
    private static final int D_OPCODE = 0, D_INPUT = 1, D_INPUT_OFF = 2, D_BYTES = 3, D_SCRATCH = 4, D_SCRATCH_OFF = 5, D_KIND = 6;
    /** Per-peer cache of mapped regions. */
    private static final int CACHE = 8;
    /** Stripes below this many bytes are not worth a thread's wake-up. */
    private static final long MIN_STRIPE_BYTES = 256 * 1024;
    /** {@code -Dmooncake4j.allreduce.registered=false} keeps large all-reduces on the staged algorithm. */
    static final boolean ENABLED = Boolean.parseBoolean(System.getProperty("mooncake4j.allreduce.registered", "true"));

    private final CollectiveContext c;
    private final SharedMemory shared;
    private final MemorySegment body;
    private final MemorySegment[] src, scr, desc;
    private final long[] srcOff, scrOff;
    private final long[][] stripeOff;
    private final long[][] cacheId;
    private final MemorySegment[][] cacheMem;
    private final int[] cacheNext;
    private SharedMemory.Region scratch;
    private Stripes stripes;
    private final Stripes.Task reduceTask = this::reduceStripe, gatherTask = this::gatherStripe;
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
        if (mine) ensureScratch(2 * half);
        long parity = (c.opSeq & 1) * half;
        body.set(LONG, 8L * D_OPCODE, c.op.ordinal());
        body.set(LONG, 8L * D_INPUT, mine ? in.id() : -1);
        body.set(LONG, 8L * D_INPUT_OFF, mine ? data.address() - in.start() : 0);
        body.set(LONG, 8L * D_BYTES, bytes);
        body.set(LONG, 8L * D_SCRATCH, mine ? scratch.id() : -1);
        body.set(LONG, 8L * D_SCRATCH_OFF, parity);
        body.set(LONG, 8L * D_KIND, kind(dtype, op));
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
            scr[i] = peerRegion(p, d.get(LONG, 8L * D_SCRATCH));
            scrOff[i] = d.get(LONG, 8L * D_SCRATCH_OFF);
            if (srcOff[i] < 0 || srcOff[i] + bytes > src[i].byteSize() || scrOff[i] < 0 || scrOff[i] + half > scr[i].byteSize()) {
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
        stripes().run(reduceTask, stripesFor(myBytes));
        for (int p : m) if (p != c.rank) c.ch.describe(p, reduced, null, c.deadline);
        for (int p : m) {
            if (p != c.rank && c.ch.awaitDescription(p, reduced, c.deadline) == null) throw otherAlgorithm(p, bytes);
        }
        // every part is complete in shared memory: the tensor may now be overwritten
        stripes().run(gatherTask, stripesFor(bytes / n));
        this.data = null;
        return true;
    }

    /** One stripe of the reduction of my part, read from every member's tensor, into my scratch. */
    private void reduceStripe(int stripe, int stripes) {
        long len = AllReduce.partLen(count, n, me);
        long s0 = AllReduce.partStart(len, stripes, stripe), sl = AllReduce.partLen(len, stripes, stripe);
        long base = (AllReduce.partStart(count, n, me) + s0) * es;
        long[] off = stripeOff[stripe];
        for (int i = 0; i < n; i++) off[i] = srcOff[i] + base;
        Reduction.reduce(dtype, op, src, off, n, scr[me], scrOff[me] + s0 * es, sl);
    }

    /** One stripe of the gather: the same slice of every member's part, from its scratch into my tensor. */
    private void gatherStripe(int stripe, int stripes) {
        for (int j = 0; j < n; j++) {
            long len = AllReduce.partLen(count, n, j);
            long s0 = AllReduce.partStart(len, stripes, stripe), sl = AllReduce.partLen(len, stripes, stripe);
            if (sl == 0) continue;
            MemorySegment.copy(scr[j], scrOff[j] + s0 * es, data, (AllReduce.partStart(count, n, j) + s0) * es, sl * es);
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
