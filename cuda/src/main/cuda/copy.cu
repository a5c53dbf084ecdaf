// copy_bytes: copies n bytes from src to dst (either may be a peer GPU's memory mapped over NVLink).
// When src and dst share their alignment modulo 16, the bulk moves as 16-byte vectors with four
// loads in flight per thread; otherwise it falls back to single bytes. The ranges must not overlap.
#include "common.cuh"

extern "C" __global__ void copy_bytes(void* dst, const void* src, uint64_t n) {
    unsigned char* d = static_cast<unsigned char*>(dst);
    const unsigned char* s = static_cast<const unsigned char*>(src);
    const uint64_t tid = mooncake4j::thread_index();
    const uint64_t stride = mooncake4j::thread_count();

    uint64_t head = n;   // bytes before the first 16-byte aligned address (all of them if never aligned)
    uint64_t nvec = 0;
    if (((reinterpret_cast<uintptr_t>(d) ^ reinterpret_cast<uintptr_t>(s)) & 15) == 0) {
        head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
        if (head > n) head = n;
        nvec = (n - head) / 16;
    }
    for (uint64_t i = tid; i < head; i += stride) d[i] = s[i];

    const uint4* sv = reinterpret_cast<const uint4*>(s + head);
    uint4* dv = reinterpret_cast<uint4*>(d + head);
    uint64_t v = tid;
    for (; v + 3 * stride < nvec; v += 4 * stride) {
        const uint4 a = sv[v];
        const uint4 b = sv[v + stride];
        const uint4 c = sv[v + 2 * stride];
        const uint4 e = sv[v + 3 * stride];
        dv[v] = a;
        dv[v + stride] = b;
        dv[v + 2 * stride] = c;
        dv[v + 3 * stride] = e;
    }
    for (; v < nvec; v += stride) dv[v] = sv[v];

    for (uint64_t i = head + nvec * 16 + tid; i < n; i += stride) d[i] = s[i];
}
