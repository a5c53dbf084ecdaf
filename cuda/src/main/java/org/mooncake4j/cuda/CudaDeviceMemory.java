package org.mooncake4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.ConcurrentHashMap;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.DeviceMemory;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * The {@link DeviceMemory} provider for CUDA, found by core through {@link java.util.ServiceLoader}, so
 * that {@code Tensor.empty(dtype, Device.cuda(i), ...)}, {@code to(Device)} and {@code copyFrom} work on
 * CUDA tensors. Memory comes from {@code cuMemAlloc} (so it can also be shared with a legacy IPC
 * handle).
 *
 * <p>Copies are synchronous: they return when the bytes have arrived. They run on a copy stream of
 * the device (one per device, made on first use and kept for the life of the process), so they wait
 * for nothing else: work on other streams that produces or consumes the tensor must be synchronized
 * by the caller (e.g. {@link CudaStream#synchronize()}).
 *
 * <p>Threading: thread-safe; every method makes the tensor's device current on the calling thread
 * first (see {@link CudaDevice}). Ownership: the tensor that allocated a pointer frees it.
 */
public final class CudaDeviceMemory implements DeviceMemory {
    private static final ConcurrentHashMap<CudaDevice, CudaStream> COPY_STREAMS = new ConcurrentHashMap<>();

    public CudaDeviceMemory() {}

    @Override
    public boolean serves(Device.Type type) { return type == Device.Type.CUDA; }

    @Override
    public long allocate(Device device, long bytes) {
        cuda(device).makeCurrent();
        return CudaDriver.cuMemAlloc(bytes);
    }

    @Override
    public void free(Device device, long pointer) {
        cuda(device).makeCurrent();
        CudaDriver.cuMemFree(pointer);
    }

    @Override
    public void copyToHost(Device device, long src, MemorySegment dst, long bytes) {
        CudaStream stream = copyStream(device);
        if (dst.isNative()) {
            stream.copyDeviceToHost(src, dst, bytes);
            stream.synchronize();
            return;
        }
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment s = staging.allocate(bytes, 16);
            stream.copyDeviceToHost(src, s, bytes);
            stream.synchronize();
            MemorySegment.copy(s, 0, dst, 0, bytes);
        }
    }

    @Override
    public void copyFromHost(Device device, MemorySegment src, long dst, long bytes) {
        CudaStream stream = copyStream(device);
        if (src.isNative()) {
            stream.copyHostToDevice(src, dst, bytes);
            stream.synchronize();
            return;
        }
        try (Arena staging = Arena.ofConfined()) {
            MemorySegment s = staging.allocate(bytes, 16);
            MemorySegment.copy(src, 0, s, 0, bytes);
            stream.copyHostToDevice(s, dst, bytes);
            stream.synchronize();
        }
    }

    @Override
    public void copyOnDevice(Device device, long src, long dst, long bytes) {
        CudaStream stream = copyStream(device);
        stream.copyDeviceToDevice(src, dst, bytes);
        stream.synchronize();
    }

    private static CudaDevice cuda(Device device) {
        if (!device.isCuda()) throw new IllegalArgumentException("the CUDA provider got a " + device + " tensor");
        return CudaDevice.get(device.index());
    }

    private static CudaStream copyStream(Device device) {
        return COPY_STREAMS.computeIfAbsent(cuda(device), CudaStream::create);
    }
}
