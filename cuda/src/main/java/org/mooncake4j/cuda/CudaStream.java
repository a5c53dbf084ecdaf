package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * A non-blocking CUDA stream of one device: work queued on it runs in order, concurrently with other
 * streams, and does not synchronize with the legacy default stream.
 *
 * <p>Threading: queueing work is thread-safe (the driver orders calls from several threads in call
 * order). Each method makes the stream's device current on the calling thread first (see
 * {@link CudaDevice}). {@link #close()} must not race with other use.
 *
 * <p>Ownership: the creator owns the stream and destroys it with {@link #close()}; work already queued
 * still completes. Host memory passed to the asynchronous copies must stay valid (and should be
 * page-locked, see {@link PinnedHostMemory}) until the copy has completed.
 */
public final class CudaStream implements AutoCloseable {
    private final CudaDevice device;
    private final MemorySegment handle;
    private boolean closed;

    private CudaStream(CudaDevice device, MemorySegment handle) {
        this.device = device;
        this.handle = handle;
    }

    /** A new non-blocking stream on {@code device}. */
    public static CudaStream create(CudaDevice device) {
        device.makeCurrent();
        return new CudaStream(device, CudaDriver.cuStreamCreate(CudaDriver.CU_STREAM_NON_BLOCKING));
    }

    public CudaDevice device() { return device; }

    /** The {@code CUstream} handle. */
    public MemorySegment handle() { return handle; }

    /** Blocks the calling thread until all work queued so far has completed. */
    public void synchronize() {
        device.makeCurrent();
        CudaDriver.cuStreamSynchronize(handle);
    }

    /** Later work on this stream waits for {@code event}'s last record; the host does not wait. */
    public void waitFor(CudaEvent event) {
        device.makeCurrent();
        CudaDriver.cuStreamWaitEvent(handle, event.handle());
    }

    /** Queues a copy of {@code bytes} from host memory {@code src} (native) to device memory {@code dst}. */
    public void copyHostToDevice(MemorySegment src, long dst, long bytes) {
        checkNative(src, bytes);
        device.makeCurrent();
        CudaDriver.cuMemcpyHtoDAsync(dst, src, bytes, handle);
    }

    /** Queues a copy of {@code bytes} from device memory {@code src} to host memory {@code dst} (native). */
    public void copyDeviceToHost(long src, MemorySegment dst, long bytes) {
        checkNative(dst, bytes);
        device.makeCurrent();
        CudaDriver.cuMemcpyDtoHAsync(dst, src, bytes, handle);
    }

    /** Queues a copy between device pointers (any devices of this process, via unified addressing). */
    public void copyDeviceToDevice(long src, long dst, long bytes) {
        device.makeCurrent();
        CudaDriver.cuMemcpyDtoDAsync(dst, src, bytes, handle);
    }

    /** Queues {@code dst[0..bytes) = value} on this stream. */
    public void fill(long dst, byte value, long bytes) {
        device.makeCurrent();
        CudaDriver.cuMemsetD8Async(dst, value, bytes, handle);
    }

    private static void checkNative(MemorySegment host, long bytes) {
        if (!host.isNative()) throw new IllegalArgumentException("asynchronous copies need native (off-heap) host memory");
        if (host.byteSize() < bytes) {
            throw new IllegalArgumentException("host memory of " + host.byteSize() + " bytes is smaller than the copy ("
                    + bytes + " bytes)");
        }
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        device.makeCurrent();
        CudaDriver.cuStreamDestroy(handle);
    }

    @Override
    public String toString() { return "CudaStream(" + device + ", 0x" + Long.toHexString(handle.address()) + ")"; }
}
