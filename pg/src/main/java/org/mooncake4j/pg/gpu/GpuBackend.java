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
 * last kernel stores into page-locked memory ({@link CudaCollectives#kernelDone}, with a
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
    /** Two backup buffers: an operation queued behind an unchecked one uses the other (see {@link #deferNext}). */
    private final DeviceBuffer[] backups = new DeviceBuffer[2];
    /** The exchange of the current heap, whose last round is deleted when the next heap is built or on close. */
    private StoreExchange lastExchange;
    /** The collectives' ticket when the current operation began: it queued a kernel when the ticket moved. */
    private long ticketAtStart;
    /** The collectives' count of kernels with a final sync step when the current operation began. */
    private long syncsAtStart;
    /** Per backup buffer: where the in-place operation's input came from (put back from {@link #savedCopy} on a redo). */
    private final long[] savedPtr = new long[2];
    private final long[] savedBytes = new long[2];
    /** Where in that backup buffer the kernel copied it. */
    private final long[] savedCopy = new long[2];
    /** The backup buffer of the current operation, -1 when it has none. */
    private int currentSlot = -1;
    /** Set by {@link #deferNext}: the current operation's finish records it as queued (with this op) instead of waiting. */
    private boolean deferNext;
    private Object deferredOp;
    /** Operations whose kernel is queued but not yet checked, oldest first (at most two: see {@link #deferNext}). */
    private final Queued[] queued = {new Queued(), new Queued()};
    private int queuedHead;
    private int queuedCount;
    /** After {@link #checkOldest} reported a failure: the failed operation's result was complete, and its backup buffer. */
    private boolean failedResultComplete;
    private int failedSlot = -1;

    /** A queued operation: the caller's description of it, its kernel's ticket and grid, the members it ran over, its backup buffer. */
    private static final class Queued {
        Object op;
        CudaCollectives k;
        long ticket;
        int blocks;
        int[] members;
        int position;
        int slot;
    }
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
        // not the buffer of the operation queued unchecked (at most one when a kernel is queued): its redo may need it
        int slot = queuedCount > 0 && queued[queuedHead].slot == 0 ? 1 : 0;
        long copy = backup(slot, ptr, bytes);
        k.allReduce(ptr, ptr, count, dtype, stream, kernelTimeoutNanos, CudaCollectives.Algorithm.AUTO, copy);
        savedPtr[slot] = ptr;
        savedBytes[slot] = bytes;
        savedCopy[slot] = copy;
        currentSlot = slot;
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

    // ---- queued operations -------------------------------------------------------------------

    /**
     * Whether an operation over {@code members} in {@code epoch} can be queued behind the unchecked
     * ones: the heap for them is built (building one is a collective exchange that must not wait
     * behind unchecked kernels) and fewer than two are unchecked.
     */
    public boolean canQueue(long epoch, int[] members) {
        return coll != null && heapEpoch == epoch && java.util.Arrays.equals(heapMembers, members) && queuedCount < 2;
    }

    /**
     * Makes the next operation (one collective kernel: an all-reduce SUM, all-gather, reduce-scatter
     * SUM or all-to-all with every rank among the members) return as soon as its kernel is queued,
     * without waiting for it: the process group checks it later ({@link #checkOldest}), so the next
     * operation's kernel is queued while this one runs, as consecutive NCCL calls are. Its result
     * counts only once checked. A kernel that times out sets its heap's abort word, and every kernel
     * queued after it on this GPU then does nothing (collectives.cu, begin_block): those operations
     * are run again, from their untouched inputs, after the failed one is settled. {@code op} is the
     * caller's description of the operation, handed back by {@link #queuedOp}.
     */
    public void deferNext(Object op) {
        deferNext = true;
        deferredOp = op;
    }

    /** Clears a {@link #deferNext} that no operation took (its body failed before queueing a kernel). */
    public void cancelDefer() {
        deferNext = false;
        deferredOp = null;
    }

    /** How many operations are queued unchecked. */
    public int queuedCount() { return queuedCount; }

    /** The description of the {@code i}-th oldest unchecked operation ({@code i < queuedCount()}). */
    public Object queuedOp(int i) { return queued[(queuedHead + i) % 2].op; }

    /**
     * Waits (with a deadline) for the oldest unchecked operation's kernel and checks it. Returns null
     * when it completed (it is done; the one behind it, if any, stays queued). Otherwise returns the
     * failure as a {@link Channels.WaitFailure} naming the first missing rank: the stream is drained
     * (the kernels behind it did nothing), the heap dropped, and every queued operation forgotten;
     * {@link #failedResultComplete()} tells whether the failure was in the final sync step with this
     * rank's result complete, and {@link #restoreFailedInput()} puts the failed operation's input back.
     */
    public Channels.WaitFailure checkOldest() {
        Queued q = queued[queuedHead];
        awaitKernel(q.k, q.ticket, q.blocks, kernelTimeoutNanos + STREAM_GRACE_NANOS);
        try {
            q.k.check(q.ticket);
            queuedHead = (queuedHead + 1) % 2;
            queuedCount--;
            q.k = null;
            q.op = null;
            return null;
        } catch (CollectiveTimeoutException e) {
            failedResultComplete = e.resultComplete();
            failedSlot = q.slot;
            int[] members = q.members;
            int position = q.position;
            clearQueued();   // the kernels queued behind it do nothing; timedOut drains the stream before the heap goes
            return timedOut(e, members, position, "queued operation");
        }
    }

    private void clearQueued() {
        for (Queued x : queued) {
            x.k = null;
            x.op = null;
        }
        queuedCount = 0;
        queuedHead = 0;
    }

    /**
     * A kernel that timed out waiting for peers ({@code members}, this rank at {@code position}): logs
     * it, waits for the stream to drain (every block has signalled; the kernel must retire before its
     * heap and status memory go), drops the heap (it is rebuilt for the next epoch), and returns the
     * failure naming the first missing group rank (the kernel names heap positions).
     */
    private Channels.WaitFailure timedOut(CollectiveTimeoutException e, int[] members, int position, String what) {
        List<Integer> missing = e.missingRanks();
        int peer = missing.isEmpty() ? members[(position + 1) % members.length] : members[missing.get(0)];
        LOG.warn("gpu kernel timed out group={} rank={} ({}) in its {}: missing heap positions={} of members {}", group, rank, what,
                e.resultComplete() ? "final sync step" : "data phase", missing, java.util.Arrays.toString(members));
        awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
        closeHeap();
        return new Channels.WaitFailure(peer, true, e);
    }

    /**
     * Forgets every queued operation after {@link #checkOldest} threw (the GPU did not finish in time):
     * their kernels' outcome is unknown, and the heap is dropped.
     */
    public void forgetQueued() {
        clearQueued();
        try {
            closeHeap();
        } catch (RuntimeException e) {
            LOG.debug("group={} rank={}: closing the heap after a hung GPU: {}", group, rank, e.toString());
        }
    }

    /** After {@link #checkOldest} reported a failure: whether it happened in the final sync step with this rank's result complete. */
    public boolean failedResultComplete() { return failedResultComplete; }

    /**
     * After {@link #checkOldest} reported a failure: queues putting the failed operation's input back
     * from its backup (an in-place all-reduce; nothing for the others), before its redo.
     */
    public void restoreFailedInput() {
        restore(failedSlot);
        failedSlot = -1;
    }

    /** Puts the input of the last in-place all-reduce back (queued on the stream, before the redo's kernel). */
    private void restoreInput() {
        restore(currentSlot);
    }

    private void restore(int slot) {
        if (slot >= 0) stream.copyDeviceToDevice(savedCopy[slot], savedPtr[slot], savedBytes[slot]);
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
    private long backup(int slot, long ptr, long bytes) {
        long need = bytes + 16;
        DeviceBuffer b = backups[slot];
        if (b == null || b.size() < need) {
            if (b != null) {
                awaitStream(kernelTimeoutNanos + STREAM_GRACE_NANOS);
                b.close();
                backups[slot] = null;
            }
            b = DeviceBuffer.allocate(device, Math.max(need, 1L << 20));
            backups[slot] = b;
        }
        return b.pointer() + (ptr & 15);
    }

    /** The collectives for an operation over {@code c}'s members (see {@link #heapFor}); marks where the operation's kernels begin. */
    private CudaCollectives collectives(CollectiveContext c) {
        CudaCollectives k = heapFor(c);
        ticketAtStart = k.lastTicket();
        syncsAtStart = k.finalSyncs();
        currentSlot = -1;
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
        if (deferNext) {
            deferNext = false;
            if (k == null || k.lastTicket() != ticketAtStart + 1 || k.finalSyncs() != syncsAtStart + 1 || queuedCount == 2) {
                throw new IllegalStateException("group '" + group + "' rank " + rank + ": an operation marked for queueing did not queue"
                        + " exactly one collective kernel");
            }
            Queued q = queued[(queuedHead + queuedCount) % 2];
            q.op = deferredOp;
            deferredOp = null;
            q.k = k;
            q.ticket = k.lastTicket();
            q.blocks = k.lastBlocks();
            q.members = heapMembers;
            q.position = c.position();
            q.slot = currentSlot;
            queuedCount++;
            return;
        }
        long limit = kernelTimeoutNanos + STREAM_GRACE_NANOS;
        if (k != null && k.lastTicket() != ticketAtStart) awaitKernel(k, k.lastTicket(), k.lastBlocks(), limit);
        else awaitStream(limit);
        if (k == null) return;
        boolean synced = k.finalSyncs() != syncsAtStart;
        try {
            k.check();
            if (synced) c.syncedOnDevice();
        } catch (CollectiveTimeoutException e) {
            Channels.WaitFailure f = timedOut(e, heapMembers, c.position(), "epoch " + c.epoch() + " op #" + c.opSeq());
            if (!synced || !e.resultComplete()) throw f;
            c.syncFailedOnDevice(f);   // returns when the agreement commits the result, else throws f
        }
    }

    /**
     * How long a wait for the GPU spins before it parks between looks. A park of 20 us sleeps 50-80 us
     * on Linux (timer slack), which a spin-count limit made every operation longer than about a
     * millisecond pay at its end (2445 us per 512 MiB all-reduce against 2372 us of kernel); spinning
     * by time covers the largest operations that are timed (a 1 GiB all-reduce takes about 5 ms).
     */
    private static final long SPIN_NANOS = 20_000_000L;

    /** Polls an event recorded now until the stream's work is done; gives up {@code limitNanos} from now. */
    private void awaitStream(long limitNanos) {
        done.record(stream);
        long start = System.nanoTime();
        while (!done.query()) {
            long waited = System.nanoTime() - start;
            if (waited < SPIN_NANOS) {
                Thread.onSpinWait();
                continue;
            }
            if (waited > limitNanos) throw hung(limitNanos);
            java.util.concurrent.locks.LockSupport.parkNanos(20_000);
        }
    }

    /**
     * Polls the completion words of {@code k}'s launch {@code ticket} of {@code blocks} blocks
     * (page-locked memory, no driver call) until every block has stored its ticket; gives up
     * {@code limitNanos} from now. Past the spinning phase (a long operation) it also records the event
     * once and queries it while parked: a kernel that faulted never stores its words, and the event
     * reports the driver's error at once instead of after the deadline (its completion also implies the
     * kernel's, words and status included).
     */
    private void awaitKernel(CudaCollectives k, long ticket, int blocks, long limitNanos) {
        if (k.kernelDone(ticket, blocks)) return;
        long start = System.nanoTime();
        boolean recorded = false;
        while (!k.kernelDone(ticket, blocks)) {
            long waited = System.nanoTime() - start;
            if (waited < SPIN_NANOS) {
                Thread.onSpinWait();
                continue;
            }
            if (!recorded) {
                done.record(stream);
                recorded = true;
            } else if (done.query()) {
                return;
            }
            if (waited > limitNanos) throw hung(limitNanos);
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
        for (DeviceBuffer b : backups) if (b != null) b.close();
        done.close();
        stream.close();
        kernels.close();
    }

    @Override
    public String toString() {
        return "GpuBackend(" + device + ", group " + group + ", heap " + (heap == null ? "none" : heap.toString()) + ")";
    }
}
