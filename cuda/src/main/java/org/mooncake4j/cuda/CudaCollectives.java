package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.util.concurrent.TimeUnit;
import org.mooncake4j.core.DType;

/**
 * All-reduce (sum), all-gather, reduce-scatter (sum) and all-to-all among the ranks of a {@link SymmetricHeap}, by kernels that reach the
 * peers' heaps over NVLink ({@code collectives.cu}):
 * <ul>
 * <li>one-shot all-reduce (small messages): each rank stages its input in its heap, meets the others
 *     at one barrier, and sums every rank's copy itself;</li>
 * <li>two-shot all-reduce: each rank reduces 1/n of the message, then every rank gets the other ranks'
 *     reduced parts; messages larger than a heap bank, and large ones in general, go in pipelined
 *     chunks. Three variants: <em>pull</em> loads the peers' staged copies and reduced parts over
 *     NVLink; <em>push</em> stores each part into its reducer's heap and each reduced part into every
 *     peer's heap, so every NVLink access is a store and every load is local; <em>pipe</em> moves
 *     the bytes of push, but every block pipelines its own slice in small steps and waits only for
 *     the peers' flags of its next step instead of a barrier per chunk
 *     ({@link TwoShotVariant}, {@value #TWO_SHOT_PROPERTY} / {@value #TWO_SHOT_ENV});</li>
 * <li>all-gather (push): each rank stores its input into every peer's heap (one slot per source
 *     rank), then copies its slots into the output locally; pipelined in chunks, any size and
 *     alignment;</li>
 * <li>reduce-scatter (push): each rank stores part q of its input into rank q's heap (one slot per
 *     source rank), then sums its own slots from local memory; pipelined in chunks, any size;</li>
 * <li>all-to-all (push): each rank stores block q of its input into rank q's heap, then copies its
 *     slots into the output locally; pipelined in chunks, any size and alignment;</li>
 * <li>{@link #divide}: an element-wise division in place (AVG after a sum); local, no peers.</li>
 * </ul>
 * Sums are taken in rank order (bf16 in fp32, rounded once), so every rank gets the same bits, and a
 * reduce-scatter gives the bits that an all-reduce gives for the same slice.
 *
 * <p>Operations are queued on the caller's stream and return at once: nothing here waits for the GPU,
 * and a call allocates nothing. Every flag wait on the GPU has a deadline ({@code timeoutNanos}); when
 * a peer does not arrive in time the kernel records which ranks were missing in page-locked host
 * memory and exits. {@link #check()} (after the stream has synchronized, or after
 * {@link #lastKernelDone()} returned true) or {@link #synchronize} turns that into a
 * {@link CollectiveTimeoutException} naming them, and once it has, every later call throws it at once:
 * the heap is unusable after a timeout. A kernel queued before the host looked (or behind the one that
 * timed out) finds the heap's abort word set and does nothing ({@link #check(long)} tells the launches
 * apart).
 *
 * <p>Completion without the driver: every kernel queued here stores a ticket (one per launch) into
 * page-locked memory from each of its blocks as their last act; {@link #lastKernelDone()} reads those
 * words, so a host thread can poll for the end of an operation without recording and querying an
 * event.
 *
 * <p>An all-reduce may write a backup of its input as it reads it
 * ({@link #allReduce(long, long, long, DType, CudaStream, long, Algorithm, long)}): complete when the
 * kernel is done, also after a timeout, so an in-place all-reduce can be undone without a separate
 * copy.
 *
 * <p>Threading: calls are serialised (synchronized), but the ranks must issue the same operations, with
 * the same sizes, in the same order, on one stream (or streams ordered one after the other): the
 * kernels of consecutive operations rely on stream order for reusing the heap. Use one thread per
 * rank.
 *
 * <p>Ownership: the caller keeps owning the heap and the module; {@link #close()} frees only the
 * status memory, and must not race with queued operations.
 */
public final class CudaCollectives implements AutoCloseable {
    /** How an all-reduce is computed. */
    public enum Algorithm {
        /** One-shot up to {@link #oneShotMaxBytes()}, else two-shot. */
        AUTO,
        /** Every rank reads every rank's full copy; messages up to one heap bank. */
        ONE_SHOT,
        /** Reduce-scatter then all-gather, pipelined in chunks; any size; the variant of {@link #twoShotVariant()}. */
        TWO_SHOT,
        /** Two-shot, loading peers' data over NVLink. */
        TWO_SHOT_PULL,
        /** Two-shot, storing data into the peers' heaps over NVLink. */
        TWO_SHOT_PUSH,
        /**
         * Two-shot with the traffic of {@link #TWO_SHOT_PUSH}, but every block pipelines its own slice in
         * small steps and waits only for the flags of the data it reads next, instead of a barrier of
         * all ranks per chunk.
         */
        TWO_SHOT_PIPE
    }

    /** Which two-shot all-reduce {@link Algorithm#TWO_SHOT} (and AUTO, above the one-shot limit) runs. */
    public enum TwoShotVariant {
        /** Per world size and message size ({@code CollectivePlan.defaultTwoShot}). */
        AUTO,
        /** {@link Algorithm#TWO_SHOT_PULL}. */
        PULL,
        /** {@link Algorithm#TWO_SHOT_PUSH}. */
        PUSH,
        /** {@link Algorithm#TWO_SHOT_PIPE}. */
        PIPE;

        /** {@code pull}, {@code push}, {@code pipe} or {@code auto} (any case; null or blank: auto). */
        public static TwoShotVariant parse(String setting) {
            if (setting == null || setting.isBlank()) return AUTO;
            return switch (setting.trim().toLowerCase(java.util.Locale.ROOT)) {
                case "auto" -> AUTO;
                case "pull" -> PULL;
                case "push" -> PUSH;
                case "pipe" -> PIPE;
                default -> throw new IllegalArgumentException("two-shot variant '" + setting + "': use pull, push, pipe or auto ("
                        + TWO_SHOT_PROPERTY + " / " + TWO_SHOT_ENV + ")");
            };
        }
    }

    /** The system property that sets the initial {@link #twoShotVariant()}; it wins over {@link #TWO_SHOT_ENV}. */
    public static final String TWO_SHOT_PROPERTY = "mooncake.twoshot";
    /** The environment variable that sets the initial {@link #twoShotVariant()}: pull, push, pipe or auto. */
    public static final String TWO_SHOT_ENV = "MOONCAKE_TWOSHOT";

    /** The longest timeout an operation takes. */
    public static final long MAX_TIMEOUT_NANOS = TimeUnit.HOURS.toNanos(1);

    private static final VarHandle INT = ValueLayout.JAVA_INT.varHandle();
    private static final VarHandle LONG = ValueLayout.JAVA_LONG.varHandle();
    private static final int STATUS_WORDS = 1 + SymmetricHeap.Layout.MAX_BLOCKS;
    /** A block's status word: the ranks it found missing (bits 0..7 in collectives.cu) ... */
    private static final int MISSING_MASK = 0xffff;
    /** ... and whether its part of the data phase ended early (kDataIncomplete). */
    private static final int DATA_INCOMPLETE = 1 << 16;
    /** Where the per-block completion words (u64) start in the status memory, after the status words. */
    static final long DONE_OFFSET = 4096;
    /** One completion word per block of the largest grid: the scale kernel's. */
    static final int DONE_WORDS = Math.max(SymmetricHeap.Layout.MAX_BLOCKS, CollectivePlan.SCALE_MAX_BLOCKS);
    static final long STATUS_BYTES = DONE_OFFSET + 8L * DONE_WORDS;
    /** Where the kernels record the ticket of the launch that timed out (u64; collectives.cu kFailedTicketOffset). */
    static final long FAILED_TICKET_OFFSET = 3072;

    private final SymmetricHeap heap;
    private final CudaDevice device;
    private final CudaFunction oneShotF32;
    private final CudaFunction oneShotBf16;
    private final CudaFunction twoShotF32;
    private final CudaFunction twoShotBf16;
    private final CudaFunction pushF32;
    private final CudaFunction pushBf16;
    private final CudaFunction pipeF32;
    private final CudaFunction pipeBf16;
    private final CudaFunction allGatherBytes;
    private final CudaFunction reduceScatterF32;
    private final CudaFunction reduceScatterBf16;
    private final CudaFunction allToAllBytes;
    private final CudaFunction scaleF32;
    private final CudaFunction scaleBf16;
    private final PinnedHostMemory status;
    private final MemorySegment statusWords;
    private final long[] heaps = new long[SymmetricHeap.MAX_RANKS];
    private final int rank;
    private final int worldSize;
    private final int blocksLimit;
    private final long dataOffset;
    private final long bankBytes;
    private long epoch;              // barriers used so far (flags only grow)
    private long chunkSeq;           // chunks run so far (bank parity)
    private long ticket;             // the last launch's completion ticket (0: none yet)
    private long finalSyncs;         // collective kernels queued (each with a final sync step)
    private CollectiveTimeoutException observed;   // the timeout check() reported (later launches are refused)
    private int ticketBlocks;        // the blocks of that launch, each of which stores the ticket
    private int ticketSeen;          // blocks [0, ticketSeen) of that launch were seen done
    private long oneShotMaxBytes;
    private TwoShotVariant twoShotVariant;
    private long longestTimeoutNanos;
    private boolean closed;

    private CudaCollectives(SymmetricHeap heap, CudaModule kernels, PinnedHostMemory status) {
        this.heap = heap;
        this.device = heap.device();
        this.oneShotF32 = kernels.function("allreduce_oneshot_f32");
        this.oneShotBf16 = kernels.function("allreduce_oneshot_bf16");
        this.twoShotF32 = kernels.function("allreduce_twoshot_f32");
        this.twoShotBf16 = kernels.function("allreduce_twoshot_bf16");
        this.pushF32 = kernels.function("allreduce_twoshot_push_f32");
        this.pushBf16 = kernels.function("allreduce_twoshot_push_bf16");
        this.pipeF32 = kernels.function("allreduce_pipe_f32");
        this.pipeBf16 = kernels.function("allreduce_pipe_bf16");
        this.allGatherBytes = kernels.function("allgather_bytes");
        this.reduceScatterF32 = kernels.function("reducescatter_f32");
        this.reduceScatterBf16 = kernels.function("reducescatter_bf16");
        this.allToAllBytes = kernels.function("alltoall_bytes");
        this.scaleF32 = kernels.function("scale_f32");
        this.scaleBf16 = kernels.function("scale_bf16");
        this.status = status;
        this.statusWords = status.segment();
        this.rank = heap.rank();
        this.worldSize = heap.worldSize();
        this.blocksLimit = heap.blocksLimit();
        this.dataOffset = heap.layout().dataOffset();
        this.bankBytes = heap.layout().bankBytes();
        for (int q = 0; q < worldSize; q++) heaps[q] = heap.pointer(q);
        this.oneShotMaxBytes = CollectivePlan.defaultOneShotMaxBytes(worldSize, bankBytes);
        this.twoShotVariant = defaultTwoShotVariant(System.getProperty(TWO_SHOT_PROPERTY), System.getenv(TWO_SHOT_ENV));
    }

    /** The initial variant: the system property when set, else the environment variable, else AUTO. */
    static TwoShotVariant defaultTwoShotVariant(String property, String env) {
        return TwoShotVariant.parse(property != null && !property.isBlank() ? property : env);
    }

    /**
     * The collectives of {@code heap}, launched from {@code kernels} (the module of this jar's kernels,
     * {@link CudaModule#loadKernels}, on the heap's device). Use one instance per heap: the instance
     * counts the heap's barriers and chunks, which every rank must count alike.
     */
    public static CudaCollectives create(SymmetricHeap heap, CudaModule kernels) {
        if (kernels.device() != heap.device()) {
            throw new IllegalArgumentException("the kernels are loaded on " + kernels.device() + " but the heap lives on "
                    + heap.device() + "; load them with CudaModule.loadKernels(heap.device())");
        }
        PinnedHostMemory status = PinnedHostMemory.allocate(heap.device(), STATUS_BYTES);
        try {
            status.segment().fill((byte) 0);
            return new CudaCollectives(heap, kernels, status);
        } catch (RuntimeException e) {
            status.close();
            throw e;
        }
    }

    public SymmetricHeap heap() { return heap; }

    /** The largest all-reduce (in bytes) that {@link Algorithm#AUTO} runs one-shot. */
    public synchronized long oneShotMaxBytes() { return oneShotMaxBytes; }

    /** Sets {@link #oneShotMaxBytes()}; every rank must set the same value. At most one heap bank. */
    public synchronized void setOneShotMaxBytes(long bytes) {
        if (bytes < 0 || bytes > bankBytes) {
            throw new IllegalArgumentException("the one-shot limit must be 0.." + bankBytes + " bytes (one heap bank), got " + bytes);
        }
        oneShotMaxBytes = bytes;
    }

    /** Which two-shot variant {@link Algorithm#TWO_SHOT} and {@link Algorithm#AUTO} run. */
    public synchronized TwoShotVariant twoShotVariant() { return twoShotVariant; }

    /** Sets {@link #twoShotVariant()}; every rank must set the same. */
    public synchronized void setTwoShotVariant(TwoShotVariant variant) {
        if (variant == null) throw new IllegalArgumentException("the two-shot variant must not be null (use TwoShotVariant.AUTO)");
        twoShotVariant = variant;
    }

    /**
     * The algorithm {@link Algorithm#AUTO} runs for an all-reduce of {@code bytes}: {@link Algorithm#ONE_SHOT}
     * up to {@link #oneShotMaxBytes()}, else the two-shot variant of {@link #twoShotFor}.
     */
    public synchronized Algorithm algorithmFor(long bytes) {
        return bytes <= oneShotMaxBytes ? Algorithm.ONE_SHOT : twoShotFor(bytes);
    }

    /** The two-shot variant {@link Algorithm#TWO_SHOT} runs for {@code bytes}. */
    public synchronized Algorithm twoShotFor(long bytes) {
        return resolveTwoShot(twoShotVariant, worldSize, bytes);
    }

    static Algorithm resolveTwoShot(TwoShotVariant variant, int worldSize, long bytes) {
        return switch (variant) {
            case PULL -> Algorithm.TWO_SHOT_PULL;
            case PUSH -> Algorithm.TWO_SHOT_PUSH;
            case PIPE -> Algorithm.TWO_SHOT_PIPE;
            case AUTO -> CollectivePlan.defaultTwoShot(worldSize, bytes);
        };
    }

    /** {@link #allReduce(long, long, long, DType, CudaStream, long, Algorithm)} with {@link Algorithm#AUTO}. */
    public void allReduce(long src, long dst, long count, DType dtype, CudaStream stream, long timeoutNanos) {
        allReduce(src, dst, count, dtype, stream, timeoutNanos, Algorithm.AUTO);
    }

    /**
     * Queues {@code dst[i] = sum over ranks of src[i]} for {@code count} elements of {@code dtype}
     * ({@link DType#FLOAT32} or {@link DType#BFLOAT16}) on {@code stream}. {@code src} and {@code dst}
     * are device pointers on the heap's device; they may be equal (in place), but must not overlap
     * otherwise. Every wait on a peer gives up after {@code timeoutNanos}; see {@link #check()}.
     */
    public void allReduce(long src, long dst, long count, DType dtype, CudaStream stream, long timeoutNanos,
                          Algorithm algorithm) {
        allReduce(src, dst, count, dtype, stream, timeoutNanos, algorithm, 0);
    }

    /**
     * {@link #allReduce(long, long, long, DType, CudaStream, long, Algorithm)} that also copies
     * {@code src} to {@code backup} (a device buffer of {@code count} elements; 0: none) in the same
     * kernel, from the loads it makes anyway. The backup is complete once the kernel is done
     * ({@link #lastKernelDone()}, or the stream synchronized), also when it timed out waiting for a
     * peer: then {@code src} (if in place) may be partly reduced, and copying the backup back restores
     * it. {@code backup} must not overlap {@code src} or {@code dst}; sharing {@code src}'s alignment
     * modulo 16 bytes keeps the kernels on 16-byte vectors.
     */
    public synchronized void allReduce(long src, long dst, long count, DType dtype, CudaStream stream, long timeoutNanos,
                                       Algorithm algorithm, long backup) {
        checkAllReduce(src, dst, count, dtype, timeoutNanos, algorithm, bankBytes);
        checkBackup(backup, src, dst, count, dtype);
        prepare(stream, timeoutNanos);
        if (count == 0) return;
        int es = dtype.byteSize();
        boolean f32 = dtype == DType.FLOAT32;
        Algorithm a = switch (algorithm) {
            case AUTO -> algorithmFor(count * es);
            case TWO_SHOT -> twoShotFor(count * es);
            default -> algorithm;
        };
        if (a == Algorithm.TWO_SHOT_PIPE) {
            int blocks = CollectivePlan.twoShotBlocks(count, count, es, worldSize, blocksLimit);
            long tile = CollectivePlan.pipeTileElements(count, es, worldSize, blocks, bankBytes);
            if (tile > 0) {
                long steps = CollectivePlan.pipeSteps(count, es, worldSize, blocks, tile);
                launch(f32 ? pipeF32 : pipeBf16, stream, blocks, src, dst, backup, count,
                        CollectivePlan.pipeChunkParameter(tile, CollectivePlan.PIPE_SCATTER_WARPS, CollectivePlan.PIPE_COPY_LAG), steps + 1, 1, timeoutNanos);
                return;
            }
            a = Algorithm.TWO_SHOT_PUSH;   // not even one vector per tile fits this heap's bank
        }
        if (a == Algorithm.ONE_SHOT) {
            launch(f32 ? oneShotF32 : oneShotBf16, stream, CollectivePlan.oneShotBlocks(count, es, blocksLimit), src, dst,
                    backup, count, 0, 1, 1, timeoutNanos);
        } else if (a == Algorithm.TWO_SHOT_PUSH) {
            long chunk = CollectivePlan.pushChunkElements(count, es, bankBytes, worldSize);
            long chunks = CollectivePlan.ceilDiv(count, chunk);
            launch(f32 ? pushF32 : pushBf16, stream, CollectivePlan.twoShotBlocks(count, chunk, es, worldSize, blocksLimit),
                    src, dst, backup, count, chunk, 2 * chunks, chunks, timeoutNanos);
        } else {
            long chunk = CollectivePlan.twoShotChunkElements(count, es, bankBytes);
            long chunks = CollectivePlan.ceilDiv(count, chunk);
            launch(f32 ? twoShotF32 : twoShotBf16, stream,
                    CollectivePlan.twoShotBlocks(count, chunk, es, worldSize, blocksLimit), src, dst, backup, count, chunk,
                    2 * chunks, chunks, timeoutNanos);
        }
    }

    /**
     * Queues {@code dst[q * bytesPerRank + i] = rank q's src[i]} on {@code stream}. {@code dst} holds
     * {@code worldSize * bytesPerRank} bytes; {@code src} may be this rank's slot of {@code dst} (in
     * place), but must not overlap {@code dst} otherwise. Any alignment works; 16-byte aligned pointers
     * and a multiple of 16 bytes per rank are fastest.
     */
    public synchronized void allGather(long src, long dst, long bytesPerRank, CudaStream stream, long timeoutNanos) {
        checkAllGather(src, dst, bytesPerRank, worldSize, rank, timeoutNanos);
        prepare(stream, timeoutNanos);
        if (bytesPerRank == 0) return;
        long chunk = CollectivePlan.allGatherChunkBytes(bytesPerRank, bankBytes, worldSize);
        long chunks = CollectivePlan.ceilDiv(bytesPerRank, chunk);
        launch(allGatherBytes, stream, CollectivePlan.allGatherBlocks(bytesPerRank, chunk, blocksLimit), src, dst,
                CollectivePlan.SLOT_SCATTER_WARPS,
                bytesPerRank, chunk, chunks, chunks, timeoutNanos);
    }

    /**
     * Queues {@code dst[i] = sum over ranks q of rank q's src[rank * countPerRank + i]} for
     * {@code i < countPerRank} elements of {@code dtype} ({@link DType#FLOAT32} or {@link DType#BFLOAT16})
     * on {@code stream}: {@code src} holds {@code worldSize * countPerRank} elements, part q of which goes
     * to rank q. Sums in rank order (bf16 in fp32, rounded once): the bits an all-reduce gives for this
     * rank's slice. {@code src} and {@code dst} must not overlap. Every wait on a peer gives up after
     * {@code timeoutNanos}; see {@link #check()}.
     */
    public synchronized void reduceScatter(long src, long dst, long countPerRank, DType dtype, CudaStream stream,
                                           long timeoutNanos) {
        checkReduceScatter(src, dst, countPerRank, dtype, worldSize, timeoutNanos);
        prepare(stream, timeoutNanos);
        if (countPerRank == 0) return;
        int es = dtype.byteSize();
        long chunk = CollectivePlan.reduceScatterChunkElements(countPerRank, es, bankBytes, worldSize);
        long chunks = CollectivePlan.ceilDiv(countPerRank, chunk);
        launch(dtype == DType.FLOAT32 ? reduceScatterF32 : reduceScatterBf16, stream,
                CollectivePlan.slotBlocks(countPerRank, chunk, es, blocksLimit), src, dst, CollectivePlan.SLOT_SCATTER_WARPS, countPerRank, chunk, chunks, chunks,
                timeoutNanos);
    }

    /**
     * Queues {@code dst[q * bytesPerRank + i] = rank q's src[rank * bytesPerRank + i]} on {@code stream}:
     * {@code src} and {@code dst} hold {@code worldSize * bytesPerRank} bytes each, block q of {@code src}
     * goes to rank q, and block q of {@code dst} comes from rank q. They must not overlap. Any alignment
     * works; a 16-byte aligned {@code src} and a multiple of 16 bytes per rank are fastest.
     */
    public synchronized void allToAll(long src, long dst, long bytesPerRank, CudaStream stream, long timeoutNanos) {
        checkAllToAll(src, dst, bytesPerRank, worldSize, timeoutNanos);
        prepare(stream, timeoutNanos);
        if (bytesPerRank == 0) return;
        long chunk = CollectivePlan.allToAllChunkBytes(bytesPerRank, bankBytes, worldSize);
        long chunks = CollectivePlan.ceilDiv(bytesPerRank, chunk);
        launch(allToAllBytes, stream, CollectivePlan.slotBlocks(bytesPerRank, chunk, 1, blocksLimit), src, dst, CollectivePlan.SLOT_SCATTER_WARPS, bytesPerRank,
                chunk, chunks, chunks, timeoutNanos);
    }

    /**
     * Queues {@code ptr[i] = ptr[i] / divisor} in place for {@code count} elements of {@code dtype}
     * ({@link DType#FLOAT32} or {@link DType#BFLOAT16}; the division is float32, bf16 goes through
     * float32 and is rounded once): the mean after a sum, with the group size as divisor. Local to this
     * GPU: no barrier, no timeout; it does not change what the ranks count.
     */
    public synchronized void divide(long ptr, long count, DType dtype, double divisor, CudaStream stream) {
        checkDivide(ptr, count, dtype, divisor);
        if (closed) throw new IllegalStateException("these collectives are closed");
        checkStream(stream);
        if (count == 0) return;
        int blocks = CollectivePlan.scaleBlocks(count, dtype.byteSize());
        KernelArgs a = KernelArgs.begin().ptr(ptr).u64(count).f32((float) divisor).ptr(status.devicePointer() + DONE_OFFSET)
                .u64(ticket + 1);
        (dtype == DType.FLOAT32 ? scaleF32 : scaleBf16).launch(stream, blocks, CollectivePlan.THREADS, a);
        launched(blocks);
    }

    /**
     * Throws {@link CollectiveTimeoutException} when a kernel of this heap timed out, naming the ranks
     * that did not arrive. It sees the kernels that have finished: call it after the stream (or an
     * event recorded after the operation) has synchronized. Reads page-locked memory; never blocks.
     */
    public void check() { check(Long.MAX_VALUE); }

    /**
     * {@link #check()} for the launch of {@code ticket} (see {@link #lastTicket()}) and those before it,
     * once that launch is done ({@link #kernelDone}): a timeout of a later launch (which may still run)
     * is ignored. As only the first timeout of a heap happens (every launch after it is skipped), this
     * tells whether the operation of {@code ticket} completed even while later ones are queued.
     */
    public void check(long ticket) {
        if ((int) INT.getVolatile(statusWords, 0L) == 0) return;
        // the kernel stores the failed launch's ticket before status[0] (release), read after it here
        if ((long) LONG.getVolatile(statusWords, FAILED_TICKET_OFFSET) > ticket) return;
        throw failure();
    }

    /** The exception for the recorded timeout; later launches are refused with it ({@link #prepare}). */
    private CollectiveTimeoutException failure() {
        int mask = 0;
        boolean incomplete = false;
        for (int b = 1; b < STATUS_WORDS; b++) {
            int word = (int) INT.getVolatile(statusWords, 4L * b);
            mask |= word & MISSING_MASK;
            incomplete |= (word & DATA_INCOMPLETE) != 0;
        }
        synchronized (this) {
            observed = new CollectiveTimeoutException(rank, device.toString(), CollectiveTimeoutException.ranksOf(mask),
                    longestTimeoutNanos, !incomplete);
            return observed;
        }
    }

    /**
     * The ticket of the last kernel queued here (every collective and {@link #divide} queues one); 0
     * before the first. An operation that compares it before and after knows whether it queued a kernel.
     */
    public synchronized long lastTicket() { return ticket; }

    /**
     * Whether the last kernel queued here is done: every one of its blocks has stored its ticket into
     * page-locked memory, after everything it wrote (missing ranks included, so {@link #check()} sees
     * them). The kernels of one stream run in order, so everything queued before it on the stream is
     * done as well. True when none was queued. Never blocks and makes no driver call: a host thread
     * polls it (with its own deadline; every wait in the kernels has one) instead of an event.
     */
    public synchronized boolean lastKernelDone() {
        if (closed) throw new IllegalStateException("these collectives are closed");
        while (ticketSeen < ticketBlocks) {
            if ((long) LONG.getVolatile(statusWords, DONE_OFFSET + 8L * ticketSeen) < ticket) return false;
            ticketSeen++;
        }
        return true;
    }

    /**
     * Whether the launch of {@code ticket}, which had {@code blocks} blocks, is done: every block stored
     * a ticket at least as large (tickets only grow). For an operation that is not the last one queued
     * ({@link #lastTicket()} and {@link #lastBlocks()} read right after it was queued). Never blocks.
     */
    public boolean kernelDone(long ticket, int blocks) {
        for (int b = 0; b < blocks; b++) {
            if ((long) LONG.getVolatile(statusWords, DONE_OFFSET + 8L * b) < ticket) return false;
        }
        return true;
    }

    /** The number of blocks of the last launch (0 before the first). */
    public synchronized int lastBlocks() { return ticketBlocks; }

    /** Waits for {@code stream}, then {@link #check()}. */
    public void synchronize(CudaStream stream) {
        stream.synchronize();
        check();
    }

    /**
     * Before a launch: refuses once a timeout has been seen ({@link #check()} threw). A timeout that
     * the host has not looked at yet does not stop the launch: the kernel then finds the heap's abort
     * word set and does nothing (collectives.cu, begin_block), and the check of the earlier operation
     * reports the failure.
     */
    private void prepare(CudaStream stream, long timeoutNanos) {
        if (closed) throw new IllegalStateException("these collectives are closed");
        checkStream(stream);
        if (observed != null) throw observed;
        longestTimeoutNanos = Math.max(longestTimeoutNanos, timeoutNanos);
    }

    private void checkStream(CudaStream stream) {
        if (stream.device() != device) {
            throw new IllegalArgumentException("the stream belongs to " + stream.device() + " but the symmetric heap of rank "
                    + rank + " lives on " + device + "; queue collectives on a stream of the heap's device");
        }
    }

    /**
     * Queues a collective kernel whose data phase uses the epochs {@code (epoch, epoch + barriers]}; its
     * final sync step ({@link #finalSyncs()}) takes the next one. {@code backup}: the all-reduce's backup
     * pointer, or the slot kernels' scatter warps (collectives.cu, entry points).
     */
    private void launch(CudaFunction f, CudaStream stream, int blocks, long src, long dst, long backup, long count, long chunk,
                        long barriers, long chunks, long timeoutNanos) {
        long syncEpoch = epoch + barriers + 1;
        KernelArgs a = KernelArgs.begin().ptr(src).ptr(dst).ptr(backup).u64(count).u64(chunk);
        for (long h : heaps) a.ptr(h);
        a.i32(rank).i32(worldSize).u64(dataOffset).u64(bankBytes).u64(epoch).u64(chunkSeq).u64(timeoutNanos)
                .ptr(status.devicePointer()).ptr(status.devicePointer() + DONE_OFFSET).u64(ticket + 1)
                .u64(withholdFinalSync ? syncEpoch | Long.MIN_VALUE : syncEpoch);
        f.launch(stream, blocks, CollectivePlan.THREADS, a);
        epoch = syncEpoch;
        chunkSeq += chunks;
        launched(blocks);
        finalSyncs++;
    }

    /**
     * How many collective kernels were queued here so far. Each ends with a final sync step: every
     * block whose part of the operation is complete meets the same block of every peer once more, so a
     * kernel that finishes without a timeout ({@link #check()} passes) has shown that every rank holds
     * its complete result; an operation that compares this count before and after knows whether it
     * queued one. A timeout in that step raises a {@link CollectiveTimeoutException} whose
     * {@link CollectiveTimeoutException#resultComplete()} is true.
     */
    public synchronized long finalSyncs() { return finalSyncs; }

    private static volatile boolean withholdFinalSync;

    /**
     * Fault injection for tests (GpuCheckWorker's {@code killsync} mode): from now on, the collective
     * kernels of this process skip their final sync step, leaving the peers waiting in theirs, as a
     * rank that dies right after its data phase would. Never set in production.
     */
    public static void withholdFinalSync(boolean on) { withholdFinalSync = on; }

    /**
     * A kernel of {@code blocks} with ticket {@code ticket + 1} was queued (blocks <= {@link #DONE_WORDS}: the
     * collectives launch at most the heap's blocksLimit <= MAX_BLOCKS, divide at most SCALE_MAX_BLOCKS).
     */
    private void launched(int blocks) {
        ticket++;
        ticketBlocks = blocks;
        ticketSeen = 0;
    }

    // ---- argument checks (no GPU needed) ---------------------------------------------------------

    static void checkAllReduce(long src, long dst, long count, DType dtype, long timeoutNanos, Algorithm algorithm,
                               long bankBytes) {
        if (dtype != DType.FLOAT32 && dtype != DType.BFLOAT16) {
            throw new IllegalArgumentException("GPU all_reduce sums float32 or bfloat16, not " + dtype.torchName());
        }
        if (algorithm == null) throw new IllegalArgumentException("algorithm must not be null (use Algorithm.AUTO)");
        if (count < 0) throw new IllegalArgumentException("element count must not be negative, got " + count);
        checkTimeout(timeoutNanos);
        if (count == 0) return;
        int es = dtype.byteSize();
        if (count > Long.MAX_VALUE / es) throw new IllegalArgumentException("element count " + count + " is too large");
        checkPointer("src", src, es, dtype);
        checkPointer("dst", dst, es, dtype);
        long bytes = count * es;
        if (src != dst && src < dst + bytes && dst < src + bytes) {
            throw new IllegalArgumentException("src [0x" + Long.toHexString(src) + ", +" + bytes + ") and dst [0x"
                    + Long.toHexString(dst) + ", +" + bytes + ") overlap; pass the same pointer for an in-place all_reduce,"
                    + " or separate buffers");
        }
        if (algorithm == Algorithm.ONE_SHOT && bytes > bankBytes) {
            throw new IllegalArgumentException("one-shot all_reduce takes at most " + bankBytes + " bytes (one bank of the"
                    + " symmetric heap), got " + bytes + "; use TWO_SHOT or AUTO, or a larger heap");
        }
    }

    /** The backup of an all-reduce of {@code count} elements: 0 (none), or an aligned buffer apart from src and dst. */
    static void checkBackup(long backup, long src, long dst, long count, DType dtype) {
        if (backup == 0 || count == 0) return;
        int es = dtype.byteSize();
        checkPointer("backup", backup, es, dtype);
        long bytes = count * es;
        checkApart(backup, src, "src", bytes);
        checkApart(backup, dst, "dst", bytes);
    }

    private static void checkApart(long backup, long p, String name, long bytes) {
        if (backup < p + bytes && p < backup + bytes) {
            throw new IllegalArgumentException("backup [0x" + Long.toHexString(backup) + ", +" + bytes + ") overlaps " + name
                    + " [0x" + Long.toHexString(p) + ", +" + bytes + "); the backup needs a buffer of its own");
        }
    }

    /** The checks every collective of equal blocks per rank shares; false when there is nothing to move. */
    private static boolean checkBlocks(long src, long dst, long bytesPerRank, int worldSize, long timeoutNanos) {
        if (bytesPerRank < 0) throw new IllegalArgumentException("bytes per rank must not be negative, got " + bytesPerRank);
        checkTimeout(timeoutNanos);
        if (bytesPerRank == 0) return false;
        if (bytesPerRank > Long.MAX_VALUE / worldSize) throw new IllegalArgumentException("bytes per rank " + bytesPerRank + " is too large");
        if (src == 0 || dst == 0) throw new IllegalArgumentException("src and dst must be device pointers, got null");
        return true;
    }

    static void checkAllGather(long src, long dst, long bytesPerRank, int worldSize, int rank, long timeoutNanos) {
        if (!checkBlocks(src, dst, bytesPerRank, worldSize, timeoutNanos)) return;
        long total = bytesPerRank * worldSize;
        long slot = dst + rank * bytesPerRank;
        if (src != slot && src < dst + total && dst < src + bytesPerRank) {
            throw new IllegalArgumentException("src [0x" + Long.toHexString(src) + ", +" + bytesPerRank + ") overlaps dst [0x"
                    + Long.toHexString(dst) + ", +" + total + ") other than at this rank's slot (0x" + Long.toHexString(slot)
                    + "); pass dst + rank * bytesPerRank for an in-place all_gather, or separate buffers");
        }
    }

    static void checkReduceScatter(long src, long dst, long countPerRank, DType dtype, int worldSize, long timeoutNanos) {
        if (dtype != DType.FLOAT32 && dtype != DType.BFLOAT16) {
            throw new IllegalArgumentException("GPU reduce_scatter sums float32 or bfloat16, not " + dtype.torchName());
        }
        if (countPerRank < 0) throw new IllegalArgumentException("element count per rank must not be negative, got " + countPerRank);
        checkTimeout(timeoutNanos);
        if (countPerRank == 0) return;
        int es = dtype.byteSize();
        if (countPerRank > Long.MAX_VALUE / es / worldSize) {
            throw new IllegalArgumentException("element count per rank " + countPerRank + " is too large");
        }
        checkPointer("src", src, es, dtype);
        checkPointer("dst", dst, es, dtype);
        long in = countPerRank * es * worldSize;
        long out = countPerRank * es;
        if (src < dst + out && dst < src + in) {
            throw new IllegalArgumentException("src [0x" + Long.toHexString(src) + ", +" + in + ") and dst [0x"
                    + Long.toHexString(dst) + ", +" + out + ") overlap; reduce_scatter needs separate buffers");
        }
    }

    static void checkAllToAll(long src, long dst, long bytesPerRank, int worldSize, long timeoutNanos) {
        if (!checkBlocks(src, dst, bytesPerRank, worldSize, timeoutNanos)) return;
        long total = bytesPerRank * worldSize;
        if (src < dst + total && dst < src + total) {
            throw new IllegalArgumentException("src [0x" + Long.toHexString(src) + ", +" + total + ") and dst [0x"
                    + Long.toHexString(dst) + ", +" + total + ") overlap; all_to_all needs separate buffers");
        }
    }

    static void checkDivide(long ptr, long count, DType dtype, double divisor) {
        if (dtype != DType.FLOAT32 && dtype != DType.BFLOAT16) {
            throw new IllegalArgumentException("GPU divide takes float32 or bfloat16, not " + dtype.torchName());
        }
        if (count < 0) throw new IllegalArgumentException("element count must not be negative, got " + count);
        float d = (float) divisor;
        if (!Float.isFinite(d) || d == 0) {
            throw new IllegalArgumentException("the divisor must be finite and non-zero as a float32, got " + divisor);
        }
        if (count == 0) return;
        int es = dtype.byteSize();
        if (count > Long.MAX_VALUE / es) throw new IllegalArgumentException("element count " + count + " is too large");
        checkPointer("ptr", ptr, es, dtype);
    }

    private static void checkTimeout(long timeoutNanos) {
        if (timeoutNanos <= 0 || timeoutNanos > MAX_TIMEOUT_NANOS) {
            throw new IllegalArgumentException("timeout must be 1 ns .. 1 h, got " + timeoutNanos + " ns");
        }
    }

    private static void checkPointer(String name, long p, int alignment, DType dtype) {
        if (p == 0) throw new IllegalArgumentException(name + " must be a device pointer, got null");
        if (p % alignment != 0) {
            throw new IllegalArgumentException(name + " 0x" + Long.toHexString(p) + " is not aligned to the " + alignment
                    + " bytes of " + dtype.torchName());
        }
    }

    /** Frees the status memory (not the heap or the module); idempotent. */
    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        status.close();
    }

    @Override
    public String toString() {
        return "CudaCollectives(" + heap + ", one-shot up to " + oneShotMaxBytes + " bytes, two-shot "
                + twoShotVariant.name().toLowerCase(java.util.Locale.ROOT) + ")";
    }
}
