// Shared device helpers for the mooncake4j kernels. Every kernel is extern "C" so the host finds it
// by its plain name with cuModuleGetFunction, and every kernel loops grid-stride so the host may pick
// any grid size.
#pragma once

#include <cstdint>

namespace mooncake4j {

__device__ __forceinline__ uint64_t thread_index() {
    return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ uint64_t thread_count() {
    return static_cast<uint64_t>(gridDim.x) * blockDim.x;
}

// Nanoseconds from the GPU's global timer; comparable across SMs of one GPU.
__device__ __forceinline__ uint64_t global_timer_ns() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// System-scope acquire load: after it, this thread sees every write that the writer (another GPU
// over NVLink, or the host) made before its matching release store.
__device__ __forceinline__ uint64_t load_acquire_sys(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void store_release_sys(uint64_t* p, uint64_t v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" : : "l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" : : "l"(p), "r"(v) : "memory");
}

// Programmatic dependent launch: lets the kernel queued after this one as a dependent
// (CudaFunction.launchDependent) start its blocks once every block of this grid has executed this
// (or exited), instead of when this grid finishes. A no-op without such a dependent.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" : : : "memory");
#endif
}

// The other side of a programmatic dependent launch: waits until the kernel this one was queued after
// as a dependent has finished and its memory operations are visible (what plain stream order gives),
// so that this kernel's blocks were already resident while that one ran. Returns at once for a kernel
// queued without the attribute.
__device__ __forceinline__ void wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" : : : "memory");
#endif
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

}  // namespace mooncake4j
