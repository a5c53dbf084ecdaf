package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * A kernel of a loaded {@link CudaModule}, launched with {@link KernelArgs}.
 *
 * <p>Threading: launches are thread-safe; each makes the module's device current on the calling
 * thread first (see {@link CudaDevice}). A launch queues the kernel and returns; it never waits for
 * the GPU, and allocates nothing.
 *
 * <p>Ownership: the function belongs to its module and is invalid once the module is closed.
 */
public final class CudaFunction {
    private final CudaModule module;
    private final String name;
    private final MemorySegment handle;

    CudaFunction(CudaModule module, String name, MemorySegment handle) {
        this.module = module;
        this.name = name;
        this.handle = handle;
    }

    public String name() { return name; }

    public CudaModule module() { return module; }

    /** A one-dimensional launch with no dynamic shared memory. */
    public void launch(CudaStream stream, int blocks, int threadsPerBlock, KernelArgs args) {
        launch(stream, blocks, 1, 1, threadsPerBlock, 1, 1, 0, args);
    }

    /** Queues the kernel on {@code stream}, which must belong to the module's device. */
    public void launch(CudaStream stream, int gridX, int gridY, int gridZ, int blockX, int blockY, int blockZ,
                       int sharedBytes, KernelArgs args) {
        checkStream(stream);
        MemorySegment params = args.pointersForLaunch();
        module.device().makeCurrent();
        CudaDriver.cuLaunchKernel(handle, gridX, gridY, gridZ, blockX, blockY, blockZ, sharedBytes, stream.handle(),
                params, name);
    }

    /**
     * Queues the kernel on {@code stream} as a programmatic dependent of the kernel queued just before it
     * there (CUDA's programmatic dependent launch, compute capability 9.0+): its blocks may start once
     * every block of that kernel has executed {@code griddepcontrol.launch_dependents} (or finished),
     * instead of after that kernel has finished. The kernel must therefore not rely on seeing that
     * kernel's writes unless it synchronizes with them itself (or executes {@code griddepcontrol.wait}).
     * Work queued after it still waits for both. Without a kernel just before it, this is {@link #launch}.
     */
    public void launchDependent(CudaStream stream, int blocks, int threadsPerBlock, int sharedBytes, KernelArgs args) {
        checkStream(stream);
        MemorySegment params = args.pointersForLaunch();
        module.device().makeCurrent();
        CudaDriver.cuLaunchKernelProgrammatic(handle, blocks, 1, 1, threadsPerBlock, 1, 1, sharedBytes, stream.handle(), params, name);
    }

    private void checkStream(CudaStream stream) {
        if (stream.device() != module.device()) {
            throw new IllegalArgumentException("kernel " + name + " is loaded on " + module.device()
                    + " but the stream belongs to " + stream.device());
        }
    }

    /** Allows launches with up to {@code bytes} of dynamic shared memory (beyond the 48 KiB default). */
    public void setMaxDynamicSharedMemory(int bytes) {
        module.device().makeCurrent();
        CudaDriver.cuFuncSetAttribute(handle, CudaDriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
    }

    @Override
    public String toString() { return "CudaFunction(" + name + " on " + module.device() + ")"; }
}
