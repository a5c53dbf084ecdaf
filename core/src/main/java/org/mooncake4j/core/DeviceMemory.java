package org.mooncake4j.core;

import java.lang.foreign.MemorySegment;

/**
 * Service interface for accelerator memory, implemented by the CUDA module and found with
 * {@link java.util.ServiceLoader}. Core knows nothing of CUDA; without an implementation on the
 * class path, device tensors report that clearly.
 */
public interface DeviceMemory {
    /** True when this provider serves the device type (e.g. CUDA). */
    boolean serves(Device.Type type);

    /** Allocates {@code bytes} on the device; returns the device pointer. */
    long allocate(Device device, long bytes);

    void free(Device device, long pointer);

    void copyToHost(Device device, long src, MemorySegment dst, long bytes);

    void copyFromHost(Device device, MemorySegment src, long dst, long bytes);

    void copyOnDevice(Device device, long src, long dst, long bytes);

    static DeviceMemory find(Device.Type type) {
        for (DeviceMemory m : java.util.ServiceLoader.load(DeviceMemory.class)) {
            if (m.serves(type)) return m;
        }
        throw new IllegalStateException("No " + type.name().toLowerCase(java.util.Locale.ROOT)
                + " support is on the class path: add the mooncake4j-cuda module (and run on a host with the NVIDIA driver) to use device tensors.");
    }
}
