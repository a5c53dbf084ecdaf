package org.mooncake4j.cuda;

import org.mooncake4j.cuda.internal.CudaDriver;

/** How a {@code cuMemCreate} allocation is shared with other processes ({@code CUmemAllocationHandleType}). */
public enum ShareableHandleType {
    /** A file descriptor; other processes on the same host take it over (see {@link ShareableHandle}). */
    POSIX_FILE_DESCRIPTOR(CudaDriver.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
    /**
     * A 64-byte fabric handle that any process in the same NVLink fabric (multi-node NVLink, IMEX
     * channel) can import; needed for cross-node NVLink.
     */
    FABRIC(CudaDriver.CU_MEM_HANDLE_TYPE_FABRIC);

    private final int cuValue;

    ShareableHandleType(int cuValue) { this.cuValue = cuValue; }

    /** The {@code CUmemAllocationHandleType} value. */
    public int cuValue() { return cuValue; }
}
