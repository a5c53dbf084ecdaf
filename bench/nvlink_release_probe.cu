// Probe (not part of the build): does a sys-scope release by one warp wait for NVLink stores that OTHER
// warps of the same SM have in flight? Run on a host with 2 GPUs:
//   nvcc -arch=sm_90 -O3 -o /tmp/release_probe bench/nvlink_release_probe.cu && /tmp/release_probe
// Block layout: warp 0 = "releaser" (st.global + st.release.sys of a flag, timed with clock64),
// warps 1..W = "streamers" storing continuously into the peer GPU's memory. Compare the releaser's
// per-release cycles with streamers off / on, and with streamers in a different block (other SM).
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) { asm volatile("st.release.sys.global.u64 [%0], %1;" :: "l"(p), "l"(v) : "memory"); }
__device__ __forceinline__ void fence_sys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }

// mode 0: releaser only; mode 1: streamers in the same block; mode 2: streamers in other blocks only
__global__ void probe(uint4* peer_buf, size_t peer_elems, uint64_t* peer_flag, uint64_t* out_cycles, int mode, int reps, int use_fence, volatile int* stop) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bool releaser_block = blockIdx.x == 0;
    if (releaser_block && warp == 0) {
        if (lane == 0) {
            uint64_t total = 0;
            for (int i = 0; i < reps; ++i) {
                peer_buf[i % 1024] = make_uint4(i, i, i, i);   // one NVLink store of its own
                uint64_t t0 = clock64();
                if (use_fence) { fence_sys(); *((volatile uint64_t*)peer_flag) = i + 1; }
                else st_release_sys(peer_flag, i + 1);
                // the warp stalls at the release until the earlier stores are acknowledged: that stall is what t1 - t0 measures
                uint64_t t1 = clock64();
                total += t1 - t0;
            }
            out_cycles[0] = total / reps;
            *stop = 1;
        }
        return;
    }
    const bool stream = (mode == 1 && releaser_block) || (mode == 2 && !releaser_block);
    if (!stream) return;
    // streamers: store 16 B vectors round-robin until the releaser is done
    size_t i = (size_t)(blockIdx.x * blockDim.x + threadIdx.x) * 7919 % peer_elems;
    uint32_t k = 0;
    while (*stop == 0) {
        for (int r = 0; r < 64; ++r) { peer_buf[i] = make_uint4(k, k, k, k); i += blockDim.x * gridDim.x; if (i >= peer_elems) i -= peer_elems; ++k; }
    }
}

int main() {
    int n = 0; CK(cudaGetDeviceCount(&n));
    if (n < 2) { printf("needs 2 GPUs\n"); return 1; }
    int can = 0; CK(cudaDeviceCanAccessPeer(&can, 0, 1)); printf("peer access 0->1: %d\n", can);
    CK(cudaSetDevice(1)); uint4* buf1; size_t elems = (256u << 20) / 16; CK(cudaMalloc(&buf1, elems * 16)); uint64_t* flag1; CK(cudaMalloc(&flag1, 4096));
    CK(cudaSetDevice(0)); CK(cudaDeviceEnablePeerAccess(1, 0));
    uint64_t* cyc; CK(cudaMallocManaged(&cyc, 64)); int* stop; CK(cudaMallocManaged(&stop, 64));
    int sms = 0; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const char* names[] = {"releaser alone", "streamers in the releaser's block (same SM)", "streamers in other blocks (other SMs)"};
    for (int f = 0; f < 2; ++f)
    for (int mode = 0; mode < 3; ++mode) {
        for (int warmup = 0; warmup < 2; ++warmup) {
            *stop = 0; cyc[0] = 0;
            int blocks = mode == 2 ? sms : 1;
            probe<<<blocks, 512>>>(buf1, elems, flag1, cyc, mode, 2000, f, stop);
            CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        }
        printf("%s, %s: %llu cycles per release\n", f ? "fence.acq_rel.sys + store" : "st.release.sys", names[mode], (unsigned long long)cyc[0]);
    }
    return 0;
}
