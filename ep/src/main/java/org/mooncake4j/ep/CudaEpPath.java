package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.cuda.CudaDevice;
import org.mooncake4j.cuda.CudaEvent;
import org.mooncake4j.cuda.CudaFunction;
import org.mooncake4j.cuda.CudaModule;
import org.mooncake4j.cuda.CudaStream;
import org.mooncake4j.cuda.DeviceBuffer;
import org.mooncake4j.cuda.KernelArgs;
import org.mooncake4j.cuda.PinnedHostMemory;
import org.mooncake4j.cuda.SymmetricHeap;
import org.mooncake4j.pg.PeerFailureException;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.gpu.StoreExchange;

/**
 * The CUDA data path: the kernels of {@code ep.cu} (see the protocol at the top of that file) on one
 * stream owned by the path, over an EP buffer of {@link EpLayout} placed at
 * {@link SymmetricHeap.Layout#DATA_OFFSET} of a {@link SymmetricHeap} that every rank of the group maps
 * (NVLink). The four {@link EpDataPath} methods only queue kernels; {@link #mark()} queues a host
 * ticket and {@link #await} polls it with a deadline (never an unbounded wait in the driver).
 * {@link #checkDispatch}/{@link #checkCombine} then turn what the kernels reported into exceptions:
 * a source that timed out with {@code timeoutUs = -1} fails the call with {@link PeerFailureException}
 * (it is already 0 in the device-side activeRanks), inconsistent counts or rows with
 * {@link IllegalStateException}.
 *
 * <p>Two kernels per operation (send, receive); the receive kernel's last block stores the host ticket
 * that {@link #mark()} hands out, so a call costs two launches and a poll. Private device scratch
 * (grown to the largest shape seen): see {@link Scratch}. The phase methods and {@link #mark()}
 * are synchronized: a receive hook may queue on the caller's thread while the next operation's send
 * is queued on another.
 */
final class CudaEpPath implements EpDataPath, AutoCloseable {
    static final int THREADS = 512;
    static final int WARPS_PER_BLOCK = THREADS / 32;
    /** Status slots per kind of wait (dispatch receive, combine receive, reduced combine send), indexed by sequence number. */
    static final int STATUS_SLOTS = 16;
    static final int STATUS_KINDS = 3;
    /** Dynamic shared memory a block may use without opting in. */
    static final int MAX_SHARED_BYTES = 48 * 1024;
    /** The four kernels, in the order of their block counters and of {@link #profileReport()}. */
    static final int K_DISPATCH_SEND = 0, K_DISPATCH_RECEIVE = 1, K_COMBINE_SEND = 2, K_COMBINE_RECEIVE = 3;
    private static final VarHandle LONG = ValueLayout.JAVA_LONG.varHandle();
    // host-mapped status words (u64): [0] done ticket, [1] error code, [2] error detail,
    // [8 + 2 * (kind * STATUS_SLOTS + slot)] {seq, missing mask}, kind 0 dispatch receive, 1 combine receive, 2 reduced combine send
    private static final long ERROR = 8, ERROR_DETAIL = 16, WAIT_STATUS = 64;
    /**
     * Profiling: per kernel kind, 16 u64 of device memory (see stamp() in ep.cu): start, launches,
     * points 2..6, then (dispatch receive, profile=pdl) when each source's counts arrived and when its
     * block 0 started.
     */
    static final int STAMP_WORDS = 16;
    /** Profiling: the timed points per kernel kind, 2..6, in {@link #profileReport()}. */
    static final int STAMP_POINTS = 5;

    final CudaDevice device;
    final Device tensorDevice;
    private final int rank;
    private final int numRanks;
    private final Duration groupTimeout;
    private final CudaModule module;
    private final CudaStream stream;
    private final SymmetricHeap heap;
    private final long epBase;
    private final long capacity;
    private final PinnedHostMemory status;
    private final CudaFunction dispatchSend, dispatchRecv, combineSend, combineSendReduced, combineRecv, hostSignal;
    private DeviceBuffer scratch;
    /** Profiling only: the kernels' time stamps (see {@link #stamps}). */
    private DeviceBuffer stampBuffer;
    private Scratch at;
    private long ticket;
    /** Whether the last kernel queued stores {@link #ticket} into the done word when it finishes. */
    private boolean ticketQueued;
    /** The kind of the last kernel queued on the stream (one of the {@code K_} kinds), or -1 after anything else. */
    private int lastQueued = -1;
    private boolean closed;
    /** With -Dmooncake4j.ep.profile=true: the kernels queued since the last {@link #profileReport()}. */
    private final List<Sample> profile = PROFILE_MODE.equals("true") || PROFILE_MODE.equals("pdl") ? new ArrayList<>() : null;
    /**
     * -Dmooncake4j.ep.profile=pdl: the time stamps only, kernels queued as in production (receive
     * kernels started early, no events between kernels); the dispatch receive's points then count from
     * the dispatch send's start.
     */
    private final boolean profileWithPdl = PROFILE_MODE.equals("pdl");
    /**
     * Fault injection for the GPU checks ({@link #WITHHOLD_ROW_FLAGS}): this rank's dispatch sends its
     * counts and rows but never the rows' flags, like a rank that dies while its rows are in flight.
     */
    private final boolean withholdRowFlags = Boolean.getBoolean(WITHHOLD_ROW_FLAGS);

    /** -Dmooncake4j.ep.profile: false, true (events around every kernel and time stamps) or pdl. */
    private static final String PROFILE_MODE = System.getProperty("mooncake4j.ep.profile", "false");

    /** The system property that turns on {@link #withholdRowFlags} (test only). */
    static final String WITHHOLD_ROW_FLAGS = "mooncake4j.ep.fault.withholdRowFlags";

    /**
     * Offsets into the private scratch buffer for a shape: four block counters (one per kernel), the
     * reduced combine send's and the dispatch receive's words of late sources, the two decision words of the receive kernels
     * (dispatch, combine), the per-expert send counts, the ranks each dispatch sent to (two slots), the
     * rows used per (expert, source), each received row's source and token, the row of each (source,
     * token, top-k slot) for the reduced combine ({int32 row, int32 dispatch seq}), and one message per
     * token for the FP8 quantization.
     */
    record Scratch(long counters, long decisions, long sendCount, long sentTo, long used, long rowSrcToken, long slotRows, long messages,
                   long bytes, int topK) {
        static Scratch of(int numRanks, int numExperts, int maxTokens, long messageBytes, int topK) {
            long off = 0;
            long counters = off;
            off += 64;
            long decisions = off;
            off += 64;
            long sendCount = off;
            off = align(off + 4L * numExperts);
            long sentTo = off;
            off = align(off + 8L * numRanks);
            long used = off;
            off = align(off + 4L * numExperts);
            long rows = off;
            off = align(off + 4L * numExperts * maxTokens);
            long slotRows = off;
            off = align(off + 8L * numRanks * maxTokens * topK);
            long messages = off;
            off = align(off + messageBytes * maxTokens);
            return new Scratch(counters, decisions, sendCount, sentTo, used, rows, slotRows, messages, off, topK);
        }

        /** The reduced combine send's mask of sources whose table did not arrive (reset by the kernel). */
        long late() { return counters + 32; }

        /** The dispatch receive's mask of sources with a row that did not land in time (reset by the kernel). */
        long dispatchLate() { return counters + 40; }

        private static long align(long v) { return (v + 255) / 256 * 256; }

        /** The block counter of one kernel (one of the four {@code K_} kinds). */
        long counter(int kernel) { return counters + 4L * kernel; }

        /** The decision word of a receive kernel: 0 for the dispatch, 1 for the combine. */
        long decision(int kind) { return decisions + 8L * kind; }
    }

    /**
     * Creates the symmetric EP buffers of the group on {@code deviceOrdinal}: collective over every rank
     * of the group, through its store, with the group's timeout.
     *
     * @throws org.mooncake4j.cuda.CudaUnavailableException without a driver, or when the kernels were not built
     */
    CudaEpPath(ProcessGroup group, long numBytes, int deviceOrdinal, int generation) {
        this.rank = group.rank();
        this.numRanks = group.worldSize();
        this.groupTimeout = group.timeout();
        this.device = CudaDevice.get(deviceOrdinal);
        this.tensorDevice = Device.cuda(deviceOrdinal);
        this.module = CudaModule.loadKernels(device);
        this.dispatchSend = module.function("ep_dispatch_send");
        this.dispatchRecv = module.function("ep_dispatch_recv");
        this.combineSend = module.function("ep_combine_send");
        this.combineSendReduced = module.function("ep_combine_send_reduced");
        this.combineRecv = module.function("ep_combine_recv");
        this.hostSignal = module.function("ep_host_signal");
        this.epBase = SymmetricHeap.Layout.DATA_OFFSET;
        this.capacity = numBytes;
        long heapBytes = Math.max(epBase + numBytes, SymmetricHeap.Layout.minimumHeapBytes());
        StoreExchange exchange = StoreExchange.ofWorld(group.store(), group.name() + "/ep/" + generation, rank, numRanks, group.timeout());
        CudaStream s = null;
        PinnedHostMemory st = null;
        SymmetricHeap h = null;
        try {
            s = CudaStream.create(device);
            st = PinnedHostMemory.allocate(device, WAIT_STATUS + 2L * 8 * STATUS_KINDS * STATUS_SLOTS);
            st.segment().fill((byte) 0);
            h = SymmetricHeap.create(device, rank, numRanks, heapBytes, exchange);
            // zero this rank's signal words before any peer can signal into them (the barrier below)
            s.fill(h.pointer(rank) + epBase, (byte) 0, EpLayout.signalBytes(numRanks));
        } catch (RuntimeException e) {
            if (h != null) h.close();
            if (st != null) st.close();
            if (s != null) s.close();
            throw e;
        }
        this.stream = s;
        this.status = st;
        this.heap = h;
        try {
            await(mark(), 0, "EpBuffer setup");
        } catch (RuntimeException e) {
            close();
            throw e;
        }
        group.barrier();
        // only now has every rank read the exchange's last round (deleting this rank's key right after
        // create() left a slower rank waiting for it until the timeout)
        exchange.forgetLastRound();
    }

    /** The membership token handles are checked against. */
    Object membership() { return heap; }

    long capacity() { return capacity; }

    CudaStream stream() { return stream; }

    /** Device address of offset {@code offset} of this rank's EP buffer. */
    long address(long offset) { return heap.pointer(rank) + epBase + offset; }

    Tensor view(long offset, org.mooncake4j.core.DType dtype, long... shape) {
        return Tensor.wrapDevice(address(offset), device.ordinal(), dtype, shape);
    }

    // ---- the four phases (queue only) ---------------------------------------------------------

    @Override
    public synchronized void dispatchSend(Dispatch op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        rowTableBytes(lay); // refuses shapes the receive kernels cannot take before anything is sent
        ensureScratch(lay, h.topK);
        long base = scratch.pointer();
        int blocks = Math.max(1, Math.min(h.numTokens, 2 * device.multiprocessorCount()));
        KernelArgs a = KernelArgs.begin().ptr(op.x().devicePointer()).ptr(op.topkIdx().devicePointer()).ptr(op.activeRanks().devicePointer())
                .ptr(heap.pointerTable()).u64(epBase).i32(rank).i32(numRanks).i32(lay.localExperts()).i32(h.numTokens).i32(h.topK)
                .i32(lay.hidden()).i32(lay.maxTokens()).i32(h.fp8 ? 1 : 0).u64(h.seq).u64(lay.counts()).u64(lay.staging())
                .u64(lay.messageBytes()).ptr(base + at.sendCount()).ptr(base + at.sentTo()).ptr(base + at.counter(K_DISPATCH_SEND))
                .ptr(base + at.messages()).i32(dedup(lay) ? 1 : 0);
        int table = sendTableBytes(h.numTokens, h.topK, lay);
        a.i32(table > 0 ? 1 : 0).ptr(stamps(K_DISPATCH_SEND)).i32(withholdRowFlags ? 0 : 1);
        launch(K_DISPATCH_SEND, dispatchSend, blocks, table, a, false);
    }

    @Override
    public synchronized void dispatchReceive(Dispatch op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        long base = scratch.pointer();
        long t = ++ticket;
        KernelArgs a = KernelArgs.begin().ptr(address(0)).ptr(op.activeRanks().devicePointer()).ptr(base + at.used()).ptr(base + at.rowSrcToken())
                .i32(numRanks).i32(lay.localExperts()).i32(lay.maxTokens()).i32(lay.hidden()).i32(h.fp8 ? 1 : 0).u64(h.seq)
                .u64(lay.counts()).u64(lay.recvCount()).u64(lay.staging()).u64(lay.messageBytes()).u64(lay.recvX()).u64(lay.recvScales())
                .ptr(status.devicePointer() + ERROR).ptr(base + at.decision(0)).u64(waitNanos(op.timeoutUs(), groupTimeout))
                .ptr(status.devicePointer() + statusOffset(0, h.seq)).ptr(base + at.counter(K_DISPATCH_RECEIVE)).ptr(status.devicePointer()).u64(t)
                .i32(dedup(lay) ? 1 : 0).ptr(stamps(K_DISPATCH_RECEIVE)).i32(at.topK()).ptr(base + at.slotRows()).ptr(base + at.dispatchLate()).ptr(profileWithPdl ? stamps(K_DISPATCH_SEND) : 0);
        launch(K_DISPATCH_RECEIVE, dispatchRecv, device.multiprocessorCount(), rowTableBytes(lay), a, true);
    }

    @Override
    public synchronized void combineSend(Combine op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        long base = scratch.pointer();
        if (reducedCombine(lay, h.topK, op.x().devicePointer())) {
            long sentTo = base + at.sentTo() + 4L * numRanks * (h.seq & 1);
            KernelArgs a = KernelArgs.begin().ptr(op.x().devicePointer()).ptr(op.activeRanks().devicePointer()).ptr(heap.pointerTable())
                    .u64(epBase).i32(rank).i32(numRanks).i32(lay.localExperts()).i32(lay.maxTokens()).i32(lay.hidden()).i32(h.topK)
                    .i32(h.numTokens).u64(op.seq()).u64(h.seq).ptr(base + at.slotRows()).ptr(op.topkIdx().devicePointer())
                    .ptr(op.topkWeights().devicePointer()).ptr(sentTo).u64(lay.combineRecv()).u64(reducedTable(lay))
                    .u64(waitNanos(op.timeoutUs(), groupTimeout)).ptr(base + at.late()).ptr(status.devicePointer() + statusOffset(2, op.seq()))
                    .ptr(base + at.counter(K_COMBINE_SEND)).ptr(stamps(K_COMBINE_SEND));
            int blocks = 2 * device.multiprocessorCount();
            a.i32(reducedParts(blocks * WARPS_PER_BLOCK, numRanks, lay.maxTokens()));
            launch(K_COMBINE_SEND, combineSendReduced, blocks, 0, a, false);
            return;
        }
        KernelArgs a = KernelArgs.begin().ptr(op.x().devicePointer()).ptr(op.activeRanks().devicePointer()).ptr(heap.pointerTable())
                .u64(epBase).i32(rank).i32(numRanks).i32(lay.localExperts()).i32(lay.maxTokens()).i32(lay.hidden()).u64(op.seq())
                .ptr(base + at.used()).ptr(base + at.rowSrcToken()).u64(lay.combineRecv()).ptr(base + at.counter(K_COMBINE_SEND))
                .ptr(stamps(K_COMBINE_SEND));
        launch(K_COMBINE_SEND, combineSend, 2 * device.multiprocessorCount(), rowTableBytes(lay), a, false);
    }

    @Override
    public synchronized void combineReceive(Combine op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        long base = scratch.pointer();
        long sentTo = base + at.sentTo() + 4L * numRanks * (h.seq & 1);
        long t = ++ticket;
        long items = (long) h.numTokens * Math.max(1, lay.hidden() / 8);
        int blocks = (int) Math.max(1, Math.min(ceilDiv(items, THREADS), 4L * device.multiprocessorCount()));
        KernelArgs a = KernelArgs.begin().ptr(address(0)).ptr(op.topkIdx().devicePointer()).ptr(op.topkWeights().devicePointer())
                .ptr(op.activeRanks().devicePointer()).ptr(sentTo).ptr(op.out().devicePointer()).i32(h.numTokens).i32(h.topK)
                .i32(numRanks).i32(lay.localExperts()).i32(lay.maxTokens()).i32(lay.hidden()).u64(lay.combineRecv()).u64(op.seq())
                .ptr(base + at.decision(1)).u64(waitNanos(op.timeoutUs(), groupTimeout))
                .ptr(status.devicePointer() + statusOffset(1, op.seq())).ptr(base + at.counter(K_COMBINE_RECEIVE)).ptr(status.devicePointer()).u64(t)
                .ptr(stamps(K_COMBINE_RECEIVE)).i32(reducedCombine(lay, h.topK, op.x().devicePointer()) ? 1 : 0)
                .ptr(profileWithPdl ? stamps(K_COMBINE_SEND) : 0);
        launch(K_COMBINE_RECEIVE, combineRecv, blocks, 0, a, true);
    }

    /**
     * Queues one of the four kernels ({@code kind}) with {@link #THREADS} threads a block; a receive
     * kernel ({@code carriesTicket}) stores {@link #ticket} into the done word as it finishes. With
     * profiling on, events are recorded around it.
     */
    private void launch(int kind, CudaFunction f, int blocks, int sharedBytes, KernelArgs a, boolean carriesTicket) {
        CudaEvent before = null, after = null;
        boolean events = profile != null && !profileWithPdl;
        if (events) {
            before = CudaEvent.create(device, true);
            after = CudaEvent.create(device, true);
            before.record(stream);
        }
        if (dependentLaunch(lastQueued, kind, events)) {
            f.launchDependent(stream, blocks, THREADS, sharedBytes, a);
        } else {
            f.launch(stream, blocks, 1, 1, THREADS, 1, 1, sharedBytes, a);
        }
        if (events) {
            after.record(stream);
            profile.add(new Sample(kind, before, after));
        }
        ticketQueued = carriesTicket;
        lastQueued = kind;
    }

    /** With -Dmooncake4j.ep.pdl=false every kernel waits for the one before it to finish (for comparisons). */
    private static final boolean PDL = !"false".equals(System.getProperty("mooncake4j.ep.pdl"));

    /**
     * Whether a kernel of kind {@code kind} is queued as a programmatic dependent of the kernel just
     * queued ({@code previous}): a receive kernel right after its own phase's send kernel (the same
     * call, no hook in between: a hook's receive follows a {@link #mark()}). Its blocks then start
     * while the send kernel still runs, as soon as every send block has started (ep.cu's
     * allow_dependents), and wait for the peers' sequence words as before: a receive kernel reads
     * nothing that the send kernel before it writes except through those words. A send kernel queued
     * right after the other phase's receive kernel is a dependent too, but its blocks first wait for
     * that kernel to finish (ep.cu's wait_prerequisites): only the launch overlaps. Not while profiling
     * with events (the events between the kernels would separate them).
     */
    static boolean dependentLaunch(int previous, int kind, boolean profiling) {
        if (!PDL || profiling) return false;
        return (previous == K_DISPATCH_SEND && kind == K_DISPATCH_RECEIVE) || (previous == K_COMBINE_SEND && kind == K_COMBINE_RECEIVE)
                || (previous == K_DISPATCH_RECEIVE && kind == K_COMBINE_SEND) || (previous == K_COMBINE_RECEIVE && kind == K_DISPATCH_SEND);
    }

    /** The device address of a kernel kind's profiling stamps when profiling, else 0 (the kernels skip them). */
    private long stamps(int kind) {
        if (profile == null) return 0;
        if (stampBuffer == null) {
            stampBuffer = DeviceBuffer.allocate(device, 4L * 8 * STAMP_WORDS);
            stream.fill(stampBuffer.pointer(), (byte) 0, stampBuffer.size());
        }
        return stampBuffer.pointer() + 8L * STAMP_WORDS * kind;
    }

    /** One profiled kernel: its kind and the events recorded before and after it. */
    private record Sample(int kind, CudaEvent before, CudaEvent after) {}

    /**
     * With profiling on, since the last call: [0..3] the mean microseconds from the event before to the
     * event after each kind of kernel (dispatch send, dispatch receive, combine send, combine receive);
     * then, per kind, 5 values: the mean microseconds from block 0's start to the points 2..6 of that
     * kernel ({@code stamp} in ep.cu; 0 where the kernel has no such point): dispatch send: prologue
     * done, first token's rows and message ready, block 0's stores done, last block known, flags
     * released; dispatch receive: sources arrived, row table ready, block 0's copies done, last block
     * known; combine send: -, row table ready, block 0's copies done, last block known, flags released
     * (reduced combine: block 0's table published, block 0's sources' tables arrived, block 0's partial
     * rows stored, last block known, flags released);
     * combine receive: sources arrived, -, block 0's sums done, last block known. With
     * -Dmooncake4j.ep.profile=pdl the kernels are queued as in production (no events: [0..3] are 0) and
     * the dispatch receive's points (sources' counts arrived, row table ready, block 0's rows copied,
     * last block known, done) count from the dispatch send's block 0 start, the combine receive's
     * (sources arrived, -, block 0's sums done, last block known, done) from the combine send's, and
     * 8 more values follow:
     * when each source's counts word arrived (sources 0..6) and when the receive's block 0 started,
     * from the same start. Then forgets them.
     * Null without profiling.
     */
    synchronized double[] profileReport() {
        if (profile == null) return null;
        await(mark(), 0, "EpBuffer kernel profile");
        double[] out = new double[4 + 4 * STAMP_POINTS + 8];
        int[] count = new int[4];
        for (Sample p : profile) {
            out[p.kind()] += 1000.0 * CudaEvent.elapsedMillis(p.before(), p.after());
            count[p.kind()]++;
            p.before().close();
            p.after().close();
        }
        profile.clear();
        for (int k = 0; k < 4; k++) out[k] = count[k] == 0 ? 0 : out[k] / count[k];
        if (stampBuffer != null) {
            try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
                MemorySegment host = arena.allocate(stampBuffer.size(), 8);
                stream.copyDeviceToHost(stampBuffer.pointer(), host, stampBuffer.size());
                stream.fill(stampBuffer.pointer(), (byte) 0, stampBuffer.size());
                await(mark(), 0, "EpBuffer kernel profile");
                for (int k = 0; k < 4; k++) {
                    long n = host.getAtIndex(ValueLayout.JAVA_LONG, k * STAMP_WORDS + 1);
                    for (int i = 0; i < STAMP_POINTS; i++) {
                        long ns = host.getAtIndex(ValueLayout.JAVA_LONG, k * STAMP_WORDS + 2 + i);
                        out[4 + k * STAMP_POINTS + i] = n == 0 ? 0 : ns / 1000.0 / n;
                    }
                }
                long n = host.getAtIndex(ValueLayout.JAVA_LONG, K_DISPATCH_RECEIVE * STAMP_WORDS + 1);
                for (int i = 0; i < 8; i++) {
                    long ns = host.getAtIndex(ValueLayout.JAVA_LONG, K_DISPATCH_RECEIVE * STAMP_WORDS + 8 + i);
                    out[4 + 4 * STAMP_POINTS + i] = n == 0 ? 0 : ns / 1000.0 / n;
                }
            }
        }
        return out;
    }

    /** With -Dmooncake4j.ep.dedup=false every dispatched row crosses NVLink on its own (for comparisons). */
    private static final boolean DEDUP = !"false".equals(System.getProperty("mooncake4j.ep.dedup"));

    /**
     * Whether a dispatch of this shape sends each token once per destination rank (see "Deduplicated
     * dispatch" in ep.cu): it needs two local experts or more (the payload slots and the header table
     * lie in different blocks of the source's staging messages) and a header table of 16 bytes per
     * local expert and token that fits in one block of M messages.
     */
    static boolean dedup(EpLayout lay) {
        return DEDUP && lay.localExperts() >= 2 && 16L * lay.localExperts() <= lay.messageBytes();
    }

    /** With -Dmooncake4j.ep.reducedCombine=false every selection's expert row crosses NVLink on its own (for comparisons). */
    private static final boolean REDUCED_COMBINE = !"false".equals(System.getProperty("mooncake4j.ep.reducedCombine"));

    /**
     * Whether a combine of this shape sends one partial row per (token, expert rank) instead of one row
     * per selection (ep_combine_send_reduced): it needs the expert outputs {@code x} 16-byte aligned,
     * hidden a multiple of 8, top-k and the ranks at most 32, and room in combineRecv behind the R * M
     * partial rows for every source's {expert, weight} table of M * topK entries: R * (2H + 8 topK) <=
     * 2 E H. Both ways give the same bits (the partials are the arithmetic of every path).
     */
    static boolean reducedCombine(EpLayout lay, int topK, long x) {
        long r = lay.numRanks(), h = lay.hidden();
        return REDUCED_COMBINE && (x & 15) == 0 && h % 8 == 0 && topK <= 32 && r <= 32
                && r * (2 * h + 8L * topK) <= 2L * lay.numExperts() * h && (long) lay.numExperts() * lay.maxTokens() <= Integer.MAX_VALUE;
    }

    /**
     * Warps per (source, token) of the reduced combine send: about one task per warp of the grid (the
     * tasks are R * M * parts), from 1 to 16.
     */
    static int reducedParts(int warps, int numRanks, int maxTokens) {
        return (int) Math.max(1, Math.min(16, warps / ((long) numRanks * maxTokens)));
    }

    /** Offset of the reduced combine's {expert, weight} tables in the EP buffer: right after the R * M partial rows of combineRecv. */
    static long reducedTable(EpLayout lay) { return lay.combineRecv() + 2L * lay.numRanks() * lay.maxTokens() * lay.hidden(); }

    /** With -Dmooncake4j.ep.sendTable=false the dispatch send kernel reads the top-k table from global memory (for comparisons). */
    private static final boolean SEND_TABLE = !"false".equals(System.getProperty("mooncake4j.ep.sendTable"));

    /**
     * The dynamic shared memory of the dispatch send kernel's table mode ({@code table_layout} in
     * ep.cu: the top-k table as int16 expert ids, the message being built, the per-expert counts), or 0
     * when it does not fit in {@link #MAX_SHARED_BYTES} or the expert ids do not fit in int16: the
     * kernel then reads the table from global memory and counts with atomics.
     */
    static int sendTableBytes(int numTokens, int topK, EpLayout lay) {
        if (!SEND_TABLE || lay.numExperts() > Short.MAX_VALUE) return 0;
        long message = (2L * numTokens * topK + 15) & ~15L;
        long counts = message + ((lay.messageBytes() + 15) & ~15L);
        long bytes = counts + 4L * lay.numExperts();
        return bytes <= MAX_SHARED_BYTES ? (int) bytes : 0;
    }

    /** Dynamic shared memory of the row-table kernels: the (expert, source) counts and the expert offsets. */
    static int rowTableBytes(EpLayout lay) {
        long bytes = 4L * ((long) lay.localExperts() * lay.numRanks() + lay.localExperts() + 1);
        if (bytes > MAX_SHARED_BYTES) {
            throw new IllegalArgumentException("numExperts " + lay.numExperts() + " is too many for the CUDA path of EpBuffer: its kernels keep"
                    + " 4 * (numExperts + numExperts / numRanks + 1) = " + bytes + " bytes of row table per block, more than the "
                    + MAX_SHARED_BYTES + " bytes of shared memory a block may use; use at most 10000 experts");
        }
        return (int) bytes;
    }

    /** The device-side bound of a wait: timeoutUs, or the group's timeout for -1. */
    static long waitNanos(long timeoutUs, Duration groupTimeout) {
        return timeoutUs < 0 ? groupTimeout.toNanos() : Math.multiplyExact(timeoutUs, 1000L);
    }

    static long statusOffset(int kind, long seq) { return WAIT_STATUS + 16L * (kind * STATUS_SLOTS + Math.floorMod(seq, STATUS_SLOTS)); }

    // ---- completion ---------------------------------------------------------------------------

    /**
     * A host ticket that the GPU reaches once the work queued so far is done: the ticket of the last
     * receive kernel when nothing was queued after it, else a new one queued now; {@link #await} it.
     */
    synchronized long mark() {
        if (ticketQueued) {
            ticketQueued = false;
            return ticket;
        }
        long t = ++ticket;
        hostSignal.launch(stream, 1, 1, KernelArgs.begin().ptr(status.devicePointer()).u64(t));
        lastQueued = -1;
        return t;
    }

    /**
     * How long {@link #await} spins before it parks between polls: a dispatch or combine takes tens of
     * microseconds, and a park lasts 50 us or more (Linux timer slack), longer than the operation.
     */
    static final long SPIN_NANOS = 2_000_000;

    /**
     * Polls until the GPU has reached {@code t} (spinning for {@link #SPIN_NANOS}, then parking); gives
     * up after the longest device-side wait ({@code timeoutUs}, or the group's timeout) plus the group's
     * timeout, with an exception.
     */
    void await(long t, long timeoutUs, String what) {
        MemorySegment words = status.segment();
        if ((long) LONG.getVolatile(words, 0L) >= t) return;
        long limit = waitNanos(timeoutUs, groupTimeout) + groupTimeout.toNanos();
        long start = System.nanoTime();
        while ((long) LONG.getVolatile(words, 0L) < t) {
            long waited = System.nanoTime() - start;
            if (waited > limit) {
                throw new IllegalStateException(what + " on rank " + rank + " (" + device + "): the GPU did not finish within "
                        + TimeUnit.NANOSECONDS.toMillis(limit) + " ms although every wait in its kernels is bounded; the GPU or a"
                        + " peer's NVLink mapping may be hung. Check nvidia-smi and the other ranks' logs.");
            }
            if (waited < SPIN_NANOS) Thread.onSpinWait();
            else LockSupport.parkNanos(20_000);
        }
    }

    /** After {@link #await}: the ranks the dispatch receive gave up on, and count/row inconsistencies. */
    void checkDispatch(Dispatch op) {
        checkErrors(op.handle().seq);
        checkMissing(0, op.handle().seq, op.timeoutUs(), "dispatch");
    }

    void checkCombine(Combine op) {
        checkMissing(2, op.seq(), op.timeoutUs(), "combine");
        checkMissing(1, op.seq(), op.timeoutUs(), "combine");
    }

    private void checkErrors(long seq) {
        MemorySegment w = status.segment();
        long code = (long) LONG.getVolatile(w, ERROR);
        if (code == 0) return;
        long detail = (long) LONG.getVolatile(w, ERROR_DETAIL);
        LONG.setVolatile(w, ERROR, 0L);
        int src = (int) (detail >>> 48);
        int mid = (int) ((detail >>> 24) & 0xffffff);
        int low = (int) (detail & 0xffffff);
        if (code == 1) {
            throw new IllegalStateException("dispatch #" + seq + " on rank " + rank + ": rank " + src + " reported " + low
                    + " tokens for local expert " + mid + ", outside [0, maxTokensPerRank]: the ranks disagree on maxTokensPerRank,"
                    + " numExperts or hidden. Pass the same values on every rank.");
        }
        throw new IllegalStateException("dispatch #" + seq + " on rank " + rank + ": row " + mid + " from rank " + src
                + " belongs to another dispatch: the ranks are not calling dispatch and combine in the same order."
                + " Call them alternately, in the same order, on every rank.");
    }

    private void checkMissing(int kind, long seq, long timeoutUs, String what) {
        MemorySegment w = status.segment();
        long off = statusOffset(kind, seq);
        if ((long) LONG.getVolatile(w, off) != seq) return;
        long mask = (long) LONG.getVolatile(w, off + 8);
        if (mask == 0 || timeoutUs >= 0) return;
        int[] ranks = ranksOf(mask);
        throw new PeerFailureException(what + " #" + seq + " on rank " + rank + " failed: rank" + (ranks.length > 1 ? "s " : " ")
                + join(ranks) + " did not send " + (ranks.length > 1 ? "their " : "its ") + what + " within the group timeout of "
                + groupTimeout.toMillis() + " ms. " + (ranks.length > 1 ? "They are" : "It is") + " now 0 in activeRanks. With timeoutUs = -1"
                + " a lost or hung rank is an error; check its logs, and pass timeoutUs >= 0 to have " + what + " go on without ranks that fail.",
                ranks);
    }

    static int[] ranksOf(long mask) {
        List<Integer> r = new ArrayList<>();
        for (int i = 0; i < 64; i++) if ((mask >>> i & 1) != 0) r.add(i);
        return r.stream().mapToInt(Integer::intValue).toArray();
    }

    private static String join(int[] ranks) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < ranks.length; i++) b.append(i == 0 ? "" : ", ").append(ranks[i]);
        return b.toString();
    }

    private void ensureScratch(EpLayout lay, int topK) {
        Scratch need = Scratch.of(numRanks, lay.numExperts(), lay.maxTokens(), lay.messageBytes(), Math.min(topK, 32));
        if (scratch != null && at.equals(need)) return;
        if (scratch != null) {
            await(mark(), 0, "EpBuffer scratch resize");
            scratch.close();
            scratch = null;
        }
        DeviceBuffer b = DeviceBuffer.allocate(device, need.bytes());
        try {
            stream.fill(b.pointer(), (byte) 0, need.bytes()); // ordered before the kernels that use it
        } catch (RuntimeException e) {
            b.close();
            throw e;
        }
        scratch = b;
        at = need;
    }

    static int ceilDiv(int a, int b) { return (a + b - 1) / b; }

    static long ceilDiv(long a, long b) { return (a + b - 1) / b; }

    /** Waits for queued work (bounded), then frees the heap, scratch, status and stream. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        try {
            await(mark(), 0, "EpBuffer close");
        } finally {
            if (scratch != null) scratch.close();
            if (stampBuffer != null) stampBuffer.close();
            heap.close();
            status.close();
            stream.close();
            module.close();
        }
    }
}
