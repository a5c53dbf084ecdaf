package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * Page-locked host memory that GPUs can read and write directly (mapped into the unified address
 * space): the target of asynchronous copies that overlap with kernels, and the home of host-visible
 * words that kernels write (e.g. the result of {@code timed_flag_wait}) and the host polls.
 *
 * <p>Threading: the segment is shared memory like any other; {@link #close()} must not race with use
 * by the host or by queued GPU work. Creation and {@link #close()} make the device current on the
 * calling thread first (see {@link CudaDevice}).
 *
 * <p>Ownership: {@link #allocate} memory is owned and freed by {@link #close()}; for
 * {@link #register}ed memory {@link #close()} only unregisters it and the caller keeps owning it.
 */
public final class PinnedHostMemory implements AutoCloseable {
    private final CudaDevice device;
    private final MemorySegment segment;
    private final boolean owned;
    private final long devicePointer;
    private boolean closed;

    private PinnedHostMemory(CudaDevice device, MemorySegment segment, boolean owned) {
        this.device = device;
        this.segment = segment;
        this.owned = owned;
        this.devicePointer = CudaDriver.cuPointerGetAttributeLong(CudaDriver.CU_POINTER_ATTRIBUTE_DEVICE_POINTER,
                segment.address());
    }

    /** {@code bytes} of new page-locked memory ({@code cuMemAllocHost}), not zeroed. */
    public static PinnedHostMemory allocate(CudaDevice device, long bytes) {
        if (bytes <= 0) throw new IllegalArgumentException("size must be positive, got " + bytes);
        device.makeCurrent();
        MemorySegment s = CudaDriver.cuMemAllocHost(bytes);
        try {
            return new PinnedHostMemory(device, s, true);
        } catch (RuntimeException e) {
            CudaDriver.cuMemFreeHost(s);
            throw e;
        }
    }

    /** Page-locks and maps existing native memory ({@code cuMemHostRegister}, portable and device-mapped). */
    public static PinnedHostMemory register(CudaDevice device, MemorySegment memory) {
        if (!memory.isNative()) throw new IllegalArgumentException("only native (off-heap) memory can be page-locked");
        device.makeCurrent();
        CudaDriver.cuMemHostRegister(memory,
                CudaDriver.CU_MEMHOSTREGISTER_PORTABLE | CudaDriver.CU_MEMHOSTREGISTER_DEVICEMAP);
        try {
            return new PinnedHostMemory(device, memory, false);
        } catch (RuntimeException e) {
            CudaDriver.cuMemHostUnregister(memory);
            throw e;
        }
    }

    /** The host view. */
    public MemorySegment segment() { return segment; }

    /** The address kernels use for this memory. */
    public long devicePointer() { return devicePointer; }

    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        device.makeCurrent();
        if (owned) CudaDriver.cuMemFreeHost(segment);
        else CudaDriver.cuMemHostUnregister(segment);
    }
}
