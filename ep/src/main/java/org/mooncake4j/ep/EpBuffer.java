package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.ProcessGroup;

/**
 * The expert-parallel dispatch/combine buffer (DeepEP's low-latency mode, Mooncake EP's {@code Buffer}):
 * a segment per rank registered with the group's transfer engine, into which peers write tokens
 * directly, plus an EP-level {@code activeRanks} tensor through which dispatch and combine report ranks
 * that failed or did not arrive within {@code timeoutUs}.
 *
 * <p><b>Shapes.</b> {@code numRanks} is the group's {@link ProcessGroup#worldSize() world size};
 * {@code numLocalExperts = numExperts / numRanks}; expert {@code e} lives on rank
 * {@code e / numLocalExperts} as its local expert {@code e % numLocalExperts}.
 *
 * <p><b>Layout of the dispatch result</b> (DeepEP's low-latency layout): {@code recvX} is
 * {@code [numLocalExperts, numRanks * maxTokensPerRank, hidden]}. The valid rows of local expert
 * {@code j} are packed at the front of its block: rows {@code [0, recvCount[j])}, made of the tokens
 * of source rank 0 that selected the expert, then those of rank 1, and so on, each source's tokens in
 * ascending token order. Rows from {@code recvCount[j]} on are left over from earlier dispatches.
 * With FP8, {@code recvX} holds e4m3 values and {@code recvScales[j, p, b]} the float32 scale of
 * channels {@code [128 b, 128 b + 128)} of row p: {@code x = e4m3 * scale}, with
 * {@code scale = amax / 448} over those channels of the token (1 when they are all zero) and the value
 * {@code x / scale} rounded to nearest even, saturating at ±448. A token that selects the same expert
 * in two top-k slots is sent once.
 *
 * <p><b>Combine</b> takes the expert outputs in the same layout (bf16) and returns, per token, the
 * weighted sum of its selections' expert outputs over the slots whose expert id is not -1 and whose
 * rank is active, computed as: for each such expert rank {@code r}, in rank order, the partial
 * {@code p = p + w[k] * y[k]} in float32 over {@code r}'s slots in top-k slot order, rounded to
 * bfloat16; {@code acc = acc + p} in float32; {@code acc} rounded to bfloat16. A token with no such slot
 * gets zeros. Every path gives these bits. The CUDA path forms each partial on the expert's rank and
 * sends one row per (token, rank) back instead of one per selection (the tokens' top-k ids and weights
 * go the other way first, 8 bytes per selection); that halves the bytes a 4-rank combine moves over
 * NVLink with top-8. The partial's rounding adds at most one bf16 rounding per rank to the result (as
 * when the experts of one rank are summed before a cross-rank reduction).
 *
 * <p><b>Failures.</b> A rank that is 0 in {@code activeRanks} is neither sent to nor waited for. A
 * rank whose data does not arrive within {@code timeoutUs} (from the start of the receive), or whose
 * engine is found gone, is set to 0 in {@code activeRanks} and treated as having sent nothing: its
 * tokens are absent from {@code recvX} and {@code recvCount}, and combine skips the selections of its
 * experts. {@code timeoutUs = -1} drops no rank for being late; a rank found gone, or one that has not
 * arrived within the process group's timeout (the bound on every wait), then fails the call with
 * {@link org.mooncake4j.pg.PeerFailureException} (after being set to 0). Every message carries the
 * dispatch (or combine) sequence number, so a late write from an earlier round is never taken for the
 * current one. Ranks call dispatch and combine alternately, in the same order.
 *
 * <p><b>Asynchrony (CPU path).</b> Without {@code asyncFinish} the work is done when the call returns.
 * With {@code asyncFinish} it runs on the buffer's background thread and {@code event.currentStreamWait()}
 * waits for it. With {@code returnRecvHook} the call does only the send and returns a hook that, when
 * run (on the caller's thread, once), waits for the peers and completes the receive: send, overlap
 * other work, then run the hook. The event then covers the send only.
 *
 * <p><b>CUDA path.</b> {@link #EpBuffer(ProcessGroup, long, Device)} with {@code Device.cuda(n)} runs
 * dispatch and combine as kernels ({@code ep.cu} in mooncake4j-cuda) that store straight into the
 * peers' buffers over NVLink (one GPU per rank, the ranks of one host). Every tensor of a call is on
 * that device, including {@code activeRanks}, which the kernels update; results are on it too. The
 * kernels queue on the buffer's stream ({@link #cudaStream()}); a blocking call waits for them with a
 * deadline. With {@code asyncFinish} the call returns once the kernels are queued and
 * {@code event.currentStreamWait()} waits for them and reports failures; with {@code returnRecvHook}
 * the hook queues the receive kernels and waits. Results are bit-identical to the CPU path. Expert ids
 * outside {@code [0, numExperts)} are not checked on the GPU: they are skipped like -1.
 *
 * <p><b>Sizing.</b> {@link #sizeHint} gives the bytes a dispatch of a given shape needs, on either
 * path (the CUDA path places the same layout in device memory); a dispatch that needs more than the
 * buffer has fails with both numbers. One buffer per group at a time.
 *
 * <p>Threading: one thread calls a buffer's methods at a time; results are views into the buffer's
 * segment, valid until the next dispatch (recvX, recvScales, recvCount) or the next combine buffer
 * use. {@code activeRanks} is written by the thread that runs the receive.
 */
public final class EpBuffer implements AutoCloseable {
    private static final Set<ProcessGroup> OPEN = ConcurrentHashMap.newKeySet();

    private final ProcessGroup group;
    private final long numBytes;
    private final Device device;
    private final EpDataPath path;
    /** The CPU path's segments; null on the CUDA path. */
    private volatile EpSegments segments;
    /** The CUDA path; null on the CPU path. */
    private volatile CudaEpPath cuda;
    private int cudaGeneration;
    private long dispatchSeq;
    private long combineSeq;
    private CompletableFuture<Void> lastWork = CompletableFuture.completedFuture(null);
    private ExecutorService background;
    private boolean closed;

    /**
     * Registers this rank's segment and opens every active member's; collective over the group's
     * active ranks (each must create its buffer).
     *
     * @param numEpBufferBytes the segment size: {@link #sizeHint} for the largest dispatch shape
     */
    public EpBuffer(ProcessGroup group, long numEpBufferBytes) {
        this(group, numEpBufferBytes, Device.CPU);
    }

    /**
     * A buffer whose data path runs on {@code device}: {@link Device#CPU} for the CPU path, or
     * {@code Device.cuda(n)} for the CUDA path (kernels over NVLink, every rank one GPU of one host,
     * at most {@link org.mooncake4j.cuda.SymmetricHeap#MAX_RANKS} ranks). On the CUDA path every tensor
     * passed to dispatch and combine must be on that device, and the results are on it. Collective
     * over the group's ranks (for CUDA: all {@code worldSize} ranks, which swap device-memory handles
     * through the group's store).
     *
     * @throws org.mooncake4j.cuda.CudaUnavailableException for a CUDA device when there is no NVIDIA
     *         driver or the kernels were not built into the mooncake4j-cuda jar
     */
    public EpBuffer(ProcessGroup group, long numEpBufferBytes, Device device) {
        if (group == null) throw new IllegalArgumentException("EpBuffer needs a process group, got null.");
        long minimum = EpLayout.signalBytes(group.worldSize());
        if (numEpBufferBytes <= minimum) {
            throw new IllegalArgumentException("EpBuffer: numEpBufferBytes = " + numEpBufferBytes + " is too small: size the buffer with"
                    + " EpBuffer.sizeHint(maxTokensPerRank, hidden, numRanks, numExperts) for the largest dispatch.");
        }
        if (!OPEN.add(group)) {
            throw new IllegalStateException("An EpBuffer is already open on process group " + group.name() + " (rank " + group.rank()
                    + "): one EpBuffer per group. Close the first one before creating another, or reuse it.");
        }
        if (device == null) {
            OPEN.remove(group);
            throw new IllegalArgumentException("EpBuffer: device must be Device.CPU or Device.cuda(n), got null.");
        }
        this.group = group;
        this.numBytes = numEpBufferBytes;
        this.device = device;
        try {
            if (device.isCpu()) {
                this.segments = EpSegments.exchange(group, numEpBufferBytes);
                this.path = new HostEpPath(group.rank(), group.timeout());
            } else {
                this.cuda = new CudaEpPath(group, numEpBufferBytes, device.index(), cudaGeneration++);
                this.path = cuda;
            }
        } catch (RuntimeException e) {
            OPEN.remove(group);
            throw e;
        }
    }

    /** The device of this buffer's data path: {@link Device#CPU}, or the {@code cuda:n} it was created for. */
    public Device device() { return device; }

    /**
     * The stream the CUDA path queues its kernels on (to order other work after them, or to time them
     * with events); null on the CPU path.
     */
    public org.mooncake4j.cuda.CudaStream cudaStream() {
        CudaEpPath c = cuda;
        return c == null ? null : c.stream();
    }

    /**
     * With {@code -Dmooncake4j.ep.profile=true} on the CUDA path: the mean microseconds of the dispatch
     * send, dispatch receive, combine send and combine receive kernels (each from an event queued just
     * before it to one just after) since the last call, followed by, per kernel, the mean microseconds
     * from its block 0's start to five points inside it (see {@code CudaEpPath.profileReport}); null
     * otherwise. For benchmarks.
     */
    public double[] kernelProfile() { return cuda == null ? null : cuda.profileReport(); }

    private int numRanks() { return group.worldSize(); }

    private long capacity() { return cuda != null ? cuda.capacity() : segments.size(); }

    private Object membership() { return cuda != null ? cuda.membership() : segments; }

    /**
     * The bytes a buffer needs for dispatches of up to {@code maxTokensPerRank} tokens of {@code hidden}
     * channels among {@code numRanks} ranks and {@code numExperts} experts (M, H, R, E), each term
     * rounded up to 64 bytes:
     *
     * <pre>
     * 128 R                      signal words (dispatch and combine, one 64-byte line per source)
     * + 4 E + 4 E / R            per-source counts, recvCount
     * + E M align16(16 + 2 H)    staging: a 16-byte header and the bf16 row (an fp8 row and its scales fit)
     * + E M 2 H                  recvX
     * + E M 4 ceil(H / 128)      recvScales
     * + E M 2 H                  combine send buffer (nextCombineBuffer)
     * + E M 2 H                  combine receive area
     * </pre>
     *
     * about {@code 8 E M H} bytes.
     */
    public static long sizeHint(int maxTokensPerRank, int hidden, int numRanks, int numExperts) {
        EpArguments.shapeParameters("sizeHint", maxTokensPerRank, hidden, numRanks, numExperts);
        try {
            return EpLayout.of(maxTokensPerRank, hidden, numRanks, numExperts).totalBytes();
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("sizeHint: maxTokensPerRank=" + maxTokensPerRank + ", hidden=" + hidden + ", numRanks=" + numRanks
                    + ", numExperts=" + numExperts + " need more than 2^63 bytes. Use smaller shapes.");
        }
    }

    /** The segment size this buffer was created with. */
    public long numBytes() { return numBytes; }

    /**
     * Sends each token of {@code x} to the ranks owning the experts it selected and receives the
     * tokens for this rank's experts.
     *
     * @param x                bfloat16 {@code [numTokens, hidden]}, numTokens ≤ maxTokensPerRank, CPU
     * @param topkIdx          int64 {@code [numTokens, topK]}: expert ids in [0, numExperts), -1 = masked
     * @param activeRanks      int32 {@code [numRanks]} on the CPU: 1 = active; set to 0 for ranks that fail
     * @param maxTokensPerRank the most tokens any rank dispatches (the same on every rank)
     * @param numExperts       global expert count, a multiple of numRanks
     * @param timeoutUs        how long to wait for each source, in microseconds; -1 = no EP-level timeout (the group's timeout still bounds the wait)
     * @param useFp8           send e4m3 values with a float32 scale per 128 channels (hidden % 128 == 0)
     * @param asyncFinish      run on the background thread; wait with {@code event.currentStreamWait()}
     * @param returnRecvHook   send now, return the receive as the hook
     */
    public DispatchResult dispatch(Tensor x, Tensor topkIdx, Tensor activeRanks, int maxTokensPerRank, int numExperts, long timeoutUs,
                                   boolean useFp8, boolean asyncFinish, boolean returnRecvHook) {
        ensureOpen();
        EpSegments segs = segments;
        int numRanks = numRanks();
        int[] nk = EpArguments.dispatch(x, topkIdx, activeRanks, maxTokensPerRank, numExperts, numRanks, timeoutUs, useFp8, device);
        int hidden = (int) x.size(1);
        EpLayout lay = EpLayout.of(maxTokensPerRank, hidden, numRanks, numExperts);
        if (lay.totalBytes() > capacity()) {
            throw new IllegalArgumentException("dispatch: the EpBuffer has " + capacity() + " bytes, but maxTokensPerRank=" + maxTokensPerRank
                    + ", hidden=" + hidden + ", numRanks=" + numRanks + ", numExperts=" + numExperts + " need " + lay.totalBytes()
                    + " bytes. Create the EpBuffer with EpBuffer.sizeHint(" + maxTokensPerRank + ", " + hidden + ", " + numRanks + ", "
                    + numExperts + ") bytes (for the largest shapes you dispatch).");
        }
        awaitPrevious();
        EpHandle h = new EpHandle(this, segs, membership(), lay, ++dispatchSeq, useFp8, nk[0], nk[1], returnRecvHook);
        EpDataPath.Dispatch op = new EpDataPath.Dispatch(h, x, topkIdx, activeRanks, timeoutUs);
        long rows = (long) numExperts * maxTokensPerRank;
        if (cuda != null) {
            CudaEpPath c = cuda;
            Staged st = stageCuda(c, () -> c.dispatchSend(op), () -> c.dispatchReceive(op), () -> c.checkDispatch(op), timeoutUs, "dispatch #" + h.seq,
                    h.received, asyncFinish, returnRecvHook, h.hookStarted);
            Tensor recvX = c.view(lay.recvX(), useFp8 ? DType.FLOAT8_E4M3 : DType.BFLOAT16, lay.localExperts(), lay.expertRows(), hidden);
            Tensor scales = useFp8 ? c.view(lay.recvScales(), DType.FLOAT32, lay.localExperts(), lay.expertRows(), lay.scaleBlocks()) : null;
            Tensor recvCount = c.view(lay.recvCount(), DType.INT32, lay.localExperts());
            return new DispatchResult(recvX, scales, recvCount, h, st.event(), st.hook());
        }
        Staged st = stage(() -> path.dispatchSend(op), () -> path.dispatchReceive(op), h.received, asyncFinish, returnRecvHook, h.hookStarted);
        MemorySegment mem = segs.memory;
        Tensor recvX = Tensor.wrap(mem.asSlice(lay.recvX(), rows * (useFp8 ? hidden : 2L * hidden)),
                useFp8 ? DType.FLOAT8_E4M3 : DType.BFLOAT16, lay.localExperts(), lay.expertRows(), hidden);
        Tensor scales = useFp8
                ? Tensor.wrap(mem.asSlice(lay.recvScales(), rows * 4L * lay.scaleBlocks()), DType.FLOAT32, lay.localExperts(), lay.expertRows(), lay.scaleBlocks())
                : null;
        Tensor recvCount = Tensor.wrap(mem.asSlice(lay.recvCount(), 4L * lay.localExperts()), DType.INT32, lay.localExperts());
        return new DispatchResult(recvX, scales, recvCount, h, st.event(), st.hook());
    }

    /**
     * Sends the expert outputs back to their tokens' ranks and sums them per token.
     *
     * @param x            bfloat16 {@code [numLocalExperts, numRanks * maxTokensPerRank, hidden]}: expert outputs in
     *                     the layout of the dispatch's recvX (only the first recvCount[j] rows of expert j are read)
     * @param topkIdx      the dispatch's topkIdx, int64 {@code [numTokens, topK]}
     * @param topkWeights  float32 {@code [numTokens, topK]}
     * @param activeRanks  as for dispatch
     * @param handle       the matching dispatch's handle; used once
     * @param zeroCopy     x is {@link #nextCombineBuffer(EpHandle)}, where the outputs were written in place. On the
     *                     CPU path every row is sent straight from x either way; this asserts where x lies
     * @param out          bfloat16 {@code [numTokens, hidden]} to write the result into, or null for a new tensor
     */
    public CombineResult combine(Tensor x, Tensor topkIdx, Tensor topkWeights, Tensor activeRanks, long timeoutUs, EpHandle handle,
                                 boolean zeroCopy, boolean asyncFinish, boolean returnRecvHook, Tensor out) {
        ensureOpen();
        int numRanks = numRanks();
        checkHandle(handle, "combine");
        if (handle.used.get()) {
            throw new IllegalStateException("combine: " + handle + " was already combined; a dispatch handle is used by one combine."
                    + " Dispatch again for another combine.");
        }
        EpLayout lay = handle.layout;
        int hidden = lay.hidden();
        String op = "combine";
        EpArguments.tensor(op, "x", x, DType.BFLOAT16, "[numLocalExperts, numRanks * maxTokensPerRank, hidden] as returned by dispatch",
                device, lay.localExperts(), lay.expertRows(), hidden);
        EpArguments.tensor(op, "topkIdx", topkIdx, DType.INT64, "[numTokens, topK] as passed to dispatch", device, handle.numTokens, handle.topK);
        EpArguments.tensor(op, "topkWeights", topkWeights, DType.FLOAT32, "[numTokens, topK]", device, handle.numTokens, handle.topK);
        EpArguments.activeRanks(op, activeRanks, numRanks, device);
        EpArguments.timeout(op, timeoutUs);
        if (out != null) EpArguments.tensor(op, "out", out, DType.BFLOAT16, "[numTokens, hidden]", device, handle.numTokens, hidden);
        long xAddress = cuda != null ? x.devicePointer() : x.segment().address();
        long sendAddress = cuda != null ? cuda.address(lay.combineSend()) : segments.memory.address() + lay.combineSend();
        if (zeroCopy && xAddress != sendAddress) {
            throw new IllegalArgumentException("combine: zeroCopy = true needs x to be the tensor from nextCombineBuffer(handle), with the"
                    + " expert outputs written into it; got another tensor. Write the outputs into nextCombineBuffer(handle), or pass zeroCopy = false.");
        }
        if (!handle.received.isDone() && handle.receiveInHook && !handle.hookStarted.get()) {
            throw new IllegalStateException("combine: the receive of " + handle + " has not run: run the hook its dispatch returned first.");
        }
        try {
            handle.received.join();
        } catch (CompletionException e) {
            throw new IllegalStateException("combine: the matching dispatch failed (" + e.getCause().getMessage() + "); dispatch again.", e.getCause());
        }
        if (!handle.used.compareAndSet(false, true)) {
            throw new IllegalStateException("combine: " + handle + " was already combined; a dispatch handle is used by one combine.");
        }
        Tensor result = out != null ? out : Tensor.empty(DType.BFLOAT16, device, handle.numTokens, hidden);
        awaitPrevious();
        EpDataPath.Combine c = new EpDataPath.Combine(handle, ++combineSeq, x, topkIdx, topkWeights, activeRanks, timeoutUs, result,
                new boolean[numRanks]);
        if (cuda != null) {
            CudaEpPath p = cuda;
            Staged st = stageCuda(p, () -> p.combineSend(c), () -> p.combineReceive(c), () -> p.checkCombine(c), timeoutUs, "combine #" + c.seq(),
                    new CompletableFuture<>(), asyncFinish, returnRecvHook, new AtomicBoolean());
            return new CombineResult(result, st.event(), st.hook());
        }
        Staged st = stage(() -> path.combineSend(c), () -> path.combineReceive(c), new CompletableFuture<>(), asyncFinish, returnRecvHook,
                new AtomicBoolean());
        return new CombineResult(result, st.event(), st.hook());
    }

    /**
     * The bf16 {@code [numLocalExperts, numRanks * maxTokensPerRank, hidden]} view into this buffer's
     * segment where the expert outputs for {@code handle} can be written in place, then passed to
     * {@link #combine} with {@code zeroCopy = true}. The same memory for every handle of a shape.
     */
    public Tensor nextCombineBuffer(EpHandle handle) {
        ensureOpen();
        checkHandle(handle, "nextCombineBuffer");
        EpLayout lay = handle.layout;
        long bytes = lay.expertRows() * lay.localExperts() * 2L * lay.hidden();
        if (cuda != null) return cuda.view(lay.combineSend(), DType.BFLOAT16, lay.localExperts(), lay.expertRows(), lay.hidden());
        return Tensor.wrap(segments.memory.asSlice(lay.combineSend(), bytes), DType.BFLOAT16, lay.localExperts(), lay.expertRows(), lay.hidden());
    }

    /**
     * Re-exchanges segments with the group's current members, after a recovery ({@code recoverRanks} on
     * the healthy ranks; a replacement process creates a fresh EpBuffer instead). Collective over the
     * active ranks. Handles from before it are rejected; the dispatch and combine sequences restart.
     */
    public void updateEpMember() {
        ensureOpen();
        awaitPrevious();
        if (cuda != null) {
            CudaEpPath fresh = new CudaEpPath(group, numBytes, device.index(), cudaGeneration++);
            CudaEpPath old = cuda;
            cuda = fresh;
            dispatchSeq = 0;
            combineSeq = 0;
            old.close();
            return;
        }
        EpSegments fresh = EpSegments.exchange(group, numBytes);
        EpSegments old = segments;
        segments = fresh;
        dispatchSeq = 0;
        combineSeq = 0;
        old.close();
    }

    /** Waits for work in flight, unregisters this rank's segment and lets another buffer be created on the group. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        awaitPrevious();
        if (background != null) background.shutdown();
        try {
            if (cuda != null) cuda.close();
            else segments.close();
        } finally {
            OPEN.remove(group);
        }
    }

    // ---- internals ---------------------------------------------------------------------------

    private record Staged(EpEvent event, Runnable hook) {}

    /**
     * Runs {@code send} and, unless a hook is asked for, {@code receive}: inline, or on the background
     * thread with {@code async}. {@code received} completes when the receive has (or fails with it).
     */
    private Staged stage(Runnable send, Runnable receive, CompletableFuture<Void> received, boolean async, boolean withHook,
                         AtomicBoolean hookStarted) {
        Runnable receiveTracked = () -> runTracked(receive, received);
        Runnable work = () -> {
            try {
                send.run();
            } catch (RuntimeException | Error e) {
                received.completeExceptionally(e);
                throw e;
            }
            if (!withHook) receiveTracked.run();
        };
        CompletableFuture<Void> done;
        if (async) {
            done = CompletableFuture.runAsync(work, background());
        } else {
            work.run();
            done = CompletableFuture.completedFuture(null);
        }
        lastWork = done;
        EpEvent event = () -> join(done);
        Runnable hook = !withHook ? null : () -> {
            if (!hookStarted.compareAndSet(false, true)) {
                join(received);
                return;
            }
            join(done);
            receiveTracked.run();
        };
        return new Staged(event, hook);
    }

    /**
     * The CUDA path's scheduling: the phases only queue kernels on the path's stream. Without a hook
     * the receive is queued right after the send; without {@code async} the call then waits (polling a
     * host ticket with a deadline) and checks what the kernels reported; with {@code async} the event
     * does that. With a hook the event covers the send, and the hook queues the receive and waits.
     * {@code received} completes once the receive is queued (stream order puts the combine after it)
     * or failed to queue.
     */
    private Staged stageCuda(CudaEpPath c, Runnable send, Runnable receive, Runnable check, long timeoutUs, String what,
                             CompletableFuture<Void> received, boolean async, boolean withHook, AtomicBoolean hookStarted) {
        try {
            send.run();
            if (!withHook) receive.run();
        } catch (RuntimeException | Error e) {
            received.completeExceptionally(e);
            throw e;
        }
        long ticket = c.mark();
        if (!withHook) received.complete(null);
        EpEvent waitAll = () -> {
            c.await(ticket, timeoutUs, what);
            if (!withHook) check.run();
        };
        if (!async) {
            waitAll.currentStreamWait();
        }
        EpEvent event = async ? waitAll : () -> {};
        Runnable hook = !withHook ? null : () -> {
            if (!hookStarted.compareAndSet(false, true)) {
                join(received);
                return;
            }
            runTracked(receive, received);
            c.await(c.mark(), timeoutUs, what);
            check.run();
        };
        return new Staged(event, hook);
    }

    /** Runs {@code receive} and completes {@code received} with its outcome (rethrowing a failure). */
    private static void runTracked(Runnable receive, CompletableFuture<Void> received) {
        try {
            receive.run();
            received.complete(null);
        } catch (RuntimeException | Error e) {
            received.completeExceptionally(e);
            throw e;
        }
    }

    private static void join(CompletableFuture<Void> f) {
        try {
            f.join();
        } catch (CompletionException e) {
            if (e.getCause() instanceof RuntimeException r) throw r;
            if (e.getCause() instanceof Error err) throw err;
            throw e;
        }
    }

    /** Lets the previous operation's background work finish first (its failure is reported through its own event). */
    private void awaitPrevious() {
        lastWork.handle((v, t) -> null).join();
    }

    private synchronized ExecutorService background() {
        if (background == null) {
            background = Executors.newSingleThreadExecutor(r -> Thread.ofPlatform().daemon().name("ep-" + group.name() + "-r" + group.rank()).unstarted(r));
        }
        return background;
    }

    private void checkHandle(EpHandle handle, String op) {
        if (handle == null) throw new IllegalArgumentException(op + ": handle must be the one returned by dispatch, got null.");
        if (handle.buffer != this) {
            throw new IllegalArgumentException(op + ": " + handle + " comes from another EpBuffer. Pass the handle returned by this buffer's dispatch.");
        }
        if (handle.membership != membership()) {
            throw new IllegalArgumentException(op + ": " + handle + " comes from before updateEpMember(), whose segments are gone. Dispatch again.");
        }
    }

    private void ensureOpen() {
        if (closed) throw new IllegalStateException("EpBuffer on group " + group.name() + " (rank " + group.rank() + ") is closed.");
    }

    @Override
    public String toString() {
        return "EpBuffer(group " + group.name() + ", rank " + group.rank() + " of " + numRanks() + ", " + device + ", " + numBytes + " bytes)";
    }
}
