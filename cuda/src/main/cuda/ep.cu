// Expert-parallel dispatch and combine over NVLink (the CUDA path of mooncake4j-ep's EpBuffer,
// CudaEpPath on the host). Every rank (one process, one GPU) owns one EP buffer of the same layout
// inside a symmetric heap, at offset ep_base, with every peer's mapped; kernels store straight into
// the peers' buffers. The layout is EpLayout's (all offsets come from the host):
//
//   signals      [2R] u64 sequence words, one 64-byte line each: line s = dispatch word of source s,
//                line R + s = combine word of expert rank s
//   counts       int32 [R][L]   rows source s sent to local expert j this round
//   recvCount    int32 [L]
//   staging      [L][R][M] messages of msg_bytes: int32 token, int32 top-k slot, u64 dispatch seq,
//                then H bf16, or H e4m3 bytes + H/128 float32 scales
//   recvX, recvScales, combineSend (bf16 [L][R*M][H]), combineRecv (bf16 [E][M][H])
//
// Dispatch (sequence number seq):
//   ep_dispatch_send    one warp per token: for each top-k slot in order whose expert e is not -1, not
//                       selected in an earlier slot, and whose rank r = e / L is active, it takes the
//                       row i = number of earlier tokens that selected e and stores the message into
//                       staging (e % L, this rank, i) of rank r. FP8 quantizes in the kernel: per 128
//                       channels scale = amax / 448 (1 when all zero), value = e4m3(x / scale) rounded to
//                       nearest even, saturating at 448 (bit-identical to HostEpPath.quantizeRow). The
//                       last block to finish (a fenced block counter) stores the per-expert counts into
//                       every active rank's counts[this rank] and then release-stores seq into its
//                       dispatch word. It also records which ranks it sent to (sent_to[seq & 1]).
//   ep_wait             one thread per source: skips sources that are 0 in activeRanks; otherwise
//                       polls the source's word (acquire, system scope) until it is >= seq or the
//                       deadline (%globaltimer, timeout_ns after the start) passes; a late source is
//                       set to 0 in activeRanks (device memory) and reported in the host-mapped status
//                       slot {seq, missing-rank mask}.
//   ep_dispatch_recv    one warp per (local expert j, packed row p): the rows of the arrived sources in
//                       rank order, each source's rows in token order (the order it wrote them), are
//                       copied to recvX (and recvScales); the source and token of each row are kept in
//                       row_src_token for the combine. Counts outside [0, M] or a row of another
//                       dispatch are reported in the host-mapped error words.
// Combine (sequence number seq):
//   ep_combine_send     one warp per received row: stores the expert output row into
//                       combineRecv (global expert, token) of the source rank, when that rank is
//                       active; the last block then release-stores seq into the combine word of this
//                       rank in every active rank's buffer.
//   ep_wait             as above, over the ranks this rank dispatched to (sent_to of the dispatch).
//   ep_combine_recv     one warp per token: acc = acc + w[k] * y[k] in float32 (no fused multiply-add)
//                       over the top-k slots in order whose expert is not -1 and whose rank was sent to
//                       and is active, rounded to bf16 (nearest even), like HostEpPath.
//   ep_host_signal      release-stores a ticket into host-mapped memory; the host polls it with a
//                       deadline instead of blocking in the driver.
//
// Expert ids outside [0, E) are skipped like -1 (the host does not read device tensors back to check).
// Sequence words only grow, so a write from an earlier round is never taken for the current one.
// Peer data is read with ld.global.cg (L2), after the acquire of the wait kernel on the same stream.
#include <cuda_bf16.h>

#include "common.cuh"

namespace mooncake4j {
namespace ep {

constexpr int kLine = 64;
constexpr int kHeader = 16;
constexpr int kScaleChannels = 128;

__device__ __forceinline__ uint8_t* base_of(const uint64_t* heaps, int r, uint64_t ep_base) {
    return reinterpret_cast<uint8_t*>(heaps[r] + ep_base);
}

__device__ __forceinline__ uint64_t load_relaxed_sys(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void fence_acq_rel_sys() { asm volatile("fence.acq_rel.sys;" : : : "memory"); }

__device__ __forceinline__ float bf16_bits_to_float(uint32_t b) { return __uint_as_float((b & 0xffffu) << 16); }

// FloatFormats.floatToBf16: nearest even, NaN made quiet.
__device__ __forceinline__ uint32_t float_to_bf16_bits(float f) {
    const uint32_t bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return ((bits >> 16) | 0x40u) & 0xffffu;
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return ((bits + rounding) >> 16) & 0xffffu;
}

// Math.max semantics: NaN wins.
__device__ __forceinline__ float java_max(float a, float b) {
    if (a != a) return a;
    if (b != b) return b;
    return a >= b ? a : b;
}

// FloatFormats.floatToE4m3: nearest even, saturating at +-448, NaN = 0x7f.
__device__ __forceinline__ uint32_t float_to_e4m3(float f) {
    if (f != f) return 0x7fu;
    const uint32_t sign = (__float_as_uint(f) >> 31) ? 0x80u : 0u;
    const float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7eu;
    if (a < 0x1p-10f) return sign;
    const int e = static_cast<int>((__float_as_uint(a) >> 23) & 0xff) - 127;   // a >= 2^-10 is normal
    if (e < -6) {
        const int m = static_cast<int>(rintf(__fmul_rn(a, 512.0f)));          // exact scaling
        return sign | static_cast<uint32_t>(m);
    }
    const float scaled = __fmul_rn(a, __uint_as_float(static_cast<uint32_t>(127 + 3 - e) << 23));   // a / 2^e * 8, exact
    int m = static_cast<int>(rintf(scaled)) - 8;
    int exp = e + 7;
    if (m == 8) {
        m = 0;
        ++exp;
    }
    if (exp > 15 || (exp == 15 && m == 7)) return sign | 0x7eu;
    return sign | static_cast<uint32_t>(exp << 3) | static_cast<uint32_t>(m);
}

// Copies `bytes` with the lanes of one warp: 16-byte vectors when both ends allow, else bytes.
__device__ __forceinline__ void warp_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes, int lane) {
    if (aligned16(dst) && aligned16(src) && (bytes & 15) == 0) {
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        for (uint64_t v = lane; v < bytes / 16; v += 32) d[v] = __ldcg(s + v);
    } else {
        for (uint64_t b = lane; b < bytes; b += 32) dst[b] = __ldcg(src + b);
    }
}

// The last block of a launch to get here returns true (after every block's stores are fenced); it
// resets the counter for the next launch.
__device__ bool last_block(uint32_t* counter) {
    __shared__ bool last;
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) {
        const uint32_t done = atomicAdd(counter, 1u);
        last = done == gridDim.x - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    if (last) __threadfence_system();
    return last;
}

// Whether token row `sel` (K entries) selects e in a slot before k.
__device__ __forceinline__ bool selected_before(const int64_t* sel, int k, int64_t e) {
    for (int q = 0; q < k; ++q) {
        if (sel[q] == e) return true;
    }
    return false;
}

// The message row index of token t for expert e: the earlier tokens that selected e (once each).
__device__ int row_index(const int64_t* topk, int t, int K, int64_t e, int lane) {
    int n = 0;
    // (ids outside [0, E) never equal e, which is in range)
    for (int u = lane; u < t; u += 32) {
        const int64_t* sel = topk + static_cast<int64_t>(u) * K;
        for (int q = 0; q < K; ++q) {
            if (sel[q] == e) {
                ++n;
                break;
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    return n;
}

// Quantizes token row x (H bf16) into data (H bytes) and scales (H / 128 floats). Lanes 0-15 take
// block b, lanes 16-31 block b + 1, 8 channels a lane.
__device__ void quantize_row_to(const uint16_t* x, int H, uint8_t* data, float* scales, int lane) {
    const int blocks = H / kScaleChannels;
    const int half = lane >> 4, sub = lane & 15;
    const bool vec = aligned16(x) && (reinterpret_cast<uintptr_t>(data) & 7) == 0;
    for (int b0 = 0; b0 < blocks; b0 += 2) {
        const int b = b0 + half;
        const bool on = b < blocks;
        float v[8];
        if (on) {
            const int c = b * kScaleChannels + sub * 8;
            if (vec) {
                const uint4 raw = *reinterpret_cast<const uint4*>(x + c);
                const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    v[2 * i] = bf16_bits_to_float(w[i]);
                    v[2 * i + 1] = bf16_bits_to_float(w[i] >> 16);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) v[i] = bf16_bits_to_float(x[c + i]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = 0.0f;
        }
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) amax = java_max(amax, fabsf(v[i]));
        for (int o = 8; o > 0; o >>= 1) amax = java_max(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if (!on) continue;
        const float scale = amax == 0.0f ? 1.0f : __fdiv_rn(amax, 448.0f);
        uint32_t q[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = float_to_e4m3(__fdiv_rn(v[i], scale));
        const int c = b * kScaleChannels + sub * 8;
        if (vec) {
            uint2 packed;
            packed.x = q[0] | (q[1] << 8) | (q[2] << 16) | (q[3] << 24);
            packed.y = q[4] | (q[5] << 8) | (q[6] << 16) | (q[7] << 24);
            *reinterpret_cast<uint2*>(data + c) = packed;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) data[c + i] = static_cast<uint8_t>(q[i]);
        }
        if (sub == 0) scales[b] = scale;
    }
}

struct Packed {
    int src;   // -1: no such row
    int i;     // row index within that source's rows
};

// Row p of local expert j among the arrived sources' rows, in rank order.
__device__ __forceinline__ Packed locate(const int* used, int j, int R, int p) {
    int base = 0;
    for (int s = 0; s < R; ++s) {
        const int c = used[j * R + s];
        if (p < base + c) return Packed{s, p - base};
        base += c;
    }
    return Packed{-1, 0};
}

}  // namespace ep
}  // namespace mooncake4j

extern "C" __global__ void __launch_bounds__(512)
ep_dispatch_send(const uint16_t* x, const int64_t* topk, const int* active, const uint64_t* heaps, uint64_t ep_base,
                 int rank, int R, int L, int N, int K, int H, int M, int fp8, uint64_t seq, uint64_t counts_off,
                 uint64_t staging_off, uint64_t msg_bytes, int* send_count, int* sent_to, uint32_t* block_counter) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    const int lane = threadIdx.x & 31;
    const int warps = static_cast<int>(gridDim.x * blockDim.x / 32);
    for (int t = static_cast<int>(thread_index() / 32); t < N; t += warps) {
        const int64_t* sel = topk + static_cast<int64_t>(t) * K;
        for (int k = 0; k < K; ++k) {
            const int64_t e = sel[k];
            if (e < 0 || e >= static_cast<int64_t>(R) * L || selected_before(sel, k, e)) continue;
            const int r = static_cast<int>(e / L);
            if (active[r] == 0) continue;
            const int j = static_cast<int>(e % L);
            const int i = row_index(topk, t, K, e, lane);
            uint8_t* msg = base_of(heaps, r, ep_base) + staging_off
                           + ((static_cast<uint64_t>(j) * R + rank) * M + i) * msg_bytes;
            if (lane == 0) {
                *reinterpret_cast<uint4*>(msg) = make_uint4(static_cast<uint32_t>(t), static_cast<uint32_t>(k),
                                                            static_cast<uint32_t>(seq), static_cast<uint32_t>(seq >> 32));
                atomicAdd(send_count + e, 1);
            }
            const uint16_t* row = x + static_cast<int64_t>(t) * H;
            if (fp8) {
                quantize_row_to(row, H, msg + kHeader, reinterpret_cast<float*>(msg + kHeader + H), lane);
            } else {
                warp_copy(msg + kHeader, reinterpret_cast<const uint8_t*>(row), 2ull * H, lane);
            }
        }
    }
    if (!last_block(block_counter)) return;
    const int E = R * L;
    int* sent = sent_to + (seq & 1) * R;
    for (int q = threadIdx.x; q < E; q += blockDim.x) {
        const int r = q / L;
        if (active[r] != 0) {
            reinterpret_cast<int*>(base_of(heaps, r, ep_base) + counts_off)[rank * L + q % L] = send_count[q];
        }
        send_count[q] = 0;
    }
    for (int r = threadIdx.x; r < R; r += blockDim.x) sent[r] = active[r] != 0;
    __syncthreads();
    __threadfence_system();
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        if (active[r] != 0) {
            store_release_sys(reinterpret_cast<uint64_t*>(base_of(heaps, r, ep_base) + static_cast<uint64_t>(rank) * kLine), seq);
        }
    }
}

// needed: null (dispatch: every active source) or sent_to of the dispatch (combine). first_line: 0 for
// the dispatch words, R for the combine words. status: host-mapped {seq, missing mask}.
extern "C" __global__ void __launch_bounds__(32)
ep_wait(uint8_t* own, int* active, const int* needed, int* arrived, int R, int first_line, uint64_t seq,
        uint64_t timeout_ns, uint64_t* status) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    const int s = threadIdx.x;
    uint32_t missing = 0;
    if (s < R) {
        bool ok = false;
        if (active[s] != 0 && (needed == nullptr || needed[s] != 0)) {
            const uint64_t* word = reinterpret_cast<const uint64_t*>(own + static_cast<uint64_t>(first_line + s) * kLine);
            const uint64_t start = global_timer_ns();
            for (uint32_t spin = 0;; ++spin) {
                if (load_relaxed_sys(word) >= seq) {
                    fence_acq_rel_sys();
                    ok = true;
                    break;
                }
                if ((spin & 15) == 15 && global_timer_ns() - start >= timeout_ns) break;
            }
            if (!ok) {
                active[s] = 0;
                missing = 1u << s;
            }
        }
        arrived[s] = ok ? 1 : 0;
    }
    missing = __reduce_or_sync(0xffffffffu, missing);
    __threadfence_system();
    if (s == 0) {
        reinterpret_cast<volatile uint64_t*>(status)[1] = missing;
        store_release_sys(status, seq);
    }
}

extern "C" __global__ void __launch_bounds__(512)
ep_dispatch_recv(uint8_t* own, const int* arrived, int* used, int* row_src_token, int R, int L, int M, int H, int fp8,
                 uint64_t seq, uint64_t counts_off, uint64_t recv_count_off, uint64_t staging_off, uint64_t msg_bytes,
                 uint64_t recv_x_off, uint64_t scales_off, uint64_t* error) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    const int* counts = reinterpret_cast<const int*>(own + counts_off);
    // Every thread derives used[] itself from the counts (tiny), so no grid-wide step is needed.
    const uint64_t tid = thread_index();
    if (tid < static_cast<uint64_t>(L) * R) {
        const int j = static_cast<int>(tid / R), s = static_cast<int>(tid % R);
        int c = arrived[s] ? __ldcg(counts + s * L + j) : 0;
        if (c < 0 || c > M) {
            error[1] = (static_cast<uint64_t>(s) << 48) | (static_cast<uint64_t>(j) << 24) | static_cast<uint32_t>(c);
            store_release_sys(error, 1ull);
            c = 0;
        }
        used[j * R + s] = c;
    }
    // used[] is written above by other threads; recompute locally instead of reading it.
    const int lane = threadIdx.x & 31;
    const uint64_t warps = thread_count() / 32;
    const uint64_t rows = static_cast<uint64_t>(L) * R * M;
    const uint64_t data_bytes = fp8 ? static_cast<uint64_t>(H) : 2ull * H;
    const int blocks = H / kScaleChannels;
    for (uint64_t w = thread_index() / 32; w < rows; w += warps) {
        const int j = static_cast<int>(w / (static_cast<uint64_t>(R) * M));
        const int p = static_cast<int>(w % (static_cast<uint64_t>(R) * M));
        int base = 0, src = -1, i = 0;
        for (int s = 0; s < R; ++s) {
            int c = arrived[s] ? __ldcg(counts + s * L + j) : 0;
            if (c < 0 || c > M) c = 0;
            if (src < 0 && p < base + c) {
                src = s;
                i = p - base;
            }
            base += c;
        }
        if (p == 0 && lane == 0) reinterpret_cast<int*>(own + recv_count_off)[j] = base;
        if (src < 0) continue;
        const uint8_t* msg = own + staging_off + ((static_cast<uint64_t>(j) * R + src) * M + i) * msg_bytes;
        const uint4 header = __ldcg(reinterpret_cast<const uint4*>(msg));
        const uint64_t row_seq = header.z | (static_cast<uint64_t>(header.w) << 32);
        if (row_seq != seq) {
            if (lane == 0) {
                error[1] = (static_cast<uint64_t>(src) << 48) | (static_cast<uint64_t>(i) << 24) | (row_seq & 0xffffffull);
                store_release_sys(error, 2ull);
            }
            continue;
        }
        if (lane == 0) row_src_token[w] = src * M + static_cast<int>(header.x);
        const uint64_t row = static_cast<uint64_t>(j) * R * M + p;
        warp_copy(own + recv_x_off + row * data_bytes, msg + kHeader, data_bytes, lane);
        if (fp8) {
            const float* s_in = reinterpret_cast<const float*>(msg + kHeader + H);
            float* s_out = reinterpret_cast<float*>(own + scales_off) + row * blocks;
            for (int b = lane; b < blocks; b += 32) s_out[b] = __ldcg(s_in + b);
        }
    }
}

extern "C" __global__ void __launch_bounds__(512)
ep_combine_send(const uint16_t* y, const int* active, const uint64_t* heaps, uint64_t ep_base, int rank, int R, int L,
                int M, int H, uint64_t seq, const int* used, const int* row_src_token, uint64_t combine_recv_off,
                uint32_t* block_counter) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    const int lane = threadIdx.x & 31;
    const uint64_t warps = thread_count() / 32;
    const uint64_t rows = static_cast<uint64_t>(L) * R * M;
    for (uint64_t w = thread_index() / 32; w < rows; w += warps) {
        const int j = static_cast<int>(w / (static_cast<uint64_t>(R) * M));
        const int p = static_cast<int>(w % (static_cast<uint64_t>(R) * M));
        const Packed at = locate(used, j, R, p);
        if (at.src < 0 || active[at.src] == 0) continue;
        const int token = row_src_token[w] - at.src * M;
        const uint64_t expert = static_cast<uint64_t>(rank) * L + j;
        uint8_t* dst = base_of(heaps, at.src, ep_base) + combine_recv_off + (expert * M + token) * 2ull * H;
        warp_copy(dst, reinterpret_cast<const uint8_t*>(y + w * H), 2ull * H, lane);
    }
    if (!last_block(block_counter)) return;
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        if (active[r] != 0) {
            store_release_sys(reinterpret_cast<uint64_t*>(base_of(heaps, r, ep_base) + static_cast<uint64_t>(R + rank) * kLine), seq);
        }
    }
}

extern "C" __global__ void __launch_bounds__(512)
ep_combine_recv(const uint8_t* own, const int64_t* topk, const float* weights, const int* active, const int* sent_to,
                uint16_t* out, int N, int K, int R, int L, int M, int H, uint64_t combine_recv_off) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    const int64_t E = static_cast<int64_t>(R) * L;
    const int lane = threadIdx.x & 31;
    const int warps = static_cast<int>(thread_count() / 32);
    const bool vec = (H & 7) == 0 && aligned16(out) && aligned16(own + combine_recv_off);
    for (int t = static_cast<int>(thread_index() / 32); t < N; t += warps) {
        const int64_t* sel = topk + static_cast<int64_t>(t) * K;
        const float* wt = weights + static_cast<int64_t>(t) * K;
        uint16_t* o = out + static_cast<int64_t>(t) * H;
        if (vec) {
            for (int c = lane * 8; c < H; c += 256) {
                float acc[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
                for (int k = 0; k < K; ++k) {
                    const int64_t e = sel[k];
                    if (e < 0 || e >= E) continue;
                    const int r = static_cast<int>(e / L);
                    if (sent_to[r] == 0 || active[r] == 0) continue;
                    const float w = wt[k];
                    const uint16_t* row = reinterpret_cast<const uint16_t*>(
                            own + combine_recv_off + (static_cast<uint64_t>(e) * M + t) * 2ull * H);
                    const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(row + c));
                    const uint32_t v[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        acc[2 * i] = __fadd_rn(acc[2 * i], __fmul_rn(w, bf16_bits_to_float(v[i])));
                        acc[2 * i + 1] = __fadd_rn(acc[2 * i + 1], __fmul_rn(w, bf16_bits_to_float(v[i] >> 16)));
                    }
                }
                uint4 packed;
                packed.x = float_to_bf16_bits(acc[0]) | (float_to_bf16_bits(acc[1]) << 16);
                packed.y = float_to_bf16_bits(acc[2]) | (float_to_bf16_bits(acc[3]) << 16);
                packed.z = float_to_bf16_bits(acc[4]) | (float_to_bf16_bits(acc[5]) << 16);
                packed.w = float_to_bf16_bits(acc[6]) | (float_to_bf16_bits(acc[7]) << 16);
                *reinterpret_cast<uint4*>(o + c) = packed;
            }
        } else {
            for (int c = lane; c < H; c += 32) {
                float acc = 0.0f;
                for (int k = 0; k < K; ++k) {
                    const int64_t e = sel[k];
                    if (e < 0 || e >= E) continue;
                    const int r = static_cast<int>(e / L);
                    if (sent_to[r] == 0 || active[r] == 0) continue;
                    const uint16_t* row = reinterpret_cast<const uint16_t*>(
                            own + combine_recv_off + (static_cast<uint64_t>(e) * M + t) * 2ull * H);
                    acc = __fadd_rn(acc, __fmul_rn(wt[k], bf16_bits_to_float(__ldcg(row + c))));
                }
                o[c] = static_cast<uint16_t>(float_to_bf16_bits(acc));
            }
        }
    }
}

extern "C" __global__ void ep_host_signal(uint64_t* word, uint64_t value) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    __threadfence_system();
    store_release_sys(word, value);
}
