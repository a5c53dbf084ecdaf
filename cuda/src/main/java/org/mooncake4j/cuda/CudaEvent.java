package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * A CUDA event of one device: a marker recorded into a stream, which other streams can wait on
 * ({@link CudaStream#waitFor}) and the host can wait for ({@link #synchronize()}); timing events also
 * measure the GPU time between two records.
 *
 * <p>Threading: each method makes the event's device current on the calling thread first (see
 * {@link CudaDevice}). {@link #close()} must not race with other use.
 *
 * <p>Ownership: the creator owns the event and destroys it with {@link #close()}.
 */
public final class CudaEvent implements AutoCloseable {
    private final CudaDevice device;
    private final MemorySegment handle;
    private final boolean timing;
    private boolean closed;

    private CudaEvent(CudaDevice device, MemorySegment handle, boolean timing) {
        this.device = device;
        this.handle = handle;
        this.timing = timing;
    }

    /** A new event; {@code timing} false makes record and wait cheaper but {@link #elapsedMillis} unusable. */
    public static CudaEvent create(CudaDevice device, boolean timing) {
        device.makeCurrent();
        return new CudaEvent(device, CudaDriver.cuEventCreate(timing ? CudaDriver.CU_EVENT_DEFAULT
                : CudaDriver.CU_EVENT_DISABLE_TIMING), timing);
    }

    public CudaDevice device() { return device; }

    /** The {@code CUevent} handle. */
    public MemorySegment handle() { return handle; }

    /** Records this event at the current end of {@code stream}'s queue. */
    public void record(CudaStream stream) {
        device.makeCurrent();
        CudaDriver.cuEventRecord(handle, stream.handle());
    }

    /** True when the work before the last record has completed (never blocks). */
    public boolean query() {
        device.makeCurrent();
        return CudaDriver.cuEventQuery(handle);
    }

    /** Blocks the calling thread until the work before the last record has completed. */
    public void synchronize() {
        device.makeCurrent();
        CudaDriver.cuEventSynchronize(handle);
    }

    /** GPU milliseconds from {@code start}'s record to {@code end}'s; both must have completed. */
    public static float elapsedMillis(CudaEvent start, CudaEvent end) {
        if (!start.timing || !end.timing) throw new IllegalArgumentException("both events must be created with timing enabled");
        start.device.makeCurrent();
        return CudaDriver.cuEventElapsedTime(start.handle, end.handle);
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        device.makeCurrent();
        CudaDriver.cuEventDestroy(handle);
    }
}
