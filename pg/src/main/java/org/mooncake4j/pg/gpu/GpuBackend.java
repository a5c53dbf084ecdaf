package org.mooncake4j.pg.gpu;

import java.time.Duration;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.cuda.CollectiveTimeoutException;
import org.mooncake4j.cuda.CudaCollectives;
import org.mooncake4j.cuda.CudaDevice;
import org.mooncake4j.cuda.CudaEvent;
import org.mooncake4j.cuda.CudaModule;
import org.mooncake4j.cuda.CudaStream;
import org.mooncake4j.cuda.DeviceBuffer;
import org.mooncake4j.cuda.ExchangeTimeoutException;
import org.mooncake4j.cuda.SymmetricHeap;
import org.mooncake4j.pg.ReduceOp;
import org.mooncake4j.pg.collective.Backup;
import org.mooncake4j.pg.collective.Channels;
import org.mooncake4j.pg.collective.CollectiveContext;
import org.mooncake4j.transfer.store.MetadataStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The device side of a process group of backend {@code mooncake}: one GPU, one stream, and a
 * {@link SymmetricHeap} with its {@link CudaCollectives} over the members of the current epoch.
 *
 * <p>Kernel operations run inside the group's operation loop, like the host algorithms: the kernel is
 * queued on the group's stream, the calling thread polls the completion words that the operation's
 * last kernel stores into page-locked memory ({@link CudaCollectives#lastKernelDone()}, with a
 * deadline; no event, no driver call per poll), and a kernel that timed out waiting for peers
 * becomes a {@link Channels.WaitFailure} naming the first missing rank. The group then runs the same
 * agreement as the CPU backend and redoes the operation over the agreed members, on a heap rebuilt
 * for the new epoch: the heap's ranks are the members' positions, so a heap over survivors works like
 * a smaller group. Work without a kernel (fills, host-side restores) is awaited with an event.
 *
 * <p>An in-place all-reduce has its kernel write a device-side backup of the input as it reads it
 * (complete when the kernel is done, also after a timeout), so a redo starts from the input, not from
 * a partly reduced buffer, without a separate copy; out-of-place operations leave their input intact
 * and need none.
 *
 * <p>Threading: the group calls it under its operation lock, one operation at a time.
 */
public final class GpuBackend implements AutoCloseable {
    /** Heap size per group in MiB (two banks of about half of it). */
    public static final String HEAP_ENV = "MOONCAKE_GPU_HEAP_MB";
    public static final String HEAP_PROPERTY = "mooncake4j.gpuHeapMb";
    static final long DEFAULT_HEAP_MIB = 257;
    /** How long past the kernels' own deadline the host waits for the stream before calling the GPU hung. */
    private static final long STREAM_GRACE_NANOS = 30_000_000_000L;
    private static final Logger LOG = LoggerFactory.getLogger(GpuBackend.class);

    private final CudaDevice device;
    private final CudaModule kernels;
    private final CudaStream stream;
    private final CudaEvent done;
    private final MetadataStore store;
    private final String keyPrefix;
    private final String group;
    private final int rank;
    private final Duration timeout;
    private final long heapBytes;
    /** How long a kernel waits for peers: the group timeout. */
    private final long kernelTimeoutNanos;
    private SymmetricHeap heap;
    private CudaCollectives coll;
    private long heapEpoch = -1;
    private int[] heapMembers = new int[0];
    private DeviceBuffer backup;
    /** The exchange of the current heap, whose last round is deleted when the next heap is built or on close. */
    private StoreExchange lastExchange;
    /** The collectives' ticket when the current operation began: it queued a kernel when the ticket moved. */
    private long ticketAtStart;
    /** The collectives' count of kernels with a final sync step when the current operation began. */
    private long syncsAtStart;
    /** Where the current in-place operation's input came from (put back from {@link #savedCopy} on a redo). */
    private long savedPtr;
    private long savedBytes;
    /** Where in {@link #backup} the kernel copied it. */
    private long savedCopy;
    private final Backup.Restorer restoreInput = this::restoreInput;
    private boolean closed;

    private GpuBackend(CudaDevice device, CudaModule kernels, CudaStream stream, CudaEvent done, MetadataStore store, String keyPrefix,
                       String group, int rank, Duration timeout, long heapBytes) {
        this.device = device;
        this.kernels = kernels;
        this.stream = stream;
        this.done = done;
        this.store = store;
        this.keyPrefix = keyPrefix;
        this.group = group;
        this.rank = rank;
        this.timeout = timeout;
        this.heapBytes = heapBytes;
        this.kernelTimeoutNanos = Math.min(timeout.toNanos(), CudaCollectives.MAX_TIMEOUT_NANOS);
    }

    /**
     * The device side of group {@code group}'s rank {@code rank} on CUDA device {@code ordinal}. Fails
     * with the driver's reason when there is no usable driver or device, and with
     * {@link CudaModule#KERNELS_NOT_BUILT_MESSAGE} when this build has no kernels.
     */
    public static GpuBackend open(int ordinal, MetadataStore store, String keyPrefix, String group, int rank, Duration timeout) {
        CudaDevice device = CudaDevice.get(ordinal);
        CudaModule kernels = CudaModule.loadKernels(device);
        CudaStream stream = null;
        try {
            stream = CudaStream.create(device);
            CudaEvent done = CudaEvent.create(device, false);
            return new GpuBackend(device, kernels, stream, done, store, keyPrefix, group, rank, timeout, heapMib() << 20);
        } catch (RuntimeException e) {
            if (stream != null) stream.close();
            kernels.close();
            throw e;
        }
    }

    static long heapMib() {
        String p = System.getProperty(HEAP_PROPERTY);
        String v = p != null && !p.isBlank() ? p : System.getenv(HEAP_ENV);
        if (v == null || v.isBlank()) return DEFAULT_HEAP_MIB;
        try {
            long mib = Long.parseLong(v.trim());
            if (mib < 1 || mib > 65536) throw new NumberFormatException();
            return mib;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(HEAP_ENV + " / -D" + HEAP_PROPERTY + " must be a size in MiB from 1 to 65536, got '" + v + "'");
        }
    }

    public CudaDevice device() { return device; }

    /** The stream the group's device work runs on. */
    public CudaStream stream() { return stream; }

    /** Whether an all-reduce of {@code dtype} with {@code op} runs as a kernel (else through host memory). */
    public static boolean allReduceKernel(DType dtype, ReduceOp op) {
        return (dtype == DType.FLOAT32 || dtype == DType.BFLOAT16) && (op == ReduceOp.SUM || op == ReduceOp.AVG);
    }

    /**
     * In-place all-reduce of {@code count} elements at device pointer {@code ptr} over the members of
     * {@code c}; AVG divides the sum by the member count. The kernel also copies the input to a device
     * backup as it reads it (complete when the kernel is done, timeout or not) that the group's redo
     * puts back ({@link org.mooncake4j.pg.collective.Backup#saveWith}); the restorer is registered only
     * once that kernel is queued, so a failure before (the heap exchange) leaves the untouched input
     * as it is.
     */
    public void allReduce(CollectiveContext c, long ptr, long count, DType dtype, ReduceOp op) {
        if (c.size() == 1 || count == 0) {
            finish(c, null);
            return;
        }
        long bytes = count * dtype.byteSize();
        CudaCollectives k = collectives(c);
        long copy = backup(ptr, bytes);
        k.allReduce(ptr, ptr, count, dtype, stream, kernelTimeoutNanos, CudaCollectives.Algorithm.AUTO, copy);
        savedPtr = ptr;
        savedBytes = bytes;
        savedCopy = copy;
        c.backup().saveWith(restoreInput);
        if (op == ReduceOp.AVG) k.divide(ptr, count, dtype, c.size(), stream);
        finish(c, k);
    }

    /**
     * All-gather of {@code bytesPerRank} from {@code src} into {@code dst} (rank order). Needs every
     * rank of the group among the members (the heap's positions are then the group ranks).
     */
    public void allGather(CollectiveContext c, long src, long dst, long bytesPerRank) {
        CudaCollectives k = collectives(c);
        k.allGather(src, dst, bytesPerRank, stream, kernelTimeoutNanos);
        finish(c, k);
    }

    /** Reduce-scatter (SUM, or AVG) of {@code countPerRank} elements per rank; every rank among the members. */
    public void reduceScatter(CollectiveContext c, long src, long dst, long countPerRank, DType dtype, ReduceOp op) {
        CudaCollectives k = collectives(c);
        k.reduceScatter(src, dst, countPerRank, dtype, stream, kernelTimeoutNanos);
        if (op == ReduceOp.AVG) k.divide(dst, countPerRank, dtype, c.size(), stream);
        finish(c, k);
    }

    /** All-to-all of equal blocks of {@code bytesPerRank}; every rank among the members. */
    public void allToAll(CollectiveContext c, long src, long dst, long bytesPerRank) {
        CudaCollectives k = collectives(c);
        k.allToAll(src, dst, bytesPerRank, stream, kernelTimeoutNanos);
        finish(c, k);
    }

    /** Puts the input of the last in-place all-reduce back (queued on the stream, before the redo's kernel). */
    private void restoreInput() {
        stream.copyDeviceToDevice(savedCopy, savedPtr, savedBytes);
    }

    /** Queues {@code dst[0..bytes) = 0} and waits for it (used to clear a dropped rank's output part). */
    public void zero(long dst, long bytes) {
        if (bytes <= 0) return;
        stream.fill(dst, (byte) 0, bytes);
        awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
    }

    /**
     * Room for a backup of {@code bytes} at {@code ptr}: a pointer into {@link #backup} with the same
     * alignment modulo 16 as {@code ptr} (the buffer itself is 256-byte aligned), so the kernel copies
     * with 16-byte vectors whenever it reads the input with them.
     */
    private long backup(long ptr, long bytes) {
        long need = bytes + 16;
        if (backup == null || backup.size() < need) {
            if (backup != null) {
                awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
                backup.close();
                backup = null;
            }
            long size = Math.max(need, 1L << 20);
            backup = DeviceBuffer.allocate(device, size);
        }
        return backup.pointer() + (ptr & 15);
    }

    /** The collectives for an operation over {@code c}'s members (see {@link #heapFor}); marks where the operation's kernels begin. */
    private CudaCollectives collectives(CollectiveContext c) {
        CudaCollectives k = heapFor(c);
        ticketAtStart = k.lastTicket();
        syncsAtStart = k.finalSyncs();
        return k;
    }

    /** The collectives of the heap over {@code c}'s members, built (collectively) on the first use in an epoch. */
    private CudaCollectives heapFor(CollectiveContext c) {
        if (closed) throw new IllegalStateException("the GPU side of group '" + group + "' is closed");
        if (coll != null && heapEpoch == c.epoch() && java.util.Arrays.equals(heapMembers, c.members())) return coll;
        // the last kernel on the old heap has stored its completion words, but may not have retired yet
        if (coll != null) awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
        closeHeap();
        int[] m = c.members().clone();
        int index = c.position();
        StoreExchange ex = new StoreExchange(store, keyPrefix + "gpuheap/" + c.epoch() + "/" + c.opSeq(), index, m, timeout);
        long t0 = System.nanoTime();
        try {
            heap = SymmetricHeap.create(device, index, m.length, heapBytes, ex);
        } catch (ExchangeTimeoutException e) {
            // the exchange names group ranks
            throw new Channels.WaitFailure(e.missingRanks().isEmpty() ? m[(index + 1) % m.length] : e.missingRanks().get(0), true, e);
        }
        try {
            coll = CudaCollectives.create(heap, kernels);
        } catch (RuntimeException e) {
            heap.close();
            heap = null;
            throw e;
        }
        heapEpoch = c.epoch();
        heapMembers = m;
        // the last round's key stays until the next heap is built (or close): deleting it now could
        // leave a slower member waiting for it until the timeout; the one before it goes now
        if (lastExchange != null) lastExchange.forgetLastRound();
        lastExchange = ex;
        LOG.info("gpu heap group={} rank={} epoch={} device={} members={} bytes={} sharing={} built in {} ms", group, rank, c.epoch(),
                device.ordinal(), java.util.Arrays.toString(m), heapBytes, heap.sharing().name().toLowerCase(Locale.ROOT),
                (System.nanoTime() - t0) / 1_000_000);
        return coll;
    }

    /**
     * Waits (with a deadline) until the queued work is done: the completion words of {@code k}'s last
     * kernel when this operation queued one ({@code k}'s ticket moved past {@link #ticketAtStart}), else
     * an event. A collective kernel ends with its own sync step among the members
     * ({@link CudaCollectives#finalSyncs()}), so when it passed, the group's host sync step is skipped
     * ({@link CollectiveContext#syncedOnDevice()}). A kernel that timed out waiting for peers is a
     * {@link Channels.WaitFailure} and the heap is dropped (it is rebuilt for the next epoch): in the
     * data phase it is thrown (the group agrees and redoes the operation); in the final sync step, with
     * this rank's result complete, the agreement decides whether the result stands, as after a failed
     * host sync step ({@link CollectiveContext#syncFailedOnDevice}).
     */
    private void finish(CollectiveContext c, CudaCollectives k) {
        long limit = kernelTimeoutNanos + STREAM_GRACE_NANOS;
        if (k != null && k.lastTicket() != ticketAtStart) awaitKernel(k, limit);
        else awaitStream(limit);
        if (k == null) return;
        boolean synced = k.finalSyncs() != syncsAtStart;
        try {
            k.check();
            if (synced) c.syncedOnDevice();
        } catch (CollectiveTimeoutException e) {
            int[] m = heapMembers; // the kernel names heap positions
            List<Integer> missing = e.missingRanks();
            int peer = missing.isEmpty() ? m[(c.position() + 1) % m.length] : m[missing.get(0)];
            LOG.warn("gpu kernel timed out group={} rank={} epoch={} op #{} in its {} missing heap positions={} of members {}", group, rank,
                    c.epoch(), c.opSeq(), e.resultComplete() ? "final sync step" : "data phase", missing, java.util.Arrays.toString(m));
            awaitStream(limit); // every block has signalled; let the kernel retire before its heap and status memory go
            closeHeap();
            Channels.WaitFailure f = new Channels.WaitFailure(peer, true, e);
            if (!synced || !e.resultComplete()) throw f;
            c.syncFailedOnDevice(f);   // returns when the agreement commits the result, else throws f
        }
    }

    /** Polls an event recorded now until the stream's work is done; gives up {@code limitNanos} from now. */
    private void awaitStream(long limitNanos) {
        done.record(stream);
        long start = System.nanoTime();
        for (int spins = 0; !done.query(); spins++) {
            if (spins < 20_000) {
                Thread.onSpinWait();
                continue;
            }
            if (System.nanoTime() - start > limitNanos) throw hung(limitNanos);
            java.util.concurrent.locks.LockSupport.parkNanos(20_000);
        }
    }

    /**
     * Polls the completion words of {@code k}'s last kernel (page-locked memory, no driver call) until
     * every block has stored its ticket; gives up {@code limitNanos} from now. Past the spinning phase
     * (a long operation) it also records the event once and queries it while parked: a kernel that
     * faulted never stores its words, and the event reports the driver's error at once instead of
     * after the deadline (its completion also implies the kernel's, words and status included).
     */
    private void awaitKernel(CudaCollectives k, long limitNanos) {
        if (k.lastKernelDone()) return;
        long start = System.nanoTime();
        boolean recorded = false;
        for (int spins = 0; !k.lastKernelDone(); spins++) {
            if (spins < 20_000) {
                Thread.onSpinWait();
                continue;
            }
            if (!recorded) {
                done.record(stream);
                recorded = true;
            } else if (done.query()) {
                return;
            }
            if (System.nanoTime() - start > limitNanos) throw hung(limitNanos);
            java.util.concurrent.locks.LockSupport.parkNanos(20_000);
        }
    }

    private IllegalStateException hung(long limitNanos) {
        return new IllegalStateException("rank " + rank + " of group '" + group + "': the GPU work on " + device + " did not finish within "
                + limitNanos / 1_000_000 + " ms although every kernel wait has a deadline; the GPU may be hung or shared with a"
                + " long-running job. Check nvidia-smi.");
    }

    private void closeHeap() {
        if (coll != null) coll.close();
        coll = null;
        if (heap != null) heap.close();
        heap = null;
        heapEpoch = -1;
        heapMembers = new int[0];
    }

    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        try {
            awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
        } catch (RuntimeException ignored) {
            // the GPU did not finish in time, or the context is already unusable; free what can be freed
        }
        closeHeap();
        try {
            // every member used the heap after reading this round, so its key can go
            if (lastExchange != null) lastExchange.forgetLastRound();
        } catch (RuntimeException e) {
            LOG.debug("group={} rank={}: could not delete the last heap exchange key at close: {}", group, rank, e.toString());
        }
        if (backup != null) backup.close();
        done.close();
        stream.close();
        kernels.close();
    }

    @Override
    public String toString() {
        return "GpuBackend(" + device + ", group " + group + ", heap " + (heap == null ? "none" : heap.toString()) + ")";
    }
}
