// Expert-parallel dispatch and combine over NVLink (the CUDA path of mooncake4j-ep's EpBuffer,
// CudaEpPath on the host). Every rank (one process, one GPU) owns one EP buffer of the same layout
// inside a symmetric heap, at offset ep_base, with every peer's mapped; kernels store straight into
// the peers' buffers. The layout is EpLayout's (all offsets come from the host):
//
//   signals      [2R] 64-byte lines of u64 sequence words: line s = dispatch word of source s (then
//                its counts word), line R + s = combine word of expert rank s (then its table word)
//   counts       int32 [R][L]   rows source s sent to local expert j this round
//   recvCount    int32 [L]
//   staging      [L][R][M] messages of msg_bytes: int32 token, int32 top-k slot, u64 dispatch seq,
//                then H bf16, or H e4m3 bytes + H/128 float32 scales
//   recvX, recvScales, combineSend (bf16 [L][R*M][H]), combineRecv (bf16 [E][M][H])
//
// Two kernels per operation, each a single launch (the host queues them back to back, or the receive
// later from a hook). Queued back to back, the receive is a programmatic dependent launch of the send
// (CudaEpPath.dependentLaunch): every send block first executes allow_dependents, so the receive
// blocks start on the SM room the send leaves (ep_dispatch_recv is built to fit beside a send block)
// and are already polling when the last sequence word lands, instead of being launched after the send
// grid has drained. Nothing else changes: a receive kernel reads nothing the send kernel before it
// writes except through the sequence words. A send queued right after the other phase's receive is a
// dependent of it too, but waits for it first (wait_prerequisites, before allow_dependents): only its
// launch overlaps the receive's tail, as if queued in plain stream order.
//
// Dispatch (sequence number seq):
//   ep_dispatch_send    one block per token (grid-stride). The block's warps first work out, for each
//                       top-k slot, whether it sends (expert e not -1, in range, not selected in an
//                       earlier slot, rank r = e / L active) and its row i = number of earlier tokens
//                       that selected e (so each source's rows for an expert are in token order). With
//                       FP8 the block meanwhile quantizes the token once into a private message buffer: per
//                       128 channels scale = amax / 448 (1 when all zero), value = e4m3(x / scale)
//                       rounded to nearest even, saturating at 448, with the hardware conversion
//                       (bit-identical to HostEpPath.quantizeRow: cuda/e4m3-check.sh). Last, the
//                       block's threads load the message 16 bytes at a time (from the message buffer,
//                       or from x for bf16) and store each 16 bytes into staging (e % L, this rank, i)
//                       of every rank r the token goes to (the header's top-k slot set per
//                       destination), the header without its sequence number. After a fence (one
//                       thread, cumulative over the block's stores) the block stores seq into each
//                       row's header: the row's flag, which the receiver polls.
//                       Table mode (table = 1, when it fits in shared memory: TableLayout below): block
//                       0 first copies the whole top-k table into shared memory as int16 ids with the
//                       slots that do not send set to -1, counts the rows per expert, stores the counts
//                       into every active rank's counts[this rank] and the ranks sent to
//                       (sent_to[seq & 1]), and after a fence stores seq into its counts word of every
//                       active rank, before its tokens; the other blocks start on their tokens at once
//                       (rows from the table in global memory); the message is built in shared memory.
//                       Otherwise the warps count with atomics, and the last block stores the counts,
//                       sent_to and the counts words. Either way the last block to finish (a fenced
//                       block counter) release-stores seq into its dispatch word of every active rank.
//   ep_dispatch_recv    every block first agrees on the sources whose counts arrived (wait_decide
//                       below, on the counts words), then the grid copies their rows, two warps per
//                       row, each as soon as its flag shows it landed (while the senders still store
//                       others): the rows of expert j are the arrived sources' rows in rank order, each
//                       source's rows in token order. Rows go to recvX (and recvScales); each row's
//                       source and token go to row_src_token, and the (expert, source) counts to `used`,
//                       for the combine. A source with a row that does not land in time is dropped as
//                       a whole by the last block, which lays the rows out again without it. Counts
//                       outside [0, M] or a row of another dispatch are reported in the host-mapped
//                       error words.
// Combine (sequence number seq):
//   ep_combine_send     four warps per received row: store the expert output row into combineRecv
//                       (global expert, token) of the source rank, when that rank is active; the last
//                       block then release-stores seq into the combine word of this rank in every
//                       active rank's buffer.
//   ep_combine_send_reduced  (reduced = 1, CudaEpPath.reducedCombine) the source's top-k ids and
//                       weights first go to the ranks it dispatched to; then one row per (token, expert
//                       rank) crosses NVLink: the rank's partial sum of its experts' rows for the token
//                       (see the kernel). The dispatch receive records the row of every (source, token,
//                       top-k slot) for it (slot_rows).
//   ep_combine_recv     agrees on the arrived expert ranks (wait_decide over the ranks the dispatch
//                       sent to), then one thread per (token, 8 channels): per arrived rank with a
//                       kept slot, in rank order, acc = acc + partial, where partial = the float32
//                       sum p = p + w[k] * y[k] (no fused multiply-add) over that rank's slots in order
//                       rounded to bf16 (sent by the expert rank, or formed here from the expert rows);
//                       acc rounded to bf16 (nearest even), like HostEpPath.
//
// wait_decide: warp 0 of each block polls the sources' sequence words (system scope) until every
// needed source (active, and for the combine sent to) reached seq, or until its deadline
// (%globaltimer, timeout_ns after it started) passed. The first block to finish publishes its arrived
// mask with a compare-and-swap into a decision word tagged with seq; every other block adopts the
// published mask, so all blocks of the grid use the same sources even when one arrives at the
// deadline. Each lane then takes its arrived source's word with an acquire load: no fence, which on
// an SM shared with a running send kernel would wait for that kernel's NVLink stores. The deciding
// block sets the late sources to 0 in activeRanks (device memory) and reports {seq, missing-rank
// mask} in the host-mapped status slot, which the host reads after the kernel's done ticket. No block
// waits for another block of its grid, so the kernels need no co-residency.
//
// Profiling (-Dmooncake4j.ep.profile=true): every kernel also takes a stamps pointer (null otherwise)
// and adds the %globaltimer time from block 0's start to numbered points (stamp() below). With
// -Dmooncake4j.ep.profile=pdl the kernels are queued as in production and each receive kernel's
// points count from its phase's send kernel's start (stamp_from), which gives each phase's span.
//
// The receive kernels end with the last block release-storing a host ticket into host-mapped memory
// (when the host passed one); the host polls it with a deadline instead of blocking in the driver.
// ep_host_signal does the same as a kernel of its own.
//
// Expert ids outside [0, E) are skipped like -1 (the host does not read device tensors back to check).
// Sequence words only grow, so a write from an earlier round is never taken for the current one.
// Peer data is read with ld.global.cg (L2) after the acquire.
//
// Deduplicated dispatch (dedup = 1, chosen by the host when L >= 2 and 16 * L <= msg_bytes): a token
// that selects several experts of one rank crosses NVLink once for that rank. Everything stays inside
// the staging messages that source s owns in every destination (rows (j, s, *)), like the plain
// layout: the sender stores the whole message (header {t, 0, seq} and data) once into its payload
// slot (s, t) = staging row (L - 1, s, t), and only the 16-byte header {t, top-k slot, seq} of each
// row (j, s, i) into a table at staging row (0, s, 0): entry j * M + i (L * M * 16 bytes, which fit in
// the M messages of that block). The receiver takes the token from the row's header and the data from
// the payload slot, and checks the sequence number (and token) of both.
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

__device__ __forceinline__ unsigned long long load_relaxed_gpu(const unsigned long long* p) {
    unsigned long long v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void fence_acq_rel_sys() { asm volatile("fence.acq_rel.sys;" : : : "memory"); }

__device__ __forceinline__ void store_relaxed_sys(uint64_t* p, uint64_t v) {
    asm volatile("st.relaxed.sys.global.u64 [%0], %1;" : : "l"(p), "l"(v) : "memory");
}

// The counts word of source `src` in an EP buffer: the second u64 of its dispatch line.
__device__ __forceinline__ uint64_t* counts_word(uint8_t* buffer, int src) {
    return reinterpret_cast<uint64_t*>(buffer + static_cast<uint64_t>(src) * kLine) + 1;
}

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

// Two floats to e4m3 bytes (lo in the low byte) with the hardware conversion: nearest even, saturating
// at +-448, which is FloatFormats.floatToE4m3 bit for bit (cuda/e4m3-check.sh compares every one of the
// 2^32 floats); NaN becomes 0x7f like there (the hardware keeps a NaN's sign).
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
    uint16_t r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    uint32_t v = r;
    if (lo != lo) v = (v & 0xff00u) | 0x7fu;
    if (hi != hi) v = (v & 0x00ffu) | 0x7f00u;
    return v;
}

// Copies `bytes` with the lanes of one warp: 16-byte vectors when both ends allow, else bytes.
__device__ __forceinline__ void warp_copy(uint8_t* dst, const uint8_t* src, uint64_t bytes, int lane) {
    if (aligned16(dst) && aligned16(src) && (bytes & 15) == 0) {
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        const uint64_t n = bytes / 16;
        // up to eight loads in flight per lane before their stores (a row part is one round)
        constexpr int kInFlight = 8;
        for (uint64_t v0 = lane; v0 < n; v0 += 32 * kInFlight) {
            uint4 r[kInFlight];
#pragma unroll
            for (int i = 0; i < kInFlight; ++i) {
                if (v0 + 32 * i < n) r[i] = __ldcg(s + v0 + 32 * i);
            }
#pragma unroll
            for (int i = 0; i < kInFlight; ++i) {
                if (v0 + 32 * i < n) d[v0 + 32 * i] = r[i];
            }
        }
    } else {
        for (uint64_t b = lane; b < bytes; b += 32) dst[b] = __ldcg(src + b);
    }
}

// Part `part` of `parts` of a copy of `bytes` (16-byte aligned parts), by the lanes of one warp.
__device__ __forceinline__ void warp_copy_part(uint8_t* dst, const uint8_t* src, uint64_t bytes, int part, int parts, int lane) {
    const uint64_t chunk = ((bytes + parts - 1) / parts + 15) & ~15ull;
    const uint64_t begin = part * chunk;
    if (begin >= bytes) return;
    warp_copy(dst + begin, src + begin, min(chunk, bytes - begin), lane);
}

// The last block of a launch to get here returns true (after every block's stores are fenced); it
// resets the counter for the next launch. Every thread of every block must call it. One thread per
// block fences: the barrier orders the other threads' stores before its fence, which is cumulative,
// so the block's stores are visible system-wide before its arrival is counted (one system fence per
// block, not one per warp).
__device__ bool last_block(uint32_t* counter) {
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence_system();
        const uint32_t done = atomicAdd(counter, 1u);
        last = done == gridDim.x - 1;
        if (last) {
            *counter = 0;
            __threadfence_system();
        }
    }
    __syncthreads();
    return last;
}

// Profiling (stamps != null, -Dmooncake4j.ep.profile=true): per kernel kind, stamps[0] = when block 0
// started the latest launch, stamps[1] = launches, stamps[2..7] = sums of the time from that start to
// numbered points of the kernel (%globaltimer ns; CudaEpPath.profileReport names them).
__device__ __forceinline__ void stamp_begin(uint64_t* stamps) {
    if (stamps != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
        stamps[0] = global_timer_ns();
        stamps[1] += 1;
    }
}

// Point `i` as seen by the calling block (thread 0 adds): call it from block 0, or from the last block.
__device__ __forceinline__ void stamp(uint64_t* stamps, int i) {
    if (stamps != nullptr && threadIdx.x == 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(stamps + i),
                  static_cast<unsigned long long>(global_timer_ns() - *reinterpret_cast<volatile uint64_t*>(stamps)));
    }
}

// Point `i` from the start of the kernel whose stamps are `origin` (the send kernel of the same phase,
// profiled with programmatic launches: -Dmooncake4j.ep.profile=pdl), else as stamp(). Only at points
// after that kernel's block 0 has started for this phase (its words or rows have arrived).
__device__ __forceinline__ void stamp_from(uint64_t* stamps, int i, const uint64_t* origin) {
    if (origin == nullptr) {
        stamp(stamps, i);
    } else if (stamps != nullptr && threadIdx.x == 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(stamps + i),
                  static_cast<unsigned long long>(global_timer_ns() - *reinterpret_cast<volatile const uint64_t*>(origin)));
    }
}

// Point `i` when every thread of block 0 has reached it (a barrier of block 0, only when profiling:
// stamps is the same for the whole grid).
__device__ __forceinline__ void stamp_block0(uint64_t* stamps, int i, const uint64_t* origin = nullptr) {
    if (stamps == nullptr || blockIdx.x != 0) return;
    __syncthreads();
    stamp_from(stamps, i, origin);
}

// Whether token row `sel` (K entries) selects e in a slot before k.
__device__ __forceinline__ bool selected_before(const int64_t* sel, int k, int64_t e) {
    for (int q = 0; q < k; ++q) {
        if (sel[q] == e) return true;
    }
    return false;
}

// The message row index of token t for expert e: the earlier tokens that selected e (once each).
// Called by all lanes of a warp; each lane loads four tokens' ids at once (no early exit, so the loads
// are in flight together: a few L2 round trips for the 128 tokens of a low-latency batch).
__device__ int row_index(const int64_t* topk, int t, int K, int64_t e, int lane) {
    int n = 0;
    // (ids outside [0, E) never equal e, which is in range)
    for (int u0 = 0; u0 < t; u0 += 128) {
        bool hit[4] = {false, false, false, false};
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int u = u0 + 32 * m + lane;
            if (u < t) {
                const int64_t* sel = topk + static_cast<int64_t>(u) * K;
                for (int q = 0; q < K; ++q) hit[m] |= __ldg(sel + q) == e;
            }
        }
#pragma unroll
        for (int m = 0; m < 4; ++m) n += hit[m] ? 1 : 0;
    }
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    return n;
}

// Loads this lane's 8 channels of scale blocks b0 (lanes 0-15) and b0 + 1 (lanes 16-31) of token row x
// (H bf16) as floats (zeros past the last block). Called by all lanes of a warp.
__device__ __forceinline__ void load_pair(const uint16_t* x, int blocks, int b0, int lane, bool vec, float v[8]) {
    const int b = b0 + (lane >> 4);
    const int c = b * kScaleChannels + (lane & 15) * 8;
    if (b >= blocks) {
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    } else if (vec) {
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
}

// Quantizes the channels load_pair loaded for b0 into data (H bytes) and scales (H / 128 floats), 8
// channels a lane. Called by all lanes of a warp.
__device__ void quantize_pair(const float v[8], int blocks, uint8_t* data, float* scales, int b0, int lane, bool vec) {
    const int half = lane >> 4, sub = lane & 15;
    const int b = b0 + half;
    const bool on = b < blocks;
    const int c = b * kScaleChannels + sub * 8;
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = java_max(amax, fabsf(v[i]));
    for (int o = 8; o > 0; o >>= 1) amax = java_max(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (!on) return;
    const float scale = amax == 0.0f ? 1.0f : __fdiv_rn(amax, 448.0f);
    uint32_t q[4];   // byte pairs
#pragma unroll
    for (int i = 0; i < 4; ++i) q[i] = e4m3x2(__fdiv_rn(v[2 * i], scale), __fdiv_rn(v[2 * i + 1], scale));
    if (vec) {
        uint2 packed;
        packed.x = q[0] | (q[1] << 16);
        packed.y = q[2] | (q[3] << 16);
        *reinterpret_cast<uint2*>(data + c) = packed;
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) data[c + i] = static_cast<uint8_t>(q[i / 2] >> (8 * (i & 1)));
    }
    if (sub == 0) scales[b] = scale;
}

// The arrived sources of one receive, the same in every block of the grid (see the top of the file).
// needed: null (every active source) or the ranks the dispatch sent to. first_line: 0 for the
// dispatch lines, R for the combine lines; word_index: which u64 of the line (the dispatch receive
// waits for the counts words, 1). status: host-mapped {seq, missing mask}. Every thread of the block
// calls it; it returns the arrived mask to all of them.
__device__ uint32_t wait_decide(const uint8_t* own, int first_line, int word_index, int R, int* active, const int* needed, uint64_t seq,
                                uint64_t timeout_ns, unsigned long long* decision, uint64_t* status) {
    __shared__ uint32_t s_mask;
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const bool need = lane < R && active[lane] != 0 && (needed == nullptr || needed[lane] != 0);
        const uint32_t need_mask = __ballot_sync(0xffffffffu, need);
        const unsigned long long tag = seq & 0xffffffffull;
        const uint64_t* word = reinterpret_cast<const uint64_t*>(own + static_cast<uint64_t>(first_line + (need ? lane : 0)) * kLine) + word_index;
        const uint64_t start = global_timer_ns();
        uint32_t mask = 0;
        bool mine = false;
        for (uint32_t spin = 0;; ++spin) {
            unsigned long long d = 0;
            if (lane == 0) d = load_relaxed_gpu(decision);
            d = __shfl_sync(0xffffffffu, d, 0);
            if ((d >> 32) == tag) {
                mask = static_cast<uint32_t>(d);
                break;
            }
            const bool ok = !need || load_relaxed_sys(word) >= seq;
            const uint32_t got = __ballot_sync(0xffffffffu, need && ok);
            bool late = false;
            if ((spin & 15) == 15) late = global_timer_ns() - start >= timeout_ns;
            late = __shfl_sync(0xffffffffu, late, 0);
            if (got != need_mask && !late) continue;
            unsigned long long result = 0;
            int won = 0;
            if (lane == 0) {
                const unsigned long long cand = (tag << 32) | got;
                unsigned long long prev = d;
                while (true) {
                    const unsigned long long old = atomicCAS(decision, prev, cand);
                    if (old == prev) {
                        won = 1;
                        result = cand;
                        break;
                    }
                    if ((old >> 32) == tag) {
                        result = old;
                        break;
                    }
                    prev = old;
                }
            }
            mask = static_cast<uint32_t>(__shfl_sync(0xffffffffu, result, 0));
            mine = __shfl_sync(0xffffffffu, won, 0) != 0;
            break;
        }
        // acquire each arrived source's word (no fence: a fence here would wait for the stores of a
        // send kernel running beside this block, which took the dispatch receive's decision from about
        // 7 to about 16 us after the send's start at 4 GPUs); the block's barrier below passes it on
        if ((mask >> lane) & 1u) (void)load_acquire_sys(word);
        if (mine) {
            // read by the next kernels (stream order) and by the host after this kernel's done ticket,
            // which the last block releases after every block's fence
            const uint32_t missing = need_mask & ~mask;
            if (lane < R && ((missing >> lane) & 1u)) active[lane] = 0;
            if (lane == 0) {
                reinterpret_cast<volatile uint64_t*>(status)[1] = missing;
                reinterpret_cast<volatile uint64_t*>(status)[0] = seq;
            }
        }
        if (lane == 0) s_mask = mask;
    }
    __syncthreads();
    return s_mask;
}

// off[j] = rows of local experts before j (off[L] = all rows), from cnt[j * R + s] that the block's
// threads have just written. Every thread of the block calls it; warp 0 scans; the block is
// synchronized before and after.
__device__ void expert_offsets(const int* cnt, int R, int L, int* off) {
    __syncthreads();
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        int carry = 0;
        if (lane == 0) off[0] = 0;
        for (int base = 0; base < L; base += 32) {
            const int j = base + lane;
            int v = 0;
            if (j < L) {
                for (int s = 0; s < R; ++s) v += cnt[j * R + s];
            }
            for (int o = 1; o < 32; o <<= 1) {
                const int u = __shfl_up_sync(0xffffffffu, v, o);
                if (lane >= o) v += u;
            }
            if (j < L) off[j + 1] = carry + v;
            carry += __shfl_sync(0xffffffffu, v, 31);
        }
    }
    __syncthreads();
}

// The local expert j with off[j] <= g < off[j + 1] (g < off[L]).
__device__ __forceinline__ int expert_of(const int* off, int L, int g) {
    int lo = 0, hi = L;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (off[mid] <= g) lo = mid;
        else hi = mid;
    }
    return lo;
}

// Deduplicated dispatch: byte offsets within staging of row (j, src, i)'s header and of payload slot (src, t).
__device__ __forceinline__ uint64_t header_offset(int src, int j, int i, int M, uint64_t msg_bytes) {
    return static_cast<uint64_t>(src) * M * msg_bytes + (static_cast<uint64_t>(j) * M + i) * kHeader;
}

__device__ __forceinline__ uint64_t payload_offset(int src, int t, int R, int L, int M, uint64_t msg_bytes) {
    return ((static_cast<uint64_t>(L - 1) * R + src) * M + t) * msg_bytes;
}

// Table mode of ep_dispatch_send: its dynamic shared memory holds the top-k table as int16 expert ids
// [N][K], then the FP8 message being built, then (block 0) int32 row counts [E]. The host sizes it with
// the same arithmetic (CudaEpPath.sendTableBytes).
struct TableLayout {
    uint64_t message;
    uint64_t counts;
    uint64_t bytes;
};

__device__ __forceinline__ TableLayout table_layout(int N, int K, int64_t E, uint64_t msg_bytes) {
    TableLayout l;
    l.message = (2ull * N * K + 15) & ~15ull;
    l.counts = l.message + ((msg_bytes + 15) & ~15ull);
    l.bytes = l.counts + 4ull * E;
    return l;
}

// row_index over the shared top-k table (ids already -1 for slots that do not send). All lanes of a warp.
__device__ int row_index_table(const int16_t* ids, int t, int K, int16_t e, int lane) {
    int n = 0;
    for (int u = lane; u < t; u += 32) {
        const int16_t* sel = ids + u * K;
        bool hit = false;
        for (int q = 0; q < K; ++q) hit |= sel[q] == e;
        n += hit;
    }
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    return n;
}

struct Row {
    int j;     // local expert
    int p;     // packed row within the expert's block
    int src;   // source rank
    int i;     // row within that source's rows
};

__device__ __forceinline__ Row row_of(const int* cnt, const int* off, int R, int L, int g) {
    Row r;
    r.j = expert_of(off, L, g);
    r.p = g - off[r.j];
    int base = 0, s = 0;
    for (; s < R - 1; ++s) {
        const int c = cnt[r.j * R + s];
        if (r.p < base + c) break;
        base += c;
    }
    r.src = s;
    r.i = r.p - base;
    return r;
}

// Calls f(row, part, lane) for every part (< kParts) of every row (< total) of the row table, one warp
// per (row, part), spread over the grid.
template <int kParts, typename F>
__device__ __forceinline__ void for_each_row_part(const int* cnt, const int* off, int R, int L, F f) {
    const int nwarps = blockDim.x >> 5;
    const int64_t tasks = static_cast<int64_t>(off[L]) * kParts;
    for (int64_t task = blockIdx.x * nwarps + (threadIdx.x >> 5); task < tasks; task += static_cast<int64_t>(gridDim.x) * nwarps) {
        f(row_of(cnt, off, R, L, static_cast<int>(task / kParts)), static_cast<int>(task % kParts), threadIdx.x & 31);
    }
}

}  // namespace ep
}  // namespace mooncake4j

// x bf16 [N][H]; topk int64 [N][K]; qbuf: N messages of msg_bytes (device scratch, FP8 only).
// Two blocks per SM (64 registers): a block of ep_dispatch_recv fits beside one when it starts early.
extern "C" __global__ void __launch_bounds__(512, 2)
ep_dispatch_send(const uint16_t* x, const int64_t* topk, const int* active, const uint64_t* heaps, uint64_t ep_base,
                 int rank, int R, int L, int N, int K, int H, int M, int fp8, uint64_t seq, uint64_t counts_off,
                 uint64_t staging_off, uint64_t msg_bytes, int* send_count, int* sent_to, uint32_t* block_counter,
                 uint8_t* qbuf, int dedup, int table, uint64_t* stamps, int row_flags) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    constexpr int kSlots = 64;
    extern __shared__ __align__(16) uint8_t dyn[];   // table mode: see table_layout
    __shared__ int s_row[kSlots];        // per top-k slot: its row i at the destination (-1: not sent) ...
    __shared__ int s_rank[kSlots];       // ... the destination rank ...
    __shared__ uint4* s_dst[kSlots];     // ... and where its message (dedup: its header) goes
    __shared__ uint4* s_msg[kSlots];     // the messages to store: per row, or (dedup) per destination rank ...
    __shared__ uint32_t s_slot[kSlots];  // ... with the top-k slot of their header (0 for a payload slot)
    __shared__ int s_msgs;
    wait_prerequisites();  // queued as a dependent of the previous phase's receive: it has finished
    allow_dependents();    // the receive kernel queued after this one may start now (it waits on the peers' words)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t E = static_cast<int64_t>(R) * L;
    const int blocks = H / kScaleChannels;
    const uint64_t units = fp8 ? (kHeader + static_cast<uint64_t>(H) + 4ull * blocks + 15) / 16 : msg_bytes / 16;
    const bool vec_x = aligned16(x) && (H & 7) == 0;
    const uint4 seq_bits = make_uint4(0, 0, static_cast<uint32_t>(seq), static_cast<uint32_t>(seq >> 32));
    stamp_begin(stamps);
    const TableLayout tl = table_layout(N, K, E, msg_bytes);
    int16_t* ids = reinterpret_cast<int16_t*>(dyn);
    if (table && blockIdx.x == 0) {
        // block 0 reads the whole top-k table once: ids[t][k] = the expert slot k sends to, or -1
        // (masked, out of range, rank inactive, or selected in an earlier slot of the token)
        for (int q = threadIdx.x; q < N * K; q += blockDim.x) {
            const int64_t e = topk[q];
            ids[q] = static_cast<int16_t>(e >= 0 && e < E && active[e / L] != 0 ? e : -1);
        }
        __syncthreads();
        for (int q0 = 0; q0 < N * K; q0 += blockDim.x) {
            const int q = q0 + threadIdx.x;
            bool dup = false;
            if (q < N * K && ids[q] >= 0) {
                const int t = q / K;
                for (int p = t * K; p < q; ++p) dup |= ids[p] == ids[q];
            }
            __syncthreads();
            if (dup) ids[q] = -1;
            __syncthreads();
        }
        {
            // the per-expert row counts and the ranks sent to, stored now and released with the counts
            // word (the receivers place rows as they land from then on)
            int* cnt = reinterpret_cast<int*>(dyn + tl.counts);
            for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
            __syncthreads();
            for (int q = threadIdx.x; q < N * K; q += blockDim.x) {
                if (ids[q] >= 0) atomicAdd(cnt + ids[q], 1);
            }
            __syncthreads();
            for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
                const int r = static_cast<int>(e / L);
                if (active[r] != 0) reinterpret_cast<int*>(base_of(heaps, r, ep_base) + counts_off)[rank * L + e % L] = cnt[e];
            }
            for (int r = threadIdx.x; r < R; r += blockDim.x) sent_to[(seq & 1) * R + r] = active[r] != 0;
            __syncthreads();
            if (threadIdx.x == 0) {
                __threadfence_system();   // cumulative over the block's count stores (barrier above)
                for (int r = 0; r < R; ++r) {
                    if (active[r] != 0) store_relaxed_sys(counts_word(base_of(heaps, r, ep_base), rank), seq);
                }
            }
        }
    }
    if (blockIdx.x == 0) stamp(stamps, 2);
    for (int t = blockIdx.x; t < N; t += gridDim.x) {
        const int64_t* sel = topk + static_cast<int64_t>(t) * K;
        const uint16_t* row = x + static_cast<int64_t>(t) * H;
        uint8_t* q = table ? dyn + tl.message : qbuf + static_cast<uint64_t>(t) * msg_bytes;
        for (int k0 = 0; k0 < K; k0 += kSlots) {
            const int kn = min(kSlots, K - k0);
            for (int kk = warp; kk < kn; kk += nwarps) {
                const int k = k0 + kk;
                int64_t e;
                int i = -1;
                if (table && blockIdx.x == 0) {
                    e = ids[t * K + k];
                    if (e >= 0) i = row_index_table(ids, t, K, static_cast<int16_t>(e), lane);
                } else {
                    e = sel[k];
                    if (e >= 0 && e < E && !selected_before(sel, k, e) && active[e / L] != 0) {
                        i = row_index(topk, t, K, e, lane);
                        if (!table && lane == 0) atomicAdd(send_count + e, 1);
                    }
                }
                if (lane == 0) {
                    s_row[kk] = i;
                    if (i >= 0) {
                        const int r = static_cast<int>(e / L), j = static_cast<int>(e % L);
                        s_rank[kk] = r;
                        s_dst[kk] = reinterpret_cast<uint4*>(base_of(heaps, r, ep_base) + staging_off
                                                              + (dedup ? header_offset(rank, j, i, M, msg_bytes)
                                                                       : ((static_cast<uint64_t>(j) * R + rank) * M + i) * msg_bytes));
                    }
                }
            }
            if (fp8 && k0 == 0) {
                // the warps past the slots' start at once; the slots' warps join when their rows are known
                for (int b0 = 2 * warp; b0 < blocks; b0 += 2 * nwarps) {
                    float v[8];
                    load_pair(row, blocks, b0, lane, vec_x, v);
                    quantize_pair(v, blocks, q + kHeader, reinterpret_cast<float*>(q + kHeader + H), b0, lane, vec_x);
                }
            }
            __syncthreads();   // the slots' rows and the quantized message are complete
            if (blockIdx.x == 0 && t == 0 && k0 == 0) stamp(stamps, 3);
            // the messages: one per row, or (dedup) one per destination rank into its payload slot
            if (threadIdx.x == 0) {
                int n = 0;
                uint32_t ranks = 0;   // dedup: the destination ranks listed so far (R <= 8)
                for (int kk = 0; kk < kn; ++kk) {
                    if (s_row[kk] < 0) continue;
                    if (!dedup) {
                        s_msg[n] = s_dst[kk];
                        s_slot[n++] = static_cast<uint32_t>(k0 + kk);
                    } else if (((ranks >> s_rank[kk]) & 1u) == 0) {
                        ranks |= 1u << s_rank[kk];
                        s_msg[n] = reinterpret_cast<uint4*>(base_of(heaps, s_rank[kk], ep_base) + staging_off
                                                            + payload_offset(rank, t, R, L, M, msg_bytes));
                        s_slot[n++] = 0;
                    }
                }
                s_msgs = n;
            }
            __syncthreads();
            const int nm = s_msgs;
            if (fp8 || vec_x) {
                // each 16 bytes of the message are loaded once and stored to every destination
                const uint4* src = fp8 ? reinterpret_cast<const uint4*>(q) : reinterpret_cast<const uint4*>(row) - 1;
                for (uint64_t v = threadIdx.x; v < units; v += blockDim.x) {
                    if (v == 0) {
                        // a row's header gets its sequence number after the fence below (the row's flag);
                        // a dedup payload slot's header goes with its data (read after a row's flag)
                        for (int d = 0; d < nm; ++d) {
                            if (dedup) s_msg[d][0] = make_uint4(static_cast<uint32_t>(t), 0, seq_bits.z, seq_bits.w);
                            else *reinterpret_cast<uint2*>(s_msg[d]) = make_uint2(static_cast<uint32_t>(t), s_slot[d]);
                        }
                        continue;
                    }
                    const uint4 val = fp8 ? src[v] : __ldg(src + v);
                    for (int d = 0; d < nm; ++d) s_msg[d][v] = val;
                }
            } else {
                for (int d = 0; d < nm; ++d) {
                    if (threadIdx.x == 0) {
                        if (dedup) s_msg[d][0] = make_uint4(static_cast<uint32_t>(t), 0, seq_bits.z, seq_bits.w);
                        else *reinterpret_cast<uint2*>(s_msg[d]) = make_uint2(static_cast<uint32_t>(t), s_slot[d]);
                    }
                    uint8_t* msg = reinterpret_cast<uint8_t*>(s_msg[d]);
                    const uint8_t* src = reinterpret_cast<const uint8_t*>(row);
                    for (uint64_t b = threadIdx.x; b < 2ull * H; b += blockDim.x) msg[kHeader + b] = src[b];
                }
            }
            if (dedup) {
                // and each row's 16-byte header, which names the token
                for (int kk = threadIdx.x; kk < kn; kk += blockDim.x) {
                    if (s_row[kk] >= 0) *reinterpret_cast<uint2*>(s_dst[kk]) = make_uint2(static_cast<uint32_t>(t), static_cast<uint32_t>(k0 + kk));
                }
            }
            __syncthreads();
            if (threadIdx.x == 0 && row_flags) {
                // the rows' flags: once the token's stores are visible (the fence is cumulative over the
                // block's stores through the barrier), each row's header gets its sequence number, which
                // the receiver polls to copy the row as soon as it has landed (row_flags = 0 only to
                // test a source that fails mid-dispatch)
                __threadfence_system();
                if (dedup) {
                    for (int kk = 0; kk < kn; ++kk) {
                        if (s_row[kk] >= 0) store_relaxed_sys(reinterpret_cast<uint64_t*>(s_dst[kk]) + 1, seq);
                    }
                } else {
                    for (int d = 0; d < nm; ++d) store_relaxed_sys(reinterpret_cast<uint64_t*>(s_msg[d]) + 1, seq);
                }
            }
            __syncthreads();   // before s_row and the message buffer are reused
        }
    }
    if (blockIdx.x == 0) stamp(stamps, 4);
    if (!last_block(block_counter)) return;
    stamp(stamps, 5);
    int* sent = sent_to + (seq & 1) * R;
    for (int64_t q = threadIdx.x; q < E && !table; q += blockDim.x) {
        const int r = static_cast<int>(q / L);
        const int c = __ldcg(send_count + q);
        if (active[r] != 0) {
            reinterpret_cast<int*>(base_of(heaps, r, ep_base) + counts_off)[rank * L + q % L] = c;
        }
        send_count[q] = 0;
    }
    if (!table) {
        for (int r = threadIdx.x; r < R; r += blockDim.x) sent[r] = active[r] != 0;
        __syncthreads();
        if (threadIdx.x == 0) __threadfence_system();   // cumulative over the block's count stores (barrier above)
        __syncthreads();
    }
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        if (active[r] != 0) {
            uint8_t* peer = base_of(heaps, r, ep_base);
            if (!table) store_release_sys(counts_word(peer, rank), seq);
            store_release_sys(reinterpret_cast<uint64_t*>(peer + static_cast<uint64_t>(rank) * kLine), seq);
        }
    }
    stamp(stamps, 6);
}

namespace mooncake4j {
namespace ep {

// What the dispatch receive's row copies need (one per launch).
struct DispatchRows {
    uint8_t* own;
    int R, L, M, H, K, fp8, dedup;
    uint64_t seq, staging_off, msg_bytes, recv_x_off, scales_off;
    int* row_src_token;
    int2* slot_rows;
    uint64_t* error;
};

constexpr int kRecvParts = 2;   // warps per received row

// Counts per (local expert, source) of the sources in `mask` into cnt[j * R + s] (a count outside
// [0, M] is reported in the error words and taken as 0) and the expert offsets; with `publish` also the
// counts for the combine (`used`) and recvCount. Every thread of the block calls it.
__device__ void dispatch_layout(const DispatchRows& d, const int* counts, uint32_t mask, int* cnt, int* off, int* used,
                                int* recv_count, bool publish) {
    const int R = d.R, L = d.L;
    for (int q = threadIdx.x; q < L * R; q += blockDim.x) {
        const int j = q / R, s = q % R;
        int c = ((mask >> s) & 1u) ? __ldcg(counts + s * L + j) : 0;
        if (c < 0 || c > d.M) {
            if (publish) {
                d.error[1] = (static_cast<uint64_t>(s) << 48) | (static_cast<uint64_t>(j) << 24) | static_cast<uint32_t>(c & 0xffffff);
                store_release_sys(d.error, 1ull);
            }
            c = 0;
        }
        cnt[q] = c;
        if (publish) used[q] = c;
    }
    expert_offsets(cnt, R, L, off);
    if (publish) {
        for (int j = threadIdx.x; j < L; j += blockDim.x) recv_count[j] = off[j + 1] - off[j];
    }
}

// Part `part` of received row `at`, by one warp. With `wait`, lane 0 first polls the row's flag (the
// sequence number in its header, stored by the sender after the row's data was visible) until it
// reaches d.seq or `timeout_ns` has passed since `start`; returns false when it did not arrive (the
// caller drops its source). A row of another dispatch is reported in the error words.
__device__ bool dispatch_row(const DispatchRows& d, const Row& at, int part, int lane, bool wait, uint64_t start, uint64_t timeout_ns) {
    const uint8_t* hdr = d.own + d.staging_off + (d.dedup ? header_offset(at.src, at.j, at.i, d.M, d.msg_bytes)
                                                          : ((static_cast<uint64_t>(at.j) * d.R + at.src) * d.M + at.i) * d.msg_bytes);
    uint64_t flag = 0;
    if (lane == 0) {
        // acquire loads (no fence per row: the grid's warps poll while the send kernel's blocks store
        // beside them), sleeping between looks
        const uint64_t* word = reinterpret_cast<const uint64_t*>(hdr) + 1;
        flag = load_acquire_sys(word);
        for (uint32_t spin = 1; wait && flag < d.seq; ++spin) {
            if ((spin & 15) == 0 && global_timer_ns() - start >= timeout_ns) break;
            __nanosleep(256);
            flag = load_acquire_sys(word);
        }
    }
    flag = __shfl_sync(0xffffffffu, flag, 0);
    __syncwarp();
    if (wait && flag < d.seq) return false;
    const uint4 header = __ldcg(reinterpret_cast<const uint4*>(hdr));
    uint64_t row_seq = flag;
    const uint8_t* msg = hdr;
    if (d.dedup && row_seq == d.seq) {
        // the row's header names the token; its data is in the source's payload slot for that token
        if (header.x >= static_cast<uint32_t>(d.M)) {
            row_seq = ~0ull;
        } else {
            msg = d.own + d.staging_off + payload_offset(at.src, static_cast<int>(header.x), d.R, d.L, d.M, d.msg_bytes);
            const uint4 slot = __ldcg(reinterpret_cast<const uint4*>(msg));
            row_seq = slot.x == header.x ? (slot.z | (static_cast<uint64_t>(slot.w) << 32)) : ~0ull;
        }
    }
    if (row_seq != d.seq) {
        if (lane == 0 && part == 0) {
            d.error[1] = (static_cast<uint64_t>(at.src) << 48) | (static_cast<uint64_t>(at.i) << 24) | (row_seq & 0xffffffull);
            store_release_sys(d.error, 2ull);
        }
        return true;
    }
    const uint64_t data_bytes = d.fp8 ? static_cast<uint64_t>(d.H) : 2ull * d.H;
    const int blocks = d.H / kScaleChannels;
    const uint64_t row = at.j * (static_cast<uint64_t>(d.R) * d.M) + at.p;
    warp_copy_part(d.own + d.recv_x_off + row * data_bytes, msg + kHeader, data_bytes, part, kRecvParts, lane);
    if (part != 0) return true;
    if (lane == 0) {
        d.row_src_token[row] = at.src * d.M + static_cast<int>(header.x);
        // for the reduced combine: the row of (source, token, top-k slot), tagged with this dispatch
        if (d.slot_rows != nullptr && header.x < static_cast<uint32_t>(d.M) && header.y < static_cast<uint32_t>(d.K)) {
            d.slot_rows[(static_cast<int64_t>(at.src) * d.M + header.x) * d.K + header.y] = make_int2(static_cast<int>(row), static_cast<int>(d.seq));
        }
    }
    if (d.fp8) {
        const float* s_in = reinterpret_cast<const float*>(msg + kHeader + d.H);
        float* s_out = reinterpret_cast<float*>(d.own + d.scales_off) + row * blocks;
        for (int b = lane; b < blocks; b += 32) s_out[b] = __ldcg(s_in + b);
    }
    return true;
}

}  // namespace ep
}  // namespace mooncake4j

// Dynamic shared memory: 4 * (L * R + L + 1) bytes. Built for two blocks per SM (64 registers), so a
// block fits on an SM beside a block of ep_dispatch_send when it starts early (programmatic launch).
// The grid agrees on the sources whose counts arrived (wait_decide on the counts words), then copies
// each row as soon as its flag shows it landed. A source with a row that does not land within
// timeout_ns is late for the whole grid (its bit in `late`): the last block then drops it (0 in
// activeRanks, reported in the status slot) and lays the rows out again without it, by itself.
extern "C" __global__ void __launch_bounds__(512, 2)
ep_dispatch_recv(uint8_t* own, int* active, int* used, int* row_src_token, int R, int L, int M, int H, int fp8,
                 uint64_t seq, uint64_t counts_off, uint64_t recv_count_off, uint64_t staging_off, uint64_t msg_bytes,
                 uint64_t recv_x_off, uint64_t scales_off, uint64_t* error, unsigned long long* decision, uint64_t timeout_ns,
                 uint64_t* wait_status, uint32_t* block_counter, uint64_t* done_word, uint64_t ticket, int dedup, uint64_t* stamps,
                 int K, int2* slot_rows, uint32_t* late, const uint64_t* origin) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    extern __shared__ int smem[];
    int* cnt = smem;            // [L][R]
    int* off = smem + L * R;    // [L + 1]
    stamp_begin(stamps);
    const uint64_t start = global_timer_ns();
    if (origin != nullptr && stamps != nullptr && blockIdx.x == 0 && (threadIdx.x >> 5) == 1) {
        // profiling with programmatic launches: when each source's counts word arrived, and when this
        // block started, from the dispatch send's start (stamps[8 + s], stamps[15]); warp 1 looks
        // while warp 0 decides
        const int lane = threadIdx.x & 31;
        const bool need = lane < R && lane < 7 && active[lane] != 0;
        const uint64_t* word = counts_word(own, need ? lane : 0);
        uint64_t seen = 0;
        for (uint32_t spin = 0;; ++spin) {
            const bool ok = !need || load_relaxed_sys(word) >= seq;
            if (ok && need && seen == 0) seen = global_timer_ns();
            if (__all_sync(0xffffffffu, ok)) break;
            if ((spin & 15) == 15 && __shfl_sync(0xffffffffu, global_timer_ns() - start >= timeout_ns, 0)) break;
        }
        const uint64_t o = *reinterpret_cast<volatile const uint64_t*>(origin);
        if (need && seen != 0) atomicAdd(reinterpret_cast<unsigned long long*>(stamps + 8 + lane), static_cast<unsigned long long>(seen - o));
        if (lane == 31) atomicAdd(reinterpret_cast<unsigned long long*>(stamps + 15), static_cast<unsigned long long>(start - o));
    }
    const uint32_t mask = wait_decide(own, 0, 1, R, active, nullptr, seq, timeout_ns, decision, wait_status);
    if (blockIdx.x == 0) stamp_from(stamps, 2, origin);
    const DispatchRows d{own, R, L, M, H, K, fp8, dedup, seq, staging_off, msg_bytes, recv_x_off, scales_off, row_src_token, slot_rows, error};
    const int* counts = reinterpret_cast<const int*>(own + counts_off);
    int* recv_count = reinterpret_cast<int*>(own + recv_count_off);
    dispatch_layout(d, counts, mask, cnt, off, used, recv_count, blockIdx.x == 0);
    if (blockIdx.x == 0) stamp_from(stamps, 3, origin);
    for_each_row_part<kRecvParts>(cnt, off, R, L, [&](const Row& at, int part, int lane) {
        if (!dispatch_row(d, at, part, lane, true, start, timeout_ns) && lane == 0) atomicOr(late, 1u << at.src);
    });
    stamp_block0(stamps, 4, origin);
    if (!last_block(block_counter)) return;
    stamp_from(stamps, 5, origin);
    __shared__ uint32_t s_late;
    if (threadIdx.x == 0) {
        s_late = *reinterpret_cast<volatile uint32_t*>(late);
        if (s_late != 0) *late = 0;
    }
    __syncthreads();
    const uint32_t lost = s_late & mask;
    if (lost != 0) {
        // every other block is done: lay out the arrived sources without the late ones, here
        dispatch_layout(d, counts, mask & ~lost, cnt, off, used, recv_count, true);
        const int nwarps = blockDim.x >> 5;
        const int64_t tasks = static_cast<int64_t>(off[L]) * kRecvParts;
        for (int64_t task = threadIdx.x >> 5; task < tasks; task += nwarps) {
            dispatch_row(d, row_of(cnt, off, R, L, static_cast<int>(task / kRecvParts)), static_cast<int>(task % kRecvParts),
                         threadIdx.x & 31, false, start, timeout_ns);
        }
        for (int r = threadIdx.x; r < R; r += blockDim.x) {
            if ((lost >> r) & 1u) active[r] = 0;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            volatile uint64_t* st = reinterpret_cast<volatile uint64_t*>(wait_status);
            st[1] = st[1] | lost;
            __threadfence_system();
            store_release_sys(wait_status, seq);
        }
    }
    stamp_from(stamps, 6, origin);
    if (ticket == 0) return;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence_system();   // cumulative over this block's stores (barrier above)
        store_release_sys(done_word, ticket);
    }
}

// y: bf16 [L][R*M][H], the expert outputs in recvX's row order. Dynamic shared memory: 4 * (L * R + L + 1) bytes.
extern "C" __global__ void __launch_bounds__(512, 2)
ep_combine_send(const uint16_t* y, const int* active, const uint64_t* heaps, uint64_t ep_base, int rank, int R, int L,
                int M, int H, uint64_t seq, const int* used, const int* row_src_token, uint64_t combine_recv_off,
                uint32_t* block_counter, uint64_t* stamps) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    extern __shared__ int smem[];
    int* cnt = smem;
    int* off = smem + L * R;
    wait_prerequisites();  // queued as a dependent of the previous phase's receive: it has finished
    allow_dependents();    // the receive kernel queued after this one may start now (it waits on the peers' words)
    stamp_begin(stamps);
    for (int q = threadIdx.x; q < L * R; q += blockDim.x) cnt[q] = __ldcg(used + q);
    expert_offsets(cnt, R, L, off);
    if (blockIdx.x == 0) stamp(stamps, 3);
    const uint64_t expert_rows = static_cast<uint64_t>(R) * M;
    constexpr int kParts = 4;   // warps per row
    for_each_row_part<kParts>(cnt, off, R, L, [&](const Row& at, int part, int lane) {
        if (active[at.src] == 0) return;
        const uint64_t row = at.j * expert_rows + at.p;
        const int token = __ldcg(row_src_token + row) - at.src * M;
        const uint64_t expert = static_cast<uint64_t>(rank) * L + at.j;
        uint8_t* dst = base_of(heaps, at.src, ep_base) + combine_recv_off + (expert * M + token) * 2ull * H;
        warp_copy_part(dst, reinterpret_cast<const uint8_t*>(y + row * H), 2ull * H, part, kParts, lane);
    });
    stamp_block0(stamps, 4);
    if (!last_block(block_counter)) return;
    stamp(stamps, 5);
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        if (active[r] != 0) {
            store_release_sys(reinterpret_cast<uint64_t*>(base_of(heaps, r, ep_base) + static_cast<uint64_t>(R + rank) * kLine), seq);
        }
    }
    stamp(stamps, 6);
}

// The reduced combine's send (reduced = 1, chosen by the host: CudaEpPath.reducedCombine). y: bf16
// [L][R*M][H], the expert outputs in recvX's row order. Block 0 first publishes this rank's own top-k
// table and weights, {int32 expert (or -1), float32 weight} [N][K], into the table area (weights_off) of
// every rank it dispatched to, at [rank][M][K], and release-stores seq into the table word of its
// combine line there (line R + rank, second word). Then one warp per (source s, token t, part of the
// hidden channels): the rows this rank holds for the token (slot_rows, tagged with the dispatch seq
// dseq; a slot that repeats an earlier slot's expert takes that slot's row), once the source's table
// has arrived, are summed as partial = partial + w[k] * y[k] in float32 (no fused multiply-add) over the
// token's slots in order whose expert is on this rank, rounded to bf16 and stored into row (this rank,
// t) of the source's combineRecv: one row per (token, rank) crosses NVLink instead of one per selection.
// Every block's warp 0 first waits for the tables of all active sources. A source whose table does not
// arrive within timeout_ns is skipped and reported: the last block sets
// it to 0 in activeRanks, stores {seq, mask} into the host-mapped status slot, and release-stores seq
// into the combine word of this rank in every other active rank's buffer.
extern "C" __global__ void __launch_bounds__(512, 2)
ep_combine_send_reduced(const uint16_t* y, int* active, const uint64_t* heaps, uint64_t ep_base, int rank, int R, int L,
                        int M, int H, int K, int N, uint64_t seq, uint64_t dseq, const int2* slot_rows, const int64_t* topk,
                        const float* weights, const int* sent_to, uint64_t combine_recv_off, uint64_t table_off,
                        uint64_t timeout_ns, uint32_t* late, uint64_t* status, uint32_t* block_counter, uint64_t* stamps,
                        int parts) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    constexpr int kBatch = 8;    // rows loaded before they are summed
    constexpr int kWarps = 512 / 32;   // the launch bound: CudaEpPath.THREADS threads
    __shared__ int s_row[kWarps][32];  // per warp: its task's rows and weights, in slot order (topK <= 32)
    __shared__ float s_w[kWarps][32];
    __shared__ uint32_t s_ready;
    wait_prerequisites();  // queued as a dependent of the previous phase's receive: it has finished
    allow_dependents();    // the receive kernel queued after this one may start now (it waits on the peers' words)
    stamp_begin(stamps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t E = static_cast<int64_t>(R) * L;
    const uint8_t* own = base_of(heaps, rank, ep_base);
    // block d < R publishes this rank's table to rank d (when it dispatched there) and releases its word
    for (int d = blockIdx.x; d < R; d += gridDim.x) {
        if (sent_to[d] == 0) continue;
        uint8_t* peer = base_of(heaps, d, ep_base);
        uint2* dst = reinterpret_cast<uint2*>(peer + table_off) + static_cast<uint64_t>(rank) * M * K;
        for (int q = threadIdx.x; q < N * K; q += blockDim.x) {
            const int64_t e = topk[q];
            dst[q] = make_uint2(static_cast<uint32_t>(e >= 0 && e < E ? static_cast<int>(e) : -1), __float_as_uint(weights[q]));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence_system();
            store_release_sys(reinterpret_cast<uint64_t*>(peer + static_cast<uint64_t>(R + rank) * kLine + 8), seq);
        }
    }
    if (blockIdx.x == 0) stamp(stamps, 2);
    // warp 0 waits for the tables of the active sources (each lane one source) until the deadline; a
    // source still missing then is late for the whole grid (its bit in `late`)
    if (warp == 0) {
        const bool need = lane < R && active[lane] != 0;
        const uint32_t need_mask = __ballot_sync(0xffffffffu, need);
        const uint64_t* word = reinterpret_cast<const uint64_t*>(own + static_cast<uint64_t>(R + (need ? lane : 0)) * kLine + 8);
        const uint64_t start = global_timer_ns();
        uint32_t got = 0;
        for (uint32_t spin = 0;; ++spin) {
            got = __ballot_sync(0xffffffffu, need && load_relaxed_sys(word) >= seq);
            if (got == need_mask) break;
            bool over = false;
            if ((spin & 15) == 15) over = global_timer_ns() - start >= timeout_ns;
            if (__shfl_sync(0xffffffffu, over, 0)) break;
        }
        fence_acq_rel_sys();
        if (lane == 0) {
            if (got != need_mask) atomicOr(late, need_mask & ~got);
            s_ready = got;
        }
    }
    __syncthreads();
    const uint32_t ready = s_ready;
    if (blockIdx.x == 0) stamp(stamps, 3);
    // `parts` warps per (source, token) (the host picks about one task per warp of the grid), each a
    // whole number of 32-vector rounds of the row's H / 8 vectors of 8 channels
    const int h8 = H / 8;
    const int per_part = (((h8 + parts - 1) / parts) + 31) & ~31;
    const int dtag = static_cast<int>(dseq);
    const int64_t tasks = static_cast<int64_t>(R) * M * parts;
    for (int64_t task = static_cast<int64_t>(blockIdx.x) * nwarps + warp; task < tasks; task += static_cast<int64_t>(gridDim.x) * nwarps) {
        const int part = static_cast<int>(task % parts);
        const int st = static_cast<int>(task / parts);   // s * M + t
        if (part * per_part >= h8) continue;
        const int s = st / M, t = st % M;
        const int2 sr = lane < K ? slot_rows[static_cast<int64_t>(st) * K + lane] : make_int2(-1, dtag - 1);
        const bool held = lane < K && sr.y == dtag;
        if (__ballot_sync(0xffffffffu, held) == 0) continue;   // no row of this token here
        if (((ready >> s) & 1u) == 0) continue;   // its table did not arrive in time
        uint2 ent = make_uint2(0xffffffffu, 0);
        if (lane < K) ent = __ldcg(reinterpret_cast<const uint2*>(own + table_off) + static_cast<int64_t>(st) * K + lane);
        const int e = static_cast<int>(ent.x);
        const bool on = lane < K && e >= 0 && e < E && e / L == rank;
        const int held_row = held ? sr.x : -1;
        int row = held_row;
        // a slot that repeats an earlier slot's expert was sent once, with that slot: take its row
        for (int q = 0; q < K; ++q) {
            const int eq = __shfl_sync(0xffffffffu, e, q);
            const int rq = __shfl_sync(0xffffffffu, held_row, q);
            if (on && row < 0 && q < lane && eq == e && rq >= 0) row = rq;
        }
        const bool use = on && row >= 0;
        const uint32_t slots = __ballot_sync(0xffffffffu, use);
        const int n = __popc(slots);
        if (use) {
            const int at = __popc(slots & ((1u << lane) - 1u));
            s_row[warp][at] = row;
            s_w[warp][at] = __uint_as_float(ent.y);
        }
        __syncwarp();
        if (n > 0) {
            uint8_t* dst = base_of(heaps, s, ep_base) + combine_recv_off + (static_cast<uint64_t>(rank) * M + t) * 2ull * H;
            const int v_end = min(h8, (part + 1) * per_part);
            for (int v = part * per_part + lane; v < v_end; v += 32) {
                float acc[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
                for (int b0 = 0; b0 < n; b0 += kBatch) {
                    uint4 raw[kBatch];
#pragma unroll
                    for (int b = 0; b < kBatch; ++b) {
                        if (b0 + b < n) raw[b] = __ldg(reinterpret_cast<const uint4*>(y + static_cast<uint64_t>(s_row[warp][b0 + b]) * H) + v);
                    }
#pragma unroll
                    for (int b = 0; b < kBatch; ++b) {
                        if (b0 + b >= n) continue;
                        const float wk = s_w[warp][b0 + b];
                        const uint32_t r4[4] = {raw[b].x, raw[b].y, raw[b].z, raw[b].w};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            acc[2 * i] = __fadd_rn(acc[2 * i], __fmul_rn(wk, bf16_bits_to_float(r4[i])));
                            acc[2 * i + 1] = __fadd_rn(acc[2 * i + 1], __fmul_rn(wk, bf16_bits_to_float(r4[i] >> 16)));
                        }
                    }
                }
                uint4 packed;
                packed.x = float_to_bf16_bits(acc[0]) | (float_to_bf16_bits(acc[1]) << 16);
                packed.y = float_to_bf16_bits(acc[2]) | (float_to_bf16_bits(acc[3]) << 16);
                packed.z = float_to_bf16_bits(acc[4]) | (float_to_bf16_bits(acc[5]) << 16);
                packed.w = float_to_bf16_bits(acc[6]) | (float_to_bf16_bits(acc[7]) << 16);
                reinterpret_cast<uint4*>(dst)[v] = packed;
            }
        }
        __syncwarp();   // before s_row / s_w are rewritten
    }
    stamp_block0(stamps, 4);
    if (!last_block(block_counter)) return;
    stamp(stamps, 5);
    __shared__ uint32_t s_late;
    if (threadIdx.x == 0) {
        s_late = *reinterpret_cast<volatile uint32_t*>(late);
        *late = 0;
    }
    __syncthreads();
    const uint32_t lost = s_late;
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
        if ((lost >> r) & 1u) {
            active[r] = 0;
        } else if (active[r] != 0) {
            store_release_sys(reinterpret_cast<uint64_t*>(base_of(heaps, r, ep_base) + static_cast<uint64_t>(R + rank) * kLine), seq);
        }
    }
    if (threadIdx.x == 0) {
        reinterpret_cast<volatile uint64_t*>(status)[1] = lost;
        __threadfence_system();
        store_release_sys(status, seq);
    }
    stamp(stamps, 6);
}

namespace mooncake4j {
namespace ep {

// The ranks (bits) holding a kept slot of a token's top-k row sel: expert id in [0, E), rank in mask.
__device__ __forceinline__ uint32_t kept_ranks(const int64_t* sel, int K, int64_t E, int L, uint32_t mask) {
    uint32_t ranks = 0;
    for (int k = 0; k < K; ++k) {
        const int64_t e = sel[k];
        if (e >= 0 && e < E && ((mask >> (e / L)) & 1u) != 0) ranks |= 1u << (e / L);
    }
    return ranks;
}

}  // namespace ep
}  // namespace mooncake4j

// The sum of one token's partials: per rank in rank order, over the ranks with a kept slot (expert id in
// [0, E), rank arrived), acc = acc + partial; each rank's partial being, in slot order over its slots,
// p = p + w[k] * y[k] in float32 (no fused multiply-add) rounded to bf16. With reduced = 1 the expert
// ranks sent the partials (ep_combine_send_reduced: row (r, t) of combineRecv); else every selected
// expert's row (row (e, t)) and the partials are formed here. Either way the same bits, like
// HostEpPath.
extern "C" __global__ void __launch_bounds__(512, 2)
ep_combine_recv(const uint8_t* own, const int64_t* topk, const float* weights, int* active, const int* sent_to,
                uint16_t* out, int N, int K, int R, int L, int M, int H, uint64_t combine_recv_off, uint64_t seq,
                unsigned long long* decision, uint64_t timeout_ns, uint64_t* wait_status, uint32_t* block_counter,
                uint64_t* done_word, uint64_t ticket, uint64_t* stamps, int reduced, const uint64_t* origin) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    stamp_begin(stamps);
    const uint32_t mask = wait_decide(own, R, 0, R, active, sent_to, seq, timeout_ns, decision, wait_status);
    if (blockIdx.x == 0) stamp_from(stamps, 2, origin);
    const int64_t E = static_cast<int64_t>(R) * L;
    const uint8_t* rows = own + combine_recv_off;
    const uint64_t row_bytes = 2ull * H;
    constexpr int kBatch = 8;
    if ((H & 7) == 0 && aligned16(out) && aligned16(rows)) {
        const uint64_t h8 = static_cast<uint64_t>(H) / 8;
        for (uint64_t w = thread_index(); w < static_cast<uint64_t>(N) * h8; w += thread_count()) {
            const int t = static_cast<int>(w / h8);
            const uint64_t c = (w % h8) * 8;
            const int64_t* sel = topk + static_cast<int64_t>(t) * K;
            const float* wt = weights + static_cast<int64_t>(t) * K;
            float acc[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
            uint32_t touched = kept_ranks(sel, K, E, L, mask);
            if (reduced) {
                // up to kBatch ranks' partial rows are loaded before any is added (in rank order)
                while (touched != 0) {
                    uint4 raw[kBatch];
                    bool on[kBatch];
#pragma unroll
                    for (int b = 0; b < kBatch; ++b) {
                        on[b] = touched != 0;
                        if (on[b]) {
                            const int r = __ffs(touched) - 1;
                            touched &= touched - 1;
                            raw[b] = __ldcg(reinterpret_cast<const uint4*>(rows + (static_cast<uint64_t>(r) * M + t) * row_bytes + 2 * c));
                        }
                    }
#pragma unroll
                    for (int b = 0; b < kBatch; ++b) {
                        if (!on[b]) continue;
                        const uint32_t v[4] = {raw[b].x, raw[b].y, raw[b].z, raw[b].w};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            acc[2 * i] = __fadd_rn(acc[2 * i], bf16_bits_to_float(v[i]));
                            acc[2 * i + 1] = __fadd_rn(acc[2 * i + 1], bf16_bits_to_float(v[i] >> 16));
                        }
                    }
                }
            } else {
                // each rank's slots in order into a partial: one pass over the slots per rank (rows
                // come from L2; the common top-k of a few ranks makes this a handful of passes)
                for (; touched != 0; touched &= touched - 1) {
                    const int r = __ffs(touched) - 1;
                    float p[8];
#pragma unroll
                    for (int i = 0; i < 8; ++i) p[i] = 0.0f;
                    for (int k0 = 0; k0 < K; k0 += kBatch) {
                        uint4 raw[kBatch];
                        float wk[kBatch];
                        bool on[kBatch];
#pragma unroll
                        for (int b = 0; b < kBatch; ++b) {
                            const int k = k0 + b;
                            const int64_t e = k < K ? sel[k] : -1;
                            on[b] = e >= 0 && e < E && e / L == r;
                            wk[b] = on[b] ? wt[k] : 0.0f;
                            raw[b] = on[b] ? __ldcg(reinterpret_cast<const uint4*>(rows + (static_cast<uint64_t>(e) * M + t) * row_bytes + 2 * c))
                                           : make_uint4(0, 0, 0, 0);
                        }
#pragma unroll
                        for (int b = 0; b < kBatch; ++b) {
                            if (!on[b]) continue;
                            const uint32_t v[4] = {raw[b].x, raw[b].y, raw[b].z, raw[b].w};
#pragma unroll
                            for (int i = 0; i < 4; ++i) {
                                p[2 * i] = __fadd_rn(p[2 * i], __fmul_rn(wk[b], bf16_bits_to_float(v[i])));
                                p[2 * i + 1] = __fadd_rn(p[2 * i + 1], __fmul_rn(wk[b], bf16_bits_to_float(v[i] >> 16)));
                            }
                        }
                    }
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], bf16_bits_to_float(float_to_bf16_bits(p[i])));
                }
            }
            uint4 packed;
            packed.x = float_to_bf16_bits(acc[0]) | (float_to_bf16_bits(acc[1]) << 16);
            packed.y = float_to_bf16_bits(acc[2]) | (float_to_bf16_bits(acc[3]) << 16);
            packed.z = float_to_bf16_bits(acc[4]) | (float_to_bf16_bits(acc[5]) << 16);
            packed.w = float_to_bf16_bits(acc[6]) | (float_to_bf16_bits(acc[7]) << 16);
            *reinterpret_cast<uint4*>(out + static_cast<uint64_t>(t) * H + c) = packed;
        }
    } else {
        for (uint64_t w = thread_index(); w < static_cast<uint64_t>(N) * H; w += thread_count()) {
            const int t = static_cast<int>(w / H);
            const uint64_t c = w % H;
            const int64_t* sel = topk + static_cast<int64_t>(t) * K;
            uint32_t touched = kept_ranks(sel, K, E, L, mask);
            float acc = 0.0f;
            for (; touched != 0; touched &= touched - 1) {
                const int r = __ffs(touched) - 1;
                float p;
                if (reduced) {
                    p = bf16_bits_to_float(__ldcg(reinterpret_cast<const uint16_t*>(rows + (static_cast<uint64_t>(r) * M + t) * row_bytes) + c));
                } else {
                    p = 0.0f;
                    for (int k = 0; k < K; ++k) {
                        const int64_t e = sel[k];
                        if (e < 0 || e >= E || e / L != r) continue;
                        const uint16_t* row = reinterpret_cast<const uint16_t*>(rows + (static_cast<uint64_t>(e) * M + t) * row_bytes);
                        p = __fadd_rn(p, __fmul_rn(weights[static_cast<int64_t>(t) * K + k], bf16_bits_to_float(__ldcg(row + c))));
                    }
                    p = bf16_bits_to_float(float_to_bf16_bits(p));
                }
                acc = __fadd_rn(acc, p);
            }
            out[static_cast<uint64_t>(t) * H + c] = static_cast<uint16_t>(float_to_bf16_bits(acc));
        }
    }
    stamp_block0(stamps, 4, origin);
    if (!last_block(block_counter)) return;
    stamp_from(stamps, 5, origin);
    stamp_from(stamps, 6, origin);
    if (ticket != 0 && threadIdx.x == 0) store_release_sys(done_word, ticket);
}

extern "C" __global__ void ep_host_signal(uint64_t* word, uint64_t value) {
    using namespace mooncake4j;
    using namespace mooncake4j::ep;
    __threadfence_system();
    store_release_sys(word, value);
}
