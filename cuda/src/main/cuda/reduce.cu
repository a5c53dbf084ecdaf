// Element-wise sums over nsrc source buffers, added strictly in source order (srcs[0] + srcs[1] + ...)
// so every rank that reduces the same inputs gets a bitwise-identical result.
//   srcs: a device-memory array of nsrc device pointers (local or peer memory); nsrc >= 1
//         (the kernels do nothing for nsrc < 1).
//   dst:  may be one of the sources (in place): each element is read before it is written.
// When every pointer is 16-byte aligned the bulk is processed 16 bytes per thread.
#include <cuda_bf16.h>

#include "common.cuh"

namespace {

__device__ __forceinline__ bool all_aligned16(const void* dst, const void* const* srcs, int nsrc) {
    bool ok = mooncake4j::aligned16(dst);
    for (int j = 0; j < nsrc; ++j) ok = ok && mooncake4j::aligned16(srcs[j]);
    return ok;
}

}  // namespace

extern "C" __global__ void reduce_sum_f32(float* dst, const float* const* srcs, int nsrc, uint64_t n) {
    if (nsrc < 1) return;
    const uint64_t tid = mooncake4j::thread_index();
    const uint64_t stride = mooncake4j::thread_count();
    const uint64_t nvec = all_aligned16(dst, reinterpret_cast<const void* const*>(srcs), nsrc) ? n / 4 : 0;

    for (uint64_t v = tid; v < nvec; v += stride) {
        float4 acc = reinterpret_cast<const float4*>(srcs[0])[v];
        for (int j = 1; j < nsrc; ++j) {
            const float4 x = reinterpret_cast<const float4*>(srcs[j])[v];
            acc.x += x.x;
            acc.y += x.y;
            acc.z += x.z;
            acc.w += x.w;
        }
        reinterpret_cast<float4*>(dst)[v] = acc;
    }
    for (uint64_t i = nvec * 4 + tid; i < n; i += stride) {
        float acc = srcs[0][i];
        for (int j = 1; j < nsrc; ++j) acc += srcs[j][i];
        dst[i] = acc;
    }
}

// bf16 inputs, fp32 accumulation, one round-to-nearest-even conversion back to bf16 per element.
extern "C" __global__ void reduce_sum_bf16(__nv_bfloat16* dst, const __nv_bfloat16* const* srcs, int nsrc,
                                           uint64_t n) {
    if (nsrc < 1) return;
    const uint64_t tid = mooncake4j::thread_index();
    const uint64_t stride = mooncake4j::thread_count();
    const uint64_t nvec = all_aligned16(dst, reinterpret_cast<const void* const*>(srcs), nsrc) ? n / 8 : 0;

    for (uint64_t v = tid; v < nvec; v += stride) {
        float acc[8];
        for (int j = 0; j < nsrc; ++j) {
            const uint4 raw = reinterpret_cast<const uint4*>(srcs[j])[v];
            const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float2 f = __bfloat1622float2(pairs[k]);
                if (j == 0) {
                    acc[2 * k] = f.x;
                    acc[2 * k + 1] = f.y;
                } else {
                    acc[2 * k] += f.x;
                    acc[2 * k + 1] += f.y;
                }
            }
        }
        uint4 out;
        __nv_bfloat162* outPairs = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
        for (int k = 0; k < 4; ++k) outPairs[k] = __floats2bfloat162_rn(acc[2 * k], acc[2 * k + 1]);
        reinterpret_cast<uint4*>(dst)[v] = out;
    }
    for (uint64_t i = nvec * 8 + tid; i < n; i += stride) {
        float acc = __bfloat162float(srcs[0][i]);
        for (int j = 1; j < nsrc; ++j) acc += __bfloat162float(srcs[j][i]);
        dst[i] = __float2bfloat16_rn(acc);
    }
}
