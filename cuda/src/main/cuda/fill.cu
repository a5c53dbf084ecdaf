// fill_u32: dst[i] = value for i in [0, n).
#include "common.cuh"

extern "C" __global__ void fill_u32(uint32_t* dst, uint32_t value, uint64_t n) {
    const uint64_t stride = mooncake4j::thread_count();
    for (uint64_t i = mooncake4j::thread_index(); i < n; i += stride) dst[i] = value;
}
