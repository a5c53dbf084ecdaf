// GPU collectives over a symmetric heap: every rank (one process, one GPU) owns one heap of the same
// layout and has every peer's heap mapped (NVLink), so kernels load and store peers' memory directly.
//
// Heap layout (SymmetricHeap.Layout on the host):
//   [0, 128)                   header: u32 abort word at 0 (device-local; non-zero after a timeout)
//   [128, 128 + 512 * 128)     arrival flags: row b (one per block index, 128 bytes) holds one u64 per
//                              peer; flags[b][p] is written by block b of rank p, read by this rank
//   [data_offset, +2 * bank)   data: two banks, used alternately by consecutive chunks
//
// The kernels (entry points at the end):
//   all-reduce   one-shot (small: every rank stages its input, one barrier, every rank sums all copies),
//                two-shot pull or push (reduce-scatter + all-gather in pipelined chunks, any size)
//   all-gather   push: every rank stores its input into slot `rank` of every peer's bank, barrier,
//                then copies the received slots into its output (local); chunks, any size
//   reduce-scatter, all-to-all   push, one slot per source rank, the same chunks and barriers
//   scale        x / divisor in place (AVG); no peers
// Every NVLink access of all-gather, reduce-scatter, all-to-all and the push all-reduce is a store
// (NVLink reads are slow); only one-shot and the pull all-reduce load peers' memory.
//
// Synchronisation: per-block barriers. Block b of rank r publishes its part of a chunk, then
// release-stores the epoch into flags[b][r] of every peer, and waits (acquire, with a %globaltimer
// deadline) until flags[b][p] >= epoch for every peer p. Every rank launches the same grid for the
// same operation and splits the data identically, so block b only ever reads what block b of the
// peers wrote: no grid-wide synchronisation is needed, and blocks run at their own pace. Flags only
// grow (epochs come from a per-heap counter on the host that every rank advances identically, by the
// barriers of each launch), so a waiter is never satisfied by a store of an earlier chunk or call.
//
// Reuse without a second barrier: consecutive chunks (within one kernel and across kernels) use the
// two banks alternately. Chunk k+2 overwrites the bank of chunk k only after its writer passed a
// barrier of chunk k+1, which every peer enters only after its reads of chunk k (same block index
// within a kernel; a finished kernel across kernels, as the operations of one heap are issued on one
// stream in the same order on every rank).
//
// Timeouts: a wait that passes timeout_ns reports the peers that did not arrive: the block ORs a
// bitmask of their ranks into status[1 + block] (page-locked, device-mapped host memory), sets
// status[0] = 1, ORs the mask into the heap's abort word, and the kernel exits. Later waits on this
// GPU see the abort word and exit at once, so a dead peer costs one timeout, not one per operation, and
// a launch that starts on an aborted heap does nothing at all (begin_block). The timed-out launch's
// ticket is recorded too, so the host can tell whether an earlier launch it checks late is the one that
// failed (CudaCollectives.check(long)). The host reads status once the kernel is done (check()).
//
// Final sync step: with sync_epoch != 0 every block whose data phase completed meets block b of every
// peer once more before it signals done (end_block). A kernel that ends without a timeout has thus
// shown that every rank holds the complete result, and the process group skips its host sync step; a
// timeout in this step is reported without kDataIncomplete, so the host can tell a complete result
// (whose commit the group's agreement decides) from an incomplete one (redone).
//
// Completion: every kernel takes a host-mapped array `done` and a `ticket` (one per launch, growing);
// block b release-stores the ticket into done[b] (system scope) as its last act, after everything it
// wrote, status included. The host polls done[0, blocks) of the last launch of an operation
// (CudaCollectives.lastKernelDone()) instead of recording and querying an event: no extra launch, no
// driver call per poll. Tickets only grow, so a word from an earlier launch never reads as done.
//
// Backup (all-reduce): with backup != null the kernel also writes backup[i] = in[i] for every i <
// count, from the passes that read the input anyway (one-shot: the staging copy; two-shot: the
// scatter/stage pass for the parts other ranks reduce, the reduce pass for this rank's part), so an
// in-place all-reduce needs no separate copy for the group's redo (GpuBackend.restoreInput). Rule:
// the backup is complete whenever the kernel returns, timeout or abort included. Each element of
// the input is read, backed up and (in place) overwritten by one block only, and always backed up
// before or together with the read that precedes its overwrite, so a block never overwrites what it
// has not backed up; a block that leaves early (a barrier failed) first copies every element of its
// slices that it has not backed up yet: those are still intact (backup_rest).
//
// Numerics: all-reduce sums in rank order (rank 0 + rank 1 + ...); bf16 accumulates in fp32 and is
// rounded to nearest-even once, so every rank gets bitwise-identical results.
#include <cuda_bf16.h>

#include "common.cuh"

namespace mooncake4j {
namespace collectives {

constexpr int kMaxRanks = 8;            // SymmetricHeap.MAX_RANKS
constexpr uint64_t kFlagsOffset = 128;  // SymmetricHeap.Layout.FLAGS_OFFSET
constexpr uint64_t kFlagRowBytes = 128; // SymmetricHeap.Layout.FLAG_ROW_BYTES

enum WaitResult { kArrived = 0, kTimedOut = 1, kAborted = 2 };

// status[1 + b] (see "Timeouts"): bits 0..7 the ranks block b found missing (the host reads bits
// 0..15); kDataIncomplete: block b left its data phase early (a wait of it timed out or saw the abort
// word), so this rank's result is incomplete. A timeout without that bit anywhere happened in the
// final sync step.
constexpr uint32_t kDataIncomplete = 1u << 16;

// Whether a flag wait of this block failed (timed out or aborted) in this launch: set by the waiting
// thread, read by the block after a __syncthreads. Cleared at every kernel's start (begin_block).
__shared__ int g_wait_failed;

// The per-launch view of the heaps, built from the kernel parameters.
struct Comm {
    uint8_t* heap[kMaxRanks];   // heap base of every rank (unused entries are null)
    int rank;
    uint64_t data_offset;
    uint64_t bank_bytes;
    uint64_t epoch_base;        // this launch's barriers use epoch_base + 1, + 2, ...
    uint64_t chunk_seq_base;    // chunk k of this launch uses bank (chunk_seq_base + k) & 1
    uint64_t timeout_ns;
    uint32_t* status;           // host-mapped: [0] any timeout, [1 + b] missing-rank mask of block b
    uint64_t ticket;            // this launch's completion ticket (recorded with a timeout)
};

// The ticket of the launch that timed out, a u64 in the status memory (CudaCollectives.FAILED_TICKET_OFFSET):
// only the first failure of a heap is ever recorded, as every later launch on it is skipped (begin_block).
constexpr uint64_t kFailedTicketOffset = 3072;

// heap[i] for a run-time i without indexing a local array (which would live in local memory).
template <int NR>
__device__ __forceinline__ uint8_t* heap_of(const Comm& c, int i) {
    uint8_t* h = c.heap[0];
#pragma unroll
    for (int q = 1; q < NR; ++q) {
        if (i == q) h = c.heap[q];
    }
    return h;
}

__device__ __forceinline__ uint64_t* flag_slot(uint8_t* heap, uint32_t block, int peer) {
    return reinterpret_cast<uint64_t*>(heap + kFlagsOffset + block * kFlagRowBytes + peer * sizeof(uint64_t));
}

__device__ __forceinline__ uint32_t* abort_word(uint8_t* heap) { return reinterpret_cast<uint32_t*>(heap); }

__device__ __forceinline__ uint8_t* bank(const Comm& c, uint8_t* heap, uint64_t chunk) {
    return heap + c.data_offset + ((c.chunk_seq_base + chunk) & 1) * c.bank_bytes;
}

__device__ __forceinline__ uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ uint64_t round_up(uint64_t a, uint64_t m) { return ceil_div(a, m) * m; }

__device__ __forceinline__ uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

// ---- memory-model helpers ------------------------------------------------------------------------

__device__ __forceinline__ uint64_t load_relaxed_sys(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ uint32_t load_relaxed_gpu(const uint32_t* p) {
    uint32_t v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Data other GPUs wrote is read with ld.global.cg (cached in L2 only): after the barrier's acquire
// it cannot come from a stale L1 line of an earlier chunk that used the same bank.
__device__ __forceinline__ uint4 load_cg(const uint4* p) { return __ldcg(p); }

__device__ __forceinline__ uint8_t load_cg(const uint8_t* p) { return __ldcg(p); }

__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }

__device__ __forceinline__ __nv_bfloat16 load_cg(const __nv_bfloat16* p) {
    return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)));
}

// ---- barrier ---------------------------------------------------------------------------------------

// Polls until *flag >= target; gives up after timeout_ns (%globaltimer) or when this GPU's abort word
// is set (an earlier wait timed out: the heap is unusable and the host will report that one).
//
// The flag is polled with relaxed loads and taken, once it is seen, with one acquire load (flags only
// grow, so it still holds the target): no fence.acq_rel.sys, which would also wait for the NVLink
// stores that other warps of this SM have in flight (the other warp group of the pipelined kernel).
__device__ WaitResult wait_flag(const uint64_t* flag, uint64_t target, uint64_t timeout_ns, const uint32_t* abort) {
    if (load_relaxed_sys(flag) >= target) {
        (void)load_acquire_sys(flag);
        return kArrived;
    }
    const uint64_t start = global_timer_ns();
    for (uint32_t spin = 1;; ++spin) {
        if (load_relaxed_sys(flag) >= target) {
            (void)load_acquire_sys(flag);
            return kArrived;
        }
        if ((spin & 15) == 0) {
            WaitResult r = kArrived;
            if (load_relaxed_gpu(abort) != 0) r = kAborted;
            else if (global_timer_ns() - start >= timeout_ns) r = kTimedOut;
            if (r != kArrived) {
                g_wait_failed = 1;
                return r;
            }
        }
    }
}

__device__ void report_timeout(const Comm& c, uint8_t* own, uint32_t missing) {
    atomicOr(abort_word(own), missing);
    *reinterpret_cast<volatile uint64_t*>(reinterpret_cast<uint8_t*>(c.status) + kFailedTicketOffset) = c.ticket;
    volatile uint32_t* mask = c.status + 1 + blockIdx.x;   // only this block writes this word
    *mask = *mask | missing;
    store_release_sys(c.status, 1u);
}

// Block b of this rank and block b of every peer meet: everything this block wrote before the call
// is visible to the peers' block b after it, and the other way round. Returns false (uniformly for
// the block) when a peer did not arrive in time or the heap was aborted; the kernel must then return.
template <int NR>
__device__ bool block_barrier(const Comm& c, uint64_t epoch) {
    __syncthreads();
    const int t = threadIdx.x;
    WaitResult state = kArrived;
    if (t < NR) {
        uint8_t* own = heap_of<NR>(c, c.rank);
        store_release_sys(flag_slot(heap_of<NR>(c, t), blockIdx.x, c.rank), epoch);
        state = wait_flag(flag_slot(own, blockIdx.x, t), epoch, c.timeout_ns, abort_word(own));
    }
    if (!__syncthreads_or(state != kArrived)) return true;
    if (t < 32) {
        const uint32_t missing = __reduce_or_sync(0xffffffffu, state == kTimedOut ? (1u << t) : 0u);
        if (t == 0 && missing != 0) report_timeout(c, heap_of<NR>(c, c.rank), missing);
    }
    return false;
}

// Every collective kernel's blocks start here: no wait of theirs has failed yet. False (uniformly for
// the block) when the heap's abort word is set: an earlier launch timed out, and this one must not
// touch anything (no data, no flags, no status), so that the host can run the operation again later
// from its untouched input (a launch queued behind one that had not been checked yet).
template <int NR>
__device__ __forceinline__ bool begin_block(const Comm& c) {
    if (threadIdx.x == 0) g_wait_failed = 0;
    const uint32_t* abort = abort_word(heap_of<NR>(c, c.rank));
    return !__syncthreads_or(threadIdx.x == 0 && load_relaxed_gpu(abort) != 0);
}

// Every collective kernel's blocks end here, after their part of the operation (uniformly per block).
// A block whose data phase ended early records kDataIncomplete. Otherwise, with sync_epoch != 0, it
// meets block b of every peer once more (the final sync step, flags raised only after the data phase):
// a rank on which every block passes it knows that every rank holds the complete result, which is
// what the process group's host sync step establishes for its host algorithms. A timeout here is
// reported like any other, but without kDataIncomplete: the result is complete, and the host's
// agreement may commit it (see GpuBackend).
template <int NR>
__device__ void end_block(const Comm& c, uint64_t sync_epoch) {
    __syncthreads();
    if (g_wait_failed != 0) {
        if (threadIdx.x == 0) {
            volatile uint32_t* word = c.status + 1 + blockIdx.x;   // only this block writes this word
            *word = *word | kDataIncomplete;
        }
        return;
    }
    if (sync_epoch >> 63) return;   // fault injection (CudaCollectives.withholdFinalSync): skip the step
    if (sync_epoch != 0) (void)block_barrier<NR>(c, sync_epoch);
}

// The last act of every block of every kernel: release-stores this launch's ticket into done[block]
// (host-mapped), after everything the block wrote (the __syncthreads orders the other threads' writes
// before thread 0's release). null: no signal.
__device__ __forceinline__ void signal_done(uint64_t* done, uint64_t ticket) {
    __syncthreads();
    if (threadIdx.x == 0 && done != nullptr) store_release_sys(done + blockIdx.x, ticket);
}

// ---- element math ------------------------------------------------------------------------------

template <typename T>
struct VecMath;

template <>
struct VecMath<float> {
    static constexpr int kElems = 4;
    __device__ static void init(float* a, const uint4& r) {
        a[0] = __uint_as_float(r.x);
        a[1] = __uint_as_float(r.y);
        a[2] = __uint_as_float(r.z);
        a[3] = __uint_as_float(r.w);
    }
    __device__ static void add(float* a, const uint4& r) {
        a[0] += __uint_as_float(r.x);
        a[1] += __uint_as_float(r.y);
        a[2] += __uint_as_float(r.z);
        a[3] += __uint_as_float(r.w);
    }
    __device__ static uint4 pack(const float* a) {
        return make_uint4(__float_as_uint(a[0]), __float_as_uint(a[1]), __float_as_uint(a[2]), __float_as_uint(a[3]));
    }
    __device__ static float to_float(float x) { return x; }
    __device__ static float from_float(float x) { return x; }
};

// bf16 -> fp32 is exact: the bf16 bits are the top half of the fp32 bits.
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }

__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo)))
           | (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

template <>
struct VecMath<__nv_bfloat16> {
    static constexpr int kElems = 8;
    __device__ static void init(float* a, const uint4& r) {
        a[0] = bf16_lo(r.x);
        a[1] = bf16_hi(r.x);
        a[2] = bf16_lo(r.y);
        a[3] = bf16_hi(r.y);
        a[4] = bf16_lo(r.z);
        a[5] = bf16_hi(r.z);
        a[6] = bf16_lo(r.w);
        a[7] = bf16_hi(r.w);
    }
    __device__ static void add(float* a, const uint4& r) {
        a[0] += bf16_lo(r.x);
        a[1] += bf16_hi(r.x);
        a[2] += bf16_lo(r.y);
        a[3] += bf16_hi(r.y);
        a[4] += bf16_lo(r.z);
        a[5] += bf16_hi(r.z);
        a[6] += bf16_lo(r.w);
        a[7] += bf16_hi(r.w);
    }
    __device__ static uint4 pack(const float* a) {
        return make_uint4(pack_bf16x2(a[0], a[1]), pack_bf16x2(a[2], a[3]), pack_bf16x2(a[4], a[5]),
                          pack_bf16x2(a[6], a[7]));
    }
    __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// ---- spans -------------------------------------------------------------------------------------

// Copies n bytes from s to d, and to d2 too when kTwo, with threads [tid, nthreads) of the caller's
// group: 16-byte vectors, four in flight per thread, when the destinations share the source's
// alignment modulo 16; single bytes otherwise.
template <bool kTwo>
__device__ void copy_span_to(uint8_t* d, uint8_t* d2, const uint8_t* s, uint64_t n, uint32_t tid, uint32_t nthreads) {
    const uintptr_t sa = reinterpret_cast<uintptr_t>(s);
    uint64_t head = n;
    uint64_t nvec = 0;
    if (((reinterpret_cast<uintptr_t>(d) ^ sa) & 15) == 0 && (!kTwo || ((reinterpret_cast<uintptr_t>(d2) ^ sa) & 15) == 0)) {
        head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
        if (head > n) head = n;
        nvec = (n - head) / 16;
    }
    for (uint64_t i = tid; i < head; i += nthreads) {
        const uint8_t x = load_cg(s + i);
        d[i] = x;
        if (kTwo) d2[i] = x;
    }
    const uint4* sv = reinterpret_cast<const uint4*>(s + head);
    uint4* dv = reinterpret_cast<uint4*>(d + head);
    uint4* dv2 = reinterpret_cast<uint4*>(kTwo ? d2 + head : d + head);
    uint64_t v = tid;
    for (; v + 3ull * nthreads < nvec; v += 4ull * nthreads) {
        const uint4 a = load_cg(sv + v);
        const uint4 b = load_cg(sv + v + nthreads);
        const uint4 e = load_cg(sv + v + 2ull * nthreads);
        const uint4 f = load_cg(sv + v + 3ull * nthreads);
        dv[v] = a;
        dv[v + nthreads] = b;
        dv[v + 2ull * nthreads] = e;
        dv[v + 3ull * nthreads] = f;
        if (kTwo) {
            dv2[v] = a;
            dv2[v + nthreads] = b;
            dv2[v + 2ull * nthreads] = e;
            dv2[v + 3ull * nthreads] = f;
        }
    }
    for (; v < nvec; v += nthreads) {
        const uint4 a = load_cg(sv + v);
        dv[v] = a;
        if (kTwo) dv2[v] = a;
    }
    for (uint64_t i = head + nvec * 16 + tid; i < n; i += nthreads) {
        const uint8_t x = load_cg(s + i);
        d[i] = x;
        if (kTwo) d2[i] = x;
    }
}

__device__ void copy_span(uint8_t* d, const uint8_t* s, uint64_t n, uint32_t tid, uint32_t nthreads) {
    copy_span_to<false>(d, nullptr, s, n, tid, nthreads);
}

// copy_span to d and, when d2 is not null, to d2 as well (one load, two stores).
__device__ void copy_span2(uint8_t* d, uint8_t* d2, const uint8_t* s, uint64_t n, uint32_t tid, uint32_t nthreads) {
    if (d2 == nullptr) {
        copy_span_to<false>(d, nullptr, s, n, tid, nthreads);
    } else {
        copy_span_to<true>(d, d2, s, n, tid, nthreads);
    }
}

// dst[i] (and dst2[i] when not null) = src[0][i] + src[1][i] + ... + src[NR-1][i] for i in [0, n),
// with all NR loads of a vector in flight together; keep[i] = src[keep_src][i] when keep is not null
// (the backup of the input among the sources). vec: every pointer is 16-byte aligned.
template <typename T, int NR>
__device__ void reduce_span(T* dst, T* dst2, T* keep, int keep_src, const T* const (&src)[NR], uint64_t n, bool vec,
                            uint32_t tid, uint32_t nthreads) {
    using M = VecMath<T>;
    const uint64_t nvec = vec ? n / M::kElems : 0;
    for (uint64_t v = tid; v < nvec; v += nthreads) {
        uint4 raw[NR];
#pragma unroll
        for (int q = 0; q < NR; ++q) raw[q] = load_cg(reinterpret_cast<const uint4*>(src[q]) + v);
        if (keep != nullptr) {
#pragma unroll
            for (int q = 0; q < NR; ++q) {
                if (q == keep_src) reinterpret_cast<uint4*>(keep)[v] = raw[q];
            }
        }
        float acc[8];
        M::init(acc, raw[0]);
#pragma unroll
        for (int q = 1; q < NR; ++q) M::add(acc, raw[q]);
        const uint4 out = M::pack(acc);
        reinterpret_cast<uint4*>(dst)[v] = out;
        if (dst2 != nullptr) reinterpret_cast<uint4*>(dst2)[v] = out;
    }
    for (uint64_t i = nvec * M::kElems + tid; i < n; i += nthreads) {
        float acc = 0.0f;
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            const T x = load_cg(src[q] + i);
            if (keep != nullptr && q == keep_src) keep[i] = x;
            acc = q == 0 ? M::to_float(x) : acc + M::to_float(x);   // rank order, as in the vector path
        }
        const T out = M::from_float(acc);
        dst[i] = out;
        if (dst2 != nullptr) dst2[i] = out;
    }
}

// [lo, hi) of a span of len elements split into gridDim.x slices of `slice` elements.
struct Range {
    uint64_t lo;
    uint64_t hi;
    __device__ uint64_t size() const { return hi - lo; }
};

__device__ __forceinline__ Range block_range(uint64_t len, uint64_t slice) {
    const uint64_t lo = min_u64(blockIdx.x * slice, len);
    return Range{lo, min_u64(lo + slice, len)};
}

// The elements of part q of a chunk of len elements cut into parts of part_len.
__device__ __forceinline__ uint64_t part_size(uint64_t len, uint64_t part_len, int q) {
    const uint64_t start = q * part_len;
    return start >= len ? 0 : min_u64(part_len, len - start);
}

// ---- one-shot all-reduce -----------------------------------------------------------------------
// Each block copies its slice of the input into its own heap (and into the backup, with the same
// loads), meets the peers' same block, then reads the slice from every rank's heap and writes the sum
// to the output. One barrier; the bank parity protects the slice until every peer has read it.
// count * sizeof(T) <= bank_bytes. Backup: complete before the barrier, the only place the kernel
// can give up, and the output (= the input, in place) is written only after it.

template <typename T, int NR>
__device__ void allreduce_oneshot(const T* in, T* out, T* backup, uint64_t count, uint64_t /* chunk: unused */, const Comm& c) {
    constexpr int V = VecMath<T>::kElems;
    const Range r = block_range(count, round_up(ceil_div(count, gridDim.x), V));
    T* own = reinterpret_cast<T*>(bank(c, heap_of<NR>(c, c.rank), 0));
    copy_span2(reinterpret_cast<uint8_t*>(own + r.lo), backup == nullptr ? nullptr : reinterpret_cast<uint8_t*>(backup + r.lo),
               reinterpret_cast<const uint8_t*>(in + r.lo), r.size() * sizeof(T), threadIdx.x, blockDim.x);
    if (!block_barrier<NR>(c, c.epoch_base + 1)) return;
    const T* src[NR];
#pragma unroll
    for (int q = 0; q < NR; ++q) src[q] = reinterpret_cast<const T*>(bank(c, c.heap[q], 0)) + r.lo;
    reduce_span<T, NR>(out + r.lo, nullptr, nullptr, 0, src, r.size(), mooncake4j::aligned16(out), threadIdx.x, blockDim.x);
}

// ---- two-shot all-reduce -----------------------------------------------------------------------
// (pull variant) Per chunk of at most `chunk` elements (chunk * sizeof(T) <= bank_bytes), cut into NR parts:
//   stage:   copy the input's parts q != rank into this rank's bank (block b: slice b of each part)
//   barrier 1
//   reduce:  part `rank` = own input + every peer's staged copy, in rank order; written to the
//            output and in place into this rank's bank (nobody else reads that part before barrier 2)
//   barrier 2
//   gather:  parts q != rank = peer q's reduced part, read from its bank into the output
// From the second chunk on, a quarter of the warps stages chunk k+1 while the rest gathers chunk k,
// so local copies overlap NVLink traffic.
// Backup: stage writes parts q != rank of the backup with the same loads, reduce part `rank`.

struct Chunking {
    uint64_t base;   // first element of the chunk
    uint64_t len;    // elements in the chunk
    uint64_t part;   // elements per part (the last parts may be shorter or empty)
    uint64_t slice;  // elements per block within a part
};

template <typename T, int NR>
__device__ __forceinline__ Chunking two_shot_chunk(uint64_t count, uint64_t chunk, uint64_t k) {
    constexpr int V = VecMath<T>::kElems;
    Chunking ch;
    ch.base = k * chunk;
    ch.len = min_u64(chunk, count - ch.base);
    // the first chunk's part for every chunk, as in push_chunk: block b's bytes of the bank must stay
    // put from chunk to chunk, since block b of a peer only waits for block b (see the push variant)
    ch.part = round_up(ceil_div(min_u64(chunk, count), NR), V);
    ch.slice = round_up(ceil_div(ch.part, gridDim.x), V);
    return ch;
}

// Backup of a two-shot all-reduce (pull or push) for a block that leaves early: a barrier of chunk k
// failed. Copies this block's slices of every part of chunks [from, chunks) of the input to the
// backup. Pass from = k after barrier 1 of chunk k failed (nothing of chunk k is overwritten yet:
// the reduce and the copy-out come after it; re-copying what the scatter/stage already backed up
// writes the same bytes), from = k + 1 after barrier 2 (chunk k is backed up: its scatter/stage
// before barrier 1, its reduce, which overwrites part `rank` in place, before barrier 2). Chunks
// after k are untouched: only this block reads or writes its slices, and it has not reached them.
template <typename T, int NR>
__device__ void backup_rest(const T* in, T* backup, uint64_t count, uint64_t chunk, uint64_t from) {
    if (backup == nullptr) return;
    const uint64_t chunks = ceil_div(count, chunk);
    for (uint64_t k = from; k < chunks; ++k) {
        const Chunking ch = two_shot_chunk<T, NR>(count, chunk, k);
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            const Range r = block_range(part_size(ch.len, ch.part, q), ch.slice);
            const uint64_t at = ch.base + q * ch.part + r.lo;
            copy_span(reinterpret_cast<uint8_t*>(backup + at), reinterpret_cast<const uint8_t*>(in + at), r.size() * sizeof(T),
                      threadIdx.x, blockDim.x);
        }
    }
}

template <typename T, int NR>
__device__ void two_shot_stage(const T* in, T* backup, const Comm& c, const Chunking& ch, uint64_t k, uint32_t tid,
                               uint32_t nthreads) {
    T* own = reinterpret_cast<T*>(bank(c, heap_of<NR>(c, c.rank), k));
#pragma unroll
    for (int q = 0; q < NR; ++q) {
        if (q == c.rank) continue;
        const Range r = block_range(part_size(ch.len, ch.part, q), ch.slice);
        const uint64_t at = q * ch.part + r.lo;
        copy_span2(reinterpret_cast<uint8_t*>(own + at),
                   backup == nullptr ? nullptr : reinterpret_cast<uint8_t*>(backup + ch.base + at),
                   reinterpret_cast<const uint8_t*>(in + ch.base + at), r.size() * sizeof(T), tid, nthreads);
    }
}

template <typename T, int NR>
__device__ void two_shot_gather(T* out, const Comm& c, const Chunking& ch, uint64_t k, uint32_t tid,
                                uint32_t nthreads) {
#pragma unroll
    for (int q = 0; q < NR; ++q) {
        if (q == c.rank) continue;
        const Range r = block_range(part_size(ch.len, ch.part, q), ch.slice);
        const uint64_t at = q * ch.part + r.lo;
        const T* peer = reinterpret_cast<const T*>(bank(c, c.heap[q], k));
        copy_span(reinterpret_cast<uint8_t*>(out + ch.base + at), reinterpret_cast<const uint8_t*>(peer + at),
                  r.size() * sizeof(T), tid, nthreads);
    }
}

template <typename T, int NR>
__device__ void allreduce_twoshot(const T* in, T* out, T* backup, uint64_t count, uint64_t chunk, const Comm& c) {
    const uint64_t chunks = ceil_div(count, chunk);
    const bool vec = mooncake4j::aligned16(in) && mooncake4j::aligned16(out)
                     && (backup == nullptr || mooncake4j::aligned16(backup));
    const uint32_t stagers = blockDim.x / 4;
    for (uint64_t k = 0; k < chunks; ++k) {
        const Chunking ch = two_shot_chunk<T, NR>(count, chunk, k);
        if (k == 0) two_shot_stage<T, NR>(in, backup, c, ch, k, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + 2 * k + 1)) {
            backup_rest<T, NR>(in, backup, count, chunk, k);
            return;
        }

        const Range r = block_range(part_size(ch.len, ch.part, c.rank), ch.slice);
        const uint64_t at = c.rank * ch.part + r.lo;
        T* own = reinterpret_cast<T*>(bank(c, heap_of<NR>(c, c.rank), k));
        const T* src[NR];
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            src[q] = (q == c.rank ? in + ch.base : reinterpret_cast<const T*>(bank(c, c.heap[q], k))) + at;
        }
        reduce_span<T, NR>(out + ch.base + at, own + at, backup == nullptr ? nullptr : backup + ch.base + at, c.rank, src,
                           r.size(), vec, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + 2 * k + 2)) {
            backup_rest<T, NR>(in, backup, count, chunk, k + 1);
            return;
        }

        if (k + 1 < chunks) {
            if (threadIdx.x < stagers) {
                two_shot_stage<T, NR>(in, backup, c, two_shot_chunk<T, NR>(count, chunk, k + 1), k + 1, threadIdx.x, stagers);
            } else {
                two_shot_gather<T, NR>(out, c, ch, k, threadIdx.x - stagers, blockDim.x - stagers);
            }
        } else {
            two_shot_gather<T, NR>(out, c, ch, k, threadIdx.x, blockDim.x);
        }
    }
}

// ---- two-shot all-reduce, push variant -----------------------------------------------------------
// The same chunks as the pull variant, cut into parts and per-block slices alike except that every
// chunk uses the first chunk's part (push_chunk), but every byte crosses NVLink as a store into the
// peer's heap, and every load is local. Within the bank of chunk k of every rank
// (elements from the bank start; 2 * NR * part * sizeof(T) <= bank_bytes, see
// CollectivePlan.pushChunkElements):
//   receive slot s   [s * part, (s + 1) * part):                 part `rank` of rank s's input
//   gather slot q    [(NR + q) * part, (NR + q + 1) * part):     rank q's reduced part q
// Per chunk:
//   scatter: part j of the input -> rank j's receive slot `rank` (j != rank; one 16-byte vector for
//            every peer per loop step, so each rank's stores go to all peers at once)
//   barrier 1
//   reduce:  part `rank` = own input + receive slots, in rank order (local loads); the sum goes to the
//            output and into gather slot `rank` of every peer (NVLink stores)
//   barrier 2
//   copy:    gather slots q != rank -> the output (local)
// From the second chunk on, half the warps scatter chunk k+1 while the other half copies chunk k.
// Bank reuse: chunk k+1 is written into a peer's bank of chunk k-1 only after the writer passed
// barrier 2 of chunk k, which the peer enters after it reduced chunk k-1 (before its barrier 2) and
// copied chunk k-1 out (before its barrier 1 of chunk k); gather slots of chunk k+1 are written after
// barrier 1 of chunk k+1. Across kernels the argument is the one of the pull variant.
// That argument holds per block index only: block b of the writer waits for block b of the peer,
// never for the peer's other blocks, which may be many chunks behind (blocks run at their own pace,
// and here they write each other's memory). So every chunk of a kernel must put block b's bytes of
// every slot at the same place: push_chunk cuts all chunks with the part and slice of the first one,
// and the last chunk's parts are just shorter or empty. (Cutting the last, shorter chunk with its own
// smaller part moved the slots and slices, so block b of a fast rank stored chunk L into bytes that a
// slow block b'' of the peer had yet to read for chunk L-2, L-4, ...: wrong sums from ~1 GiB on.)
// CollectivePlanTest.pushBlocksOwnTheirBankBytesInEveryChunk checks this on the host. Between kernels
// the slots may move: a rank starts the next kernel only after all its blocks passed the last
// barriers, i.e. after every block of every peer arrived there, done with the other bank.

// Chunk k of the push variant: like two_shot_chunk, but part and slice are those of the first chunk
// (min(chunk, count) elements) for every chunk, so that the slots and each block's slice of them stay
// put from chunk to chunk (see above; CollectivePlan.pushPartElements).
// It is two_shot_chunk itself (which backup_rest relies on for both variants).
template <typename T, int NR>
__device__ __forceinline__ Chunking push_chunk(uint64_t count, uint64_t chunk, uint64_t k) {
    return two_shot_chunk<T, NR>(count, chunk, k);
}

// Byte offset of slot `slot` of chunk k within every rank's heap (the heaps share their layout).
template <typename T>
__device__ __forceinline__ uint64_t push_slot_offset(const Comm& c, uint64_t k, const Chunking& ch, int slot) {
    return c.data_offset + ((c.chunk_seq_base + k) & 1) * c.bank_bytes + static_cast<uint64_t>(slot) * ch.part * sizeof(T);
}

// Stores n[j] elements of part j (src + j * stride; n[rank] = 0) into rank j's heap at byte offset
// `to`, and into keep + j * stride when keep is not null: one 16-byte vector for every peer per loop
// step, so each rank's stores go to all peers at once. vec: src, keep and stride are whole vectors
// (16-byte aligned; the heap slots always are); else element by element. Pointers are recomputed from
// a few scalars per step (the heap bases are kernel parameters), so that eight ranks' worth of them
// does not spill.
template <typename T, int NR>
__device__ void scatter_parts(const T* src, uint64_t stride, T* keep, const Comm& c, uint64_t to, const uint32_t (&n)[NR],
                              bool vec, uint32_t tid, uint32_t nthreads) {
    constexpr int V = VecMath<T>::kElems;
    uint32_t longest = 0;
#pragma unroll
    for (int j = 0; j < NR; ++j) longest = n[j] > longest ? n[j] : longest;
    const uint32_t nvec = vec ? longest / V : 0;
    for (uint32_t v = tid; v < nvec; v += nthreads) {
        uint4 x[NR];
#pragma unroll
        for (int j = 0; j < NR; ++j) {
            if ((v + 1) * V <= n[j]) x[j] = load_cg(reinterpret_cast<const uint4*>(src + j * stride) + v);
        }
#pragma unroll
        for (int j = 0; j < NR; ++j) {
            if ((v + 1) * V <= n[j]) {
                reinterpret_cast<uint4*>(c.heap[j] + to)[v] = x[j];
                if (keep != nullptr) __stcs(reinterpret_cast<uint4*>(keep + j * stride) + v, x[j]);
            }
        }
    }
    // Tails: only a part's last slice can end inside a vector (parts and slices are whole vectors).
#pragma unroll
    for (int j = 0; j < NR; ++j) {
        for (uint32_t i = (vec ? n[j] / V * V : 0) + tid; i < n[j]; i += nthreads) {
            const T x = load_cg(src + j * stride + i);
            reinterpret_cast<T*>(c.heap[j] + to)[i] = x;
            if (keep != nullptr) keep[j * stride + i] = x;
        }
    }
}

// This block's slice of chunk k of every part j != rank -> rank j's receive slot `rank`. backup (not
// null): the same elements of it get the values loaded (push_reduce backs up part `rank`).
template <typename T, int NR>
__device__ void push_scatter(const T* in, T* backup, const Comm& c, const Chunking& ch, uint64_t k, uint32_t tid,
                             uint32_t nthreads) {
    const uint64_t lo = ch.base + blockIdx.x * ch.slice;   // the slice of every part, from part 0's start
    uint32_t n[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) {
        n[j] = j == c.rank ? 0u : static_cast<uint32_t>(block_range(part_size(ch.len, ch.part, j), ch.slice).size());
    }
    const bool vec = mooncake4j::aligned16(in) && (backup == nullptr || mooncake4j::aligned16(backup));
    scatter_parts<T, NR>(in + lo, ch.part, backup == nullptr ? nullptr : backup + lo, c,
                         push_slot_offset<T>(c, k, ch, c.rank) + blockIdx.x * ch.slice * sizeof(T), n, vec, tid, nthreads);
}

// result[i] = mine[i] + recv[q * recv_stride + i] (q != rank), summed in rank order (the own input at
// position `rank`), for i < n; the sum also goes to every peer's heap at byte offset `to` (NVLink
// stores), and keep[i] = mine[i] when keep is not null. recv is this rank's own heap (local loads).
// vec: mine, result, keep and recv are 16-byte aligned.
template <typename T, int NR>
__device__ void reduce_push(const T* mine, T* result, T* keep, const T* recv, uint64_t recv_stride, uint64_t to, uint64_t n,
                            bool vec, const Comm& c, uint32_t tid, uint32_t nthreads) {
    using M = VecMath<T>;
    const uint64_t nvec = vec ? n / M::kElems : 0;
    for (uint64_t v = tid; v < nvec; v += nthreads) {
        uint4 raw[NR];
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            raw[q] = load_cg(reinterpret_cast<const uint4*>(q == c.rank ? mine : recv + q * recv_stride) + v);
        }
        if (keep != nullptr) {
#pragma unroll
            for (int q = 0; q < NR; ++q) {
                if (q == c.rank) __stcs(reinterpret_cast<uint4*>(keep) + v, raw[q]);
            }
        }
        float acc[8];
        M::init(acc, raw[0]);
#pragma unroll
        for (int q = 1; q < NR; ++q) M::add(acc, raw[q]);
        const uint4 sum = M::pack(acc);
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            if (q == c.rank) {
                __stcs(reinterpret_cast<uint4*>(result) + v, sum);
            } else {
                reinterpret_cast<uint4*>(c.heap[q] + to)[v] = sum;
            }
        }
    }
    for (uint64_t i = nvec * M::kElems + tid; i < n; i += nthreads) {
        if (keep != nullptr) keep[i] = load_cg(mine + i);
        float acc = M::to_float(load_cg((c.rank == 0 ? mine : recv) + i));
#pragma unroll
        for (int q = 1; q < NR; ++q) acc += M::to_float(load_cg((q == c.rank ? mine : recv + q * recv_stride) + i));
        const T sum = M::from_float(acc);
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            reinterpret_cast<T*>(q == c.rank ? reinterpret_cast<uint8_t*>(result) : c.heap[q] + to)[i] = sum;
        }
    }
}

// Part `rank`, slice of this block: the sum in rank order of the own input and the receive slots,
// written to the output and to gather slot `rank` of every peer; the own input also to the backup.
template <typename T, int NR>
__device__ void push_reduce(const T* in, T* out, T* backup, const Comm& c, const Chunking& ch, uint64_t k, bool vec) {
    const Range r = block_range(part_size(ch.len, ch.part, c.rank), ch.slice);
    const uint64_t at = ch.base + c.rank * ch.part + r.lo;
    const T* recv = reinterpret_cast<const T*>(heap_of<NR>(c, c.rank) + push_slot_offset<T>(c, k, ch, 0)) + r.lo;
    reduce_push<T, NR>(in + at, out + at, backup == nullptr ? nullptr : backup + at, recv, ch.part,
                       push_slot_offset<T>(c, k, ch, NR + c.rank) + r.lo * sizeof(T), r.size(), vec, c, threadIdx.x, blockDim.x);
}

template <typename T, int NR>
__device__ void push_copy_out(T* out, const Comm& c, const Chunking& ch, uint64_t k, uint32_t tid, uint32_t nthreads) {
    uint8_t* own = heap_of<NR>(c, c.rank);
#pragma unroll
    for (int q = 0; q < NR; ++q) {
        if (q == c.rank) continue;
        const Range r = block_range(part_size(ch.len, ch.part, q), ch.slice);
        copy_span(reinterpret_cast<uint8_t*>(out + ch.base + q * ch.part + r.lo),
                  own + push_slot_offset<T>(c, k, ch, NR + q) + r.lo * sizeof(T), r.size() * sizeof(T), tid, nthreads);
    }
}

template <typename T, int NR>
__device__ void allreduce_twoshot_push(const T* in, T* out, T* backup, uint64_t count, uint64_t chunk, const Comm& c) {
    const uint64_t chunks = ceil_div(count, chunk);
    const bool vec = mooncake4j::aligned16(in) && mooncake4j::aligned16(out)
                     && (backup == nullptr || mooncake4j::aligned16(backup));
    const uint32_t scatterers = blockDim.x / 2;
    for (uint64_t k = 0; k < chunks; ++k) {
        const Chunking ch = push_chunk<T, NR>(count, chunk, k);
        if (k == 0) push_scatter<T, NR>(in, backup, c, ch, k, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + 2 * k + 1)) {
            backup_rest<T, NR>(in, backup, count, chunk, k);
            return;
        }
        push_reduce<T, NR>(in, out, backup, c, ch, k, vec);
        if (!block_barrier<NR>(c, c.epoch_base + 2 * k + 2)) {
            backup_rest<T, NR>(in, backup, count, chunk, k + 1);
            return;
        }
        if (k + 1 < chunks) {
            if (threadIdx.x < scatterers) {
                push_scatter<T, NR>(in, backup, c, push_chunk<T, NR>(count, chunk, k + 1), k + 1, threadIdx.x, scatterers);
            } else {
                push_copy_out<T, NR>(out, c, ch, k, threadIdx.x - scatterers, blockDim.x - scatterers);
            }
        } else {
            push_copy_out<T, NR>(out, c, ch, k, threadIdx.x, blockDim.x);
        }
    }
}

// Threads of a block in its storing group: `scatter` (a kernel parameter, whole warps; the slot
// collectives' MOONCAKE_CUDA_SLOT_SCATTER_WARPS, the pipelined all-reduce's
// MOONCAKE_CUDA_AR_PIPE_SCATTER_WARPS on the host), or half the block when 0 or out of range. The slot
// collectives' group scatters chunk k+1 while the others consume chunk k.
__device__ __forceinline__ uint32_t scatter_threads(uint64_t scatter) {
    const uint64_t t = scatter * 32;
    return t == 0 || t >= blockDim.x ? blockDim.x / 2 : static_cast<uint32_t>(t);
}

// ---- pipelined push all-reduce ----------------------------------------------------------------
// The traffic of the push two-shot variant (every NVLink access a store, 2(n-1)/n of the message out
// of every rank) without its per-chunk barriers: every block runs its own pipeline over its slice of
// the message in small steps, split between two warp groups that never wait for each other, only for
// the peers' flags of the data they touch next:
//   scatter group  step s: stores the tiles of parts j != rank into rank j's receive tile `rank`, raises R(s)
//   reduce group   step i: waits R(i) of every peer, sums its own input's part `rank` and the receive
//                  tiles in rank order, stores the sum into its own output and into every peer's
//                  gather tile `rank`, raises G(i), waits G(i-1) of every peer and copies the gather
//                  tiles of step i-1 into the output
// so the links carry scatter and reduce stores at once.
//
// Geometry (CollectivePlan.pipe*): part q = [q * part, (q + 1) * part) of the message (whole vectors;
// the last parts may be shorter or empty); block b owns [b * slice, (b + 1) * slice) of every part,
// cut into `steps` tiles of `tile` elements (the same number of steps in every block). The kernel
// uses one bank of every heap, bank (chunk_seq_base & 1), in which block b owns kPipeSlots slots, each
// of NR receive tiles (tile q: rank q's tile of part `owner`) and NR gather tiles (tile q: rank q's
// reduced tile of part q); step s uses slot s % kPipeSlots.
//
// Flags (row b of the flag area; value epoch_base + s + 1 for step s, so they only grow):
//   R[b][q] (entry q)             rank q stored its step-s tiles into this rank's receive tiles
//   G[b][q] (entry kMaxRanks + q) rank q stored its reduced step-s tile into this rank's gather tile
// raised with a release after a barrier of the group, awaited with an acquire, per block index:
// block b only ever touches block b's slots.
// Slot reuse (kPipeSlots = 4): scatter(s) overwrites peer j's receive tiles of step s-4 after G(s-4)
// of j, raised after j reduced them; reduce(i) overwrites j's gather tile of step i-4 after this group
// waited G(i-2) of j (in step i-1), which j raised after its copy-out(i-4) (in its step i-3). Within a
// rank, copy-out(s) overwrites (in place) input that scatter(s) read, only after G(s) of every peer,
// which they raised after R(s) of this rank, raised after scatter(s). Across kernels (one bank per
// kernel, counted as one chunk) the argument of the banked variants holds: the next kernel uses the
// other bank.
//
// Copy-out lag L (1 <= L < kPipeSlots, from the chunk parameter; 0: as above): the scatter group
// copies out instead. Its step s scatters, raises R(s), waits G(s-L) of every peer (which covers the
// wait for G(s-3) above) and copies out step s-L; after its last step it copies out the last L steps,
// each after its G. The reduce group then meets its peers once per step: it raises G(i-1) and waits
// R(i) in the same meeting, and raises G(steps-1) after the loop. Slot reuse: reduce(i) overwrites j's
// gather tile of step i-4 after R(i) of j, which j raised after its copy-out(i-4) (in its scatter step
// i-4+L <= i-1). Copy-out(s) still follows scatter(s) in the same group (in place).
//
// Backup: scatter(s) backs up the tiles of parts j != rank, reduce(s) the tile of part `rank`, from
// the loads they make; an element is overwritten only after its step's backup (see above). When a
// wait fails, the group stops and raises the abort word so that the other one stops too; then the
// block backs up part `rank` of the steps not reduced and the other parts of the steps not scattered,
// which nothing has overwritten.
//
// Blame: a rank that never starts the kernel is the only one named missing. A rank that dies in the
// middle can leave live ranks blocked behind it (a scatter waits for the peers' reductions), and their
// flags stop too, so a timeout may name those as well; the process group's agreement, in which every
// live rank takes part, settles who is gone.
constexpr int kPipeSlots = 4;          // CollectivePlan.PIPE_SLOTS
// The chunk parameter: tile | scatter warps << kPipeWarpsShift | lag << kPipeLagShift
constexpr int kPipeWarpsShift = 52;    // CollectivePlan.PIPE_WARPS_SHIFT (8 bits)
constexpr int kPipeLagShift = 60;      // CollectivePlan.PIPE_LAG_SHIFT (2 bits)
constexpr int kPipeRecv = 0;
constexpr int kPipeGather = 1;

struct PipeGeometry {
    uint64_t part;   // elements per part (whole vectors)
    uint64_t slice;  // elements per block within a part (whole vectors)
    uint64_t tile;   // elements per step within a slice (whole vectors)
    uint64_t steps;  // steps of every block
};

template <typename T, int NR>
__device__ __forceinline__ PipeGeometry pipe_geometry(uint64_t count, uint64_t tile) {
    constexpr int V = VecMath<T>::kElems;
    PipeGeometry g;
    g.part = round_up(ceil_div(count, NR), V);
    g.slice = round_up(ceil_div(g.part, gridDim.x), V);
    g.tile = tile;
    g.steps = ceil_div(g.slice, tile);
    return g;
}

// Elements [lo, hi) of part q (from the part's start) that this block handles from step `from` to
// step `to` (exclusive).
__device__ __forceinline__ Range pipe_steps(const PipeGeometry& g, uint64_t count, int q, uint64_t from, uint64_t to) {
    const uint64_t start = q * g.part;
    const uint64_t len = start >= count ? 0 : min_u64(g.part, count - start);
    const uint64_t end = min_u64(blockIdx.x * g.slice + g.slice, len);
    // to >= from, so hi >= lo
    return Range{min_u64(blockIdx.x * g.slice + from * g.tile, end), min_u64(blockIdx.x * g.slice + to * g.tile, end)};
}

__device__ __forceinline__ Range pipe_tile(const PipeGeometry& g, uint64_t count, int q, uint64_t s) {
    return pipe_steps(g, count, q, s, s + 1);
}

// Byte offset, in every rank's heap, of tile q of kind (receive or gather) of step s of this block.
template <typename T, int NR>
__device__ __forceinline__ uint64_t pipe_tile_offset(const Comm& c, const PipeGeometry& g, uint64_t s, int kind, int q) {
    const uint64_t tiles = (static_cast<uint64_t>(blockIdx.x) * kPipeSlots + s % kPipeSlots) * 2 * NR + kind * NR + q;
    return c.data_offset + (c.chunk_seq_base & 1) * c.bank_bytes + tiles * g.tile * sizeof(T);
}

// What the two groups of a block share.
struct PipeShared {
    int failed;           // a wait of either group failed: both stop
    uint32_t missing;     // ranks that did not arrive in time
    uint64_t scattered;   // steps [0, scattered) are scattered (parts j != rank backed up)
    uint64_t reduced;     // steps [0, reduced) are reduced (part `rank` backed up and overwritten)
};

__device__ __forceinline__ void group_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;" : : "r"(id), "r"(threads) : "memory");
}

// One group's meeting point: after a barrier of the group (its stores are done), thread gt < NR
// raises flag `kind` of this block in peer gt to `raise` (0: none), then waits until peer gt raised
// this rank's flag `kind_wait` to `target` (0: no wait); a barrier again. False (uniformly for the
// group) once a wait of either group failed; a timed-out wait also raises the abort word at once, so
// that the other group's waits end too.
template <int NR>
__device__ bool pipe_sync(const Comm& c, PipeShared& sh, int bar, int threads, int gt, int kind, uint64_t raise,
                          int kind_wait, uint64_t target) {
    group_barrier(bar, threads);
    if (gt < NR && gt != c.rank) {
        uint8_t* own = heap_of<NR>(c, c.rank);
        if (raise != 0) store_release_sys(flag_slot(heap_of<NR>(c, gt), blockIdx.x, kind * kMaxRanks + c.rank), raise);
        if (target != 0) {
            const WaitResult state =
                wait_flag(flag_slot(own, blockIdx.x, kind_wait * kMaxRanks + gt), target, c.timeout_ns, abort_word(own));
            if (state != kArrived) {
                if (state == kTimedOut) {
                    atomicOr(&sh.missing, 1u << gt);
                    atomicOr(abort_word(own), 1u << gt);
                }
                atomicExch(&sh.failed, 1);
            }
        }
    }
    group_barrier(bar, threads);
    return atomicAdd(&sh.failed, 0) == 0;
}

// This block's tiles of step s of every part j != rank -> rank j's receive tile `rank`, and to the
// backup when it is not null.
template <typename T, int NR>
__device__ void pipe_scatter(const T* in, T* backup, const Comm& c, const PipeGeometry& g, uint64_t count, uint64_t s,
                             bool vec, uint32_t tid, uint32_t nthreads) {
    const uint64_t lo = blockIdx.x * g.slice + s * g.tile;   // the tile of every part, from part 0's start
    uint32_t n[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) n[j] = j == c.rank ? 0u : static_cast<uint32_t>(pipe_tile(g, count, j, s).size());
    scatter_parts<T, NR>(in + lo, g.part, backup == nullptr ? nullptr : backup + lo, c,
                         pipe_tile_offset<T, NR>(c, g, s, kPipeRecv, c.rank), n, vec, tid, nthreads);
}

template <typename T, int NR>
__device__ void pipe_copy_out(T* out, const Comm& c, const PipeGeometry& g, uint64_t count, uint64_t s, uint32_t tid,
                              uint32_t nthreads) {
    const uint8_t* own = heap_of<NR>(c, c.rank);
#pragma unroll
    for (int q = 0; q < NR; ++q) {
        if (q == c.rank) continue;
        const Range r = pipe_tile(g, count, q, s);
        copy_span(reinterpret_cast<uint8_t*>(out + q * g.part + r.lo), own + pipe_tile_offset<T, NR>(c, g, s, kPipeGather, q),
                  r.size() * sizeof(T), tid, nthreads);
    }
}

// Copies this block's tiles of steps [from, steps) of part q to the backup (all threads of the block).
template <typename T, int NR>
__device__ void pipe_backup_steps(const T* in, T* backup, const PipeGeometry& g, uint64_t count, int q, uint64_t from) {
    const Range r = pipe_steps(g, count, q, from, g.steps);
    const uint64_t at = q * g.part + r.lo;
    copy_span(reinterpret_cast<uint8_t*>(backup + at), reinterpret_cast<const uint8_t*>(in + at), r.size() * sizeof(T),
              threadIdx.x, blockDim.x);
}

template <typename T, int NR>
__device__ void pipe_scatter_group(const T* in, T* out, T* backup, const Comm& c, const PipeGeometry& g, uint64_t count,
                                   bool vec, uint64_t lag, PipeShared& sh, uint32_t gt, uint32_t threads) {
    const uint64_t e = c.epoch_base;
    for (uint64_t s = 0; s < g.steps; ++s) {
        pipe_scatter<T, NR>(in, backup, c, g, count, s, vec, gt, threads);
        // raise R(s); before scatter(s + 1) overwrites the receive tiles of step s + 1 - kPipeSlots,
        // wait until every peer has reduced that step; with a copy-out lag, wait G(s - lag) (lag <
        // kPipeSlots, so that covers it) and copy that step out
        uint64_t wait = s + 1 >= kPipeSlots && s + 1 < g.steps ? e + s + 2 - kPipeSlots : 0;
        if (lag != 0) wait = s >= lag ? e + s - lag + 1 : 0;
        const bool ok = pipe_sync<NR>(c, sh, 1, threads, gt, kPipeRecv, e + s + 1, kPipeGather, wait);
        if (gt == 0) sh.scattered = s + 1;   // read after the block's last barrier, when every thread is done
        if (!ok) return;
        if (lag != 0 && s >= lag) pipe_copy_out<T, NR>(out, c, g, count, s - lag, gt, threads);
    }
    if (lag == 0) return;
    for (uint64_t t = g.steps > lag ? g.steps - lag : 0; t < g.steps; ++t) {
        if (!pipe_sync<NR>(c, sh, 1, threads, gt, kPipeRecv, 0, kPipeGather, e + t + 1)) return;
        pipe_copy_out<T, NR>(out, c, g, count, t, gt, threads);
    }
}

template <typename T, int NR>
__device__ void pipe_reduce_group(const T* in, T* out, T* backup, const Comm& c, const PipeGeometry& g, uint64_t count,
                                  bool vec, uint64_t lag, PipeShared& sh, uint32_t gt, uint32_t threads) {
    const uint64_t e = c.epoch_base;
    const uint8_t* own = heap_of<NR>(c, c.rank);
    for (uint64_t i = 0; i < g.steps; ++i) {
        // with a copy-out lag, G(i - 1) is raised here, in the same meeting as the wait for R(i)
        const uint64_t raise = lag != 0 && i >= 1 ? e + i : 0;
        if (!pipe_sync<NR>(c, sh, 2, threads, gt, kPipeGather, raise, kPipeRecv, e + i + 1)) return;
        const Range r = pipe_tile(g, count, c.rank, i);
        const uint64_t at = c.rank * g.part + r.lo;
        const T* recv = reinterpret_cast<const T*>(own + pipe_tile_offset<T, NR>(c, g, i, kPipeRecv, 0));
        reduce_push<T, NR>(in + at, out + at, backup == nullptr ? nullptr : backup + at, recv, g.tile,
                           pipe_tile_offset<T, NR>(c, g, i, kPipeGather, c.rank), r.size(), vec, c, gt, threads);
        if (gt == 0) sh.reduced = i + 1;
        if (lag != 0) continue;
        if (!pipe_sync<NR>(c, sh, 2, threads, gt, kPipeGather, e + i + 1, kPipeGather, i >= 1 ? e + i : 0)) return;
        if (i >= 1) pipe_copy_out<T, NR>(out, c, g, count, i - 1, gt, threads);
    }
    if (lag != 0) {
        pipe_sync<NR>(c, sh, 2, threads, gt, kPipeGather, e + g.steps, kPipeGather, 0);
        return;
    }
    if (!pipe_sync<NR>(c, sh, 2, threads, gt, kPipeGather, 0, kPipeGather, e + g.steps)) return;
    pipe_copy_out<T, NR>(out, c, g, count, g.steps - 1, gt, threads);
}

// The first `scatter` warps of the block scatter (scatter_threads: half the block by default), the
// others reduce.
template <typename T, int NR>
__device__ void allreduce_pipe(const T* in, T* out, T* backup, uint64_t count, uint64_t chunk, const Comm& c) {
    __shared__ PipeShared sh;
    const uint64_t lag = min_u64(chunk >> kPipeLagShift, kPipeSlots - 1);
    const PipeGeometry g = pipe_geometry<T, NR>(count, chunk & ((1ull << kPipeWarpsShift) - 1));
    const bool vec = mooncake4j::aligned16(in) && mooncake4j::aligned16(out)
                     && (backup == nullptr || mooncake4j::aligned16(backup));
    if (threadIdx.x == 0) {
        sh.failed = 0;
        sh.missing = 0;
        sh.scattered = 0;
        sh.reduced = 0;
    }
    __syncthreads();
    const uint32_t scatterers = scatter_threads(chunk >> kPipeWarpsShift & 0xff);
    if (threadIdx.x < scatterers) {
        pipe_scatter_group<T, NR>(in, out, backup, c, g, count, vec, lag, sh, threadIdx.x, scatterers);
    } else {
        pipe_reduce_group<T, NR>(in, out, backup, c, g, count, vec, lag, sh, threadIdx.x - scatterers,
                                 blockDim.x - scatterers);
    }
    __syncthreads();
    if (sh.failed == 0) return;
    if (backup != nullptr) {
#pragma unroll
        for (int q = 0; q < NR; ++q) pipe_backup_steps<T, NR>(in, backup, g, count, q, q == c.rank ? sh.reduced : sh.scattered);
    }
    if (threadIdx.x == 0 && sh.missing != 0) report_timeout(c, heap_of<NR>(c, c.rank), sh.missing);
}

// ---- reduce-scatter, push ------------------------------------------------------------------------
// out[i] = sum over ranks q of rank q's in[rank * count + i], i < count (in holds world * count
// elements: part j is what rank j receives). Per chunk k of at most `chunk` elements of every part
// (NR * slot * sizeof(T) <= bank_bytes, see CollectivePlan.reduceScatterChunkElements), within the
// bank of chunk k of every rank:
//   slot s   [s * slot, (s + 1) * slot):   elements [base, base + len) of part `rank` of rank s's input
// Per chunk:
//   scatter: elements [base, base + len) of part j of the input -> rank j's slot `rank` (j != rank;
//            one 16-byte vector for every peer per loop step)
//   barrier k
//   reduce:  out[base + i] = own part `rank` + slots, in rank order (local loads only)
// From the second chunk on, half the warps scatter chunk k+1 while the other half reduces chunk k.
// One barrier per chunk is enough: block b scatters chunk k+1 (into the bank of chunk k-1) only after
// barrier k, which block b of every peer enters after it reduced chunk k-1. As in the push all-reduce
// this holds per block index only, so the slot and each block's slice of it are those of the first
// chunk for every chunk (rs_chunk); the last chunk's slices are just shorter or empty.

struct SlotChunking {
    uint64_t base;   // first element (byte for all-to-all) of the chunk within every part
    uint64_t len;    // elements of the chunk
    uint64_t slot;   // elements per slot: the first chunk's length, whole vectors
    uint64_t slice;  // elements per block within a slot
};

template <int V>
__device__ __forceinline__ SlotChunking slot_chunk(uint64_t count, uint64_t chunk, uint64_t k) {
    SlotChunking ch;
    ch.base = k * chunk;
    ch.len = min_u64(chunk, count - ch.base);
    ch.slot = round_up(min_u64(chunk, count), V);
    ch.slice = round_up(ceil_div(ch.slot, gridDim.x), V);
    return ch;
}

// Byte offset of slot `s` of chunk k within every rank's heap.
__device__ __forceinline__ uint64_t slot_offset(const Comm& c, uint64_t k, uint64_t slot_bytes, int s) {
    return c.data_offset + ((c.chunk_seq_base + k) & 1) * c.bank_bytes + static_cast<uint64_t>(s) * slot_bytes;
}

// Stores this block's slice of chunk k of every part j != rank into rank j's slot `rank`. Part j of the
// input starts at in + j * stride (elements); stride 0: the same data for every peer (all-gather),
// each vector loaded once. local (not null): part `rank`'s slice also goes to local + ch.base + r.lo
// (all-gather: this rank's own block of the output). vec: in, stride and local are whole vectors
// (16-byte aligned).
template <typename T, int NR>
__device__ void slot_scatter(const T* in, uint64_t stride, T* local, const Comm& c, const SlotChunking& ch, uint64_t k,
                             bool vec, uint32_t tid, uint32_t nthreads) {
    constexpr int V = 16 / sizeof(T);
    const Range r = block_range(ch.len, ch.slice);
    const uint64_t n = r.size();
    const T* src = in + ch.base + r.lo;                                           // + j * stride for part j
    T* mine = local == nullptr ? nullptr : local + ch.base + r.lo;
    const T* own_src = src + c.rank * stride;                                     // part `rank`
    const uint64_t to = slot_offset(c, k, ch.slot * sizeof(T), c.rank) + r.lo * sizeof(T);   // in rank j's heap
    uint64_t done = 0;
    if (vec) {
        const uint64_t nvec = n / V;
        if (stride == 0) {
            for (uint64_t v = tid; v < nvec; v += nthreads) {
                const uint4 x = load_cg(reinterpret_cast<const uint4*>(src) + v);
#pragma unroll
                for (int j = 0; j < NR; ++j) {
                    if (j != c.rank) reinterpret_cast<uint4*>(c.heap[j] + to)[v] = x;
                }
                if (mine != nullptr) reinterpret_cast<uint4*>(mine)[v] = x;
            }
        } else {
            for (uint64_t v = tid; v < nvec; v += nthreads) {
                uint4 x[NR];
#pragma unroll
                for (int j = 0; j < NR; ++j) {
                    if (j != c.rank) x[j] = load_cg(reinterpret_cast<const uint4*>(src + j * stride) + v);
                }
#pragma unroll
                for (int j = 0; j < NR; ++j) {
                    if (j != c.rank) reinterpret_cast<uint4*>(c.heap[j] + to)[v] = x[j];
                }
                if (mine != nullptr) reinterpret_cast<uint4*>(mine)[v] = load_cg(reinterpret_cast<const uint4*>(own_src) + v);
            }
        }
        done = nvec * V;
    }
    for (uint64_t i = done + tid; i < n; i += nthreads) {
        if (stride == 0) {
            const T x = load_cg(src + i);
#pragma unroll
            for (int j = 0; j < NR; ++j) {
                if (j != c.rank) reinterpret_cast<T*>(c.heap[j] + to)[i] = x;
            }
            if (mine != nullptr) mine[i] = x;
        } else {
#pragma unroll
            for (int j = 0; j < NR; ++j) {
                if (j != c.rank) reinterpret_cast<T*>(c.heap[j] + to)[i] = load_cg(src + j * stride + i);
            }
            if (mine != nullptr) mine[i] = load_cg(own_src + i);
        }
    }
}

template <typename T, int NR>
__device__ void rs_reduce(const T* in, T* out, uint64_t count, const Comm& c, const SlotChunking& ch, uint64_t k,
                          bool vec, uint32_t tid, uint32_t nthreads) {
    using M = VecMath<T>;
    const Range r = block_range(ch.len, ch.slice);
    const T* mine = in + c.rank * count + ch.base + r.lo;
    T* result = out + ch.base + r.lo;
    const T* recv = reinterpret_cast<const T*>(heap_of<NR>(c, c.rank) + slot_offset(c, k, ch.slot * sizeof(T), 0)) + r.lo;
    const uint64_t n = r.size();
    const uint64_t nvec = vec ? n / M::kElems : 0;
    for (uint64_t v = tid; v < nvec; v += nthreads) {
        uint4 raw[NR];
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            raw[q] = load_cg(reinterpret_cast<const uint4*>(q == c.rank ? mine : recv + q * ch.slot) + v);
        }
        float acc[8];
        M::init(acc, raw[0]);
#pragma unroll
        for (int q = 1; q < NR; ++q) M::add(acc, raw[q]);
        reinterpret_cast<uint4*>(result)[v] = M::pack(acc);
    }
    for (uint64_t i = nvec * M::kElems + tid; i < n; i += nthreads) {
        float acc = M::to_float(load_cg((c.rank == 0 ? mine : recv) + i));
#pragma unroll
        for (int q = 1; q < NR; ++q) acc += M::to_float(load_cg((q == c.rank ? mine : recv + q * ch.slot) + i));
        result[i] = M::from_float(acc);
    }
}

template <typename T, int NR>
__device__ void reduce_scatter_push(const T* in, T* out, uint64_t count, uint64_t chunk, uint64_t scatter, const Comm& c) {
    constexpr int V = VecMath<T>::kElems;
    const uint64_t chunks = ceil_div(count, chunk);
    // part j starts at in + j * count: whole vectors only when count is
    const bool vec_in = mooncake4j::aligned16(in) && count % V == 0;
    const bool vec = vec_in && mooncake4j::aligned16(out);
    const uint32_t scatterers = scatter_threads(scatter);
    for (uint64_t k = 0; k < chunks; ++k) {
        const SlotChunking ch = slot_chunk<V>(count, chunk, k);
        if (k == 0) slot_scatter<T, NR>(in, count, nullptr, c, ch, k, vec_in, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + k + 1)) return;
        if (k + 1 < chunks) {
            if (threadIdx.x < scatterers) {
                slot_scatter<T, NR>(in, count, nullptr, c, slot_chunk<V>(count, chunk, k + 1), k + 1, vec_in, threadIdx.x,
                                    scatterers);
            } else {
                rs_reduce<T, NR>(in, out, count, c, ch, k, vec, threadIdx.x - scatterers, blockDim.x - scatterers);
            }
        } else {
            rs_reduce<T, NR>(in, out, count, c, ch, k, vec, threadIdx.x, blockDim.x);
        }
    }
}

// ---- all-to-all, push ----------------------------------------------------------------------------
// out[q * n + i] = rank q's in[rank * n + i], i < n bytes. The chunks, slots and barriers of the push
// reduce-scatter with bytes for elements (16-byte vectors): rank r stores chunk k of its block j into
// rank j's slot r, barrier k, then copies its slots q != rank into the output (local), and its own
// block from the input. From the second chunk on, half the warps scatter chunk k+1 while the other
// half copies chunk k out. The vector path needs in and n to be 16-byte multiples; else bytes.

// Copies this block's slice of chunk k of every slot q != rank of this rank's bank into out + q * n
// (+ the chunk's base), and, when mine is not null, the same slice of this rank's own block from mine
// (the block's first byte) into out + rank * n. Any alignment (copy_span).
template <int NR>
__device__ void slot_copy_out(const uint8_t* mine, uint8_t* out, uint64_t n, const Comm& c, const SlotChunking& ch,
                              uint64_t k, uint32_t tid, uint32_t nthreads) {
    const Range r = block_range(ch.len, ch.slice);
    const uint8_t* own = heap_of<NR>(c, c.rank);
#pragma unroll
    for (int q = 0; q < NR; ++q) {
        if (q == c.rank && mine == nullptr) continue;
        const uint8_t* src = q == c.rank ? mine + ch.base : own + slot_offset(c, k, ch.slot, q);
        copy_span(out + q * n + ch.base + r.lo, src + r.lo, r.size(), tid, nthreads);
    }
}

template <int NR>
__device__ void all_to_all_push(const uint8_t* in, uint8_t* out, uint64_t n, uint64_t chunk, uint64_t scatter, const Comm& c) {
    const uint64_t chunks = ceil_div(n, chunk);
    const bool vec = mooncake4j::aligned16(in) && n % 16 == 0;
    const uint8_t* mine = in + c.rank * n;
    const uint32_t scatterers = scatter_threads(scatter);
    for (uint64_t k = 0; k < chunks; ++k) {
        const SlotChunking ch = slot_chunk<16>(n, chunk, k);
        if (k == 0) slot_scatter<uint8_t, NR>(in, n, nullptr, c, ch, k, vec, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + k + 1)) return;
        if (k + 1 < chunks) {
            if (threadIdx.x < scatterers) {
                slot_scatter<uint8_t, NR>(in, n, nullptr, c, slot_chunk<16>(n, chunk, k + 1), k + 1, vec, threadIdx.x,
                                          scatterers);
            } else {
                slot_copy_out<NR>(mine, out, n, c, ch, k, threadIdx.x - scatterers, blockDim.x - scatterers);
            }
        } else {
            slot_copy_out<NR>(mine, out, n, c, ch, k, threadIdx.x, blockDim.x);
        }
    }
}

// ---- all-gather, push ----------------------------------------------------------------------------
// out[q * n + i] = rank q's in[i], i < n bytes. The chunks, slots and barriers of the all-to-all with
// the same block for every peer (stride 0): per chunk k of at most `chunk` bytes (NR * slot <= bank,
// CollectivePlan.allGatherChunkBytes), within the bank of chunk k of every rank:
//   slot s   [s * slot, (s + 1) * slot):   bytes [base, base + len) of rank s's input
// Per chunk:
//   scatter: bytes [base, base + len) of the input -> slot `rank` of every peer (each 16-byte vector
//            loaded once and stored to all peers, and to this rank's own block of the output when in
//            and out + rank * n are both 16-byte aligned)
//   barrier k
//   copy:    slots q != rank -> out + q * n (local loads); this rank's own block from the input when
//            the scatter did not store it, and not at all in place (in == out + rank * n)
// From the second chunk on, half the warps scatter chunk k+1 while the other half copies chunk k out.
// Bank reuse as in the all-to-all: block b stores chunk k+1 into the peers' bank of chunk k-1 after
// barrier k, which block b of every peer enters after it copied chunk k-1 out; slot_chunk keeps each
// block's bytes of every slot in place from chunk to chunk. Only the output is written: the input is
// intact after a timeout. The vector path needs a 16-byte aligned input; any n.

template <int NR>
__device__ void all_gather_push(const uint8_t* in, uint8_t* out, uint64_t n, uint64_t chunk, uint64_t scatter, const Comm& c) {
    const uint64_t chunks = ceil_div(n, chunk);
    const bool vec = mooncake4j::aligned16(in);
    uint8_t* block = out + c.rank * n;
    const bool in_place = block == in;
    uint8_t* local = !in_place && vec && mooncake4j::aligned16(block) ? block : nullptr;   // stored by the scatter
    const uint8_t* mine = !in_place && local == nullptr ? in : nullptr;                   // copied out
    const uint32_t scatterers = scatter_threads(scatter);
    for (uint64_t k = 0; k < chunks; ++k) {
        const SlotChunking ch = slot_chunk<16>(n, chunk, k);
        if (k == 0) slot_scatter<uint8_t, NR>(in, 0, local, c, ch, k, vec, threadIdx.x, blockDim.x);
        if (!block_barrier<NR>(c, c.epoch_base + k + 1)) return;
        if (k + 1 < chunks) {
            if (threadIdx.x < scatterers) {
                slot_scatter<uint8_t, NR>(in, 0, local, c, slot_chunk<16>(n, chunk, k + 1), k + 1, vec, threadIdx.x, scatterers);
            } else {
                slot_copy_out<NR>(mine, out, n, c, ch, k, threadIdx.x - scatterers, blockDim.x - scatterers);
            }
        } else {
            slot_copy_out<NR>(mine, out, n, c, ch, k, threadIdx.x, blockDim.x);
        }
    }
}

// ---- scale ---------------------------------------------------------------------------------------
// x[i] = x[i] / divisor (IEEE float32 division; bf16 through fp32, rounded once). No flags, no heap.

template <typename T>
__device__ void scale(T* x, uint64_t n, float divisor) {
    using M = VecMath<T>;
    const uint64_t tid = mooncake4j::thread_index();
    const uint64_t stride = mooncake4j::thread_count();
    const uint64_t nvec = mooncake4j::aligned16(x) ? n / M::kElems : 0;
    for (uint64_t v = tid; v < nvec; v += stride) {
        uint4* p = reinterpret_cast<uint4*>(x) + v;
        float a[8];
        M::init(a, *p);
#pragma unroll
        for (int e = 0; e < M::kElems; ++e) a[e] = __fdiv_rn(a[e], divisor);
        *p = M::pack(a);
    }
    for (uint64_t i = nvec * M::kElems + tid; i < n; i += stride) x[i] = M::from_float(__fdiv_rn(M::to_float(x[i]), divisor));
}

}  // namespace collectives
}  // namespace mooncake4j

// ---- entry points ----------------------------------------------------------------------------------
// Every collective kernel takes (in, out, backup, count, chunk, heap0..heap7, rank, world, data_offset,
// bank_bytes, epoch_base, chunk_seq_base, timeout_ns, status, done, ticket, sync_epoch) -- CudaCollectives builds
// exactly this list:
//   backup: all-reduce: null, or count elements that receive a copy of in (see "Backup" at the top);
//           the slot collectives take `scatter` there instead (scatter_threads)
//   count:  elements (all-reduce), elements per rank (reduce-scatter: in holds world * count) or bytes
//           per rank (all-gather; all-to-all: bytes per block, in and out hold world * count);
//           chunk: elements/bytes per chunk (of every part for reduce-scatter, all-to-all and
//           all-gather) (ignored by one-shot; the pipelined all-reduce: elements per tile, its
//           scatter group's warps from bit kPipeWarpsShift (0: half the block) and its copy-out lag from
//           bit kPipeLagShift); heapN: rank N's heap base in this process (null for
//           N >= world);
//   world:  1..8; anything else makes the kernel return without doing anything (but signal done);
//   done, ticket: block b stores ticket into done[b] when it is done (host-mapped; see "Completion");
//   sync_epoch: the epoch of the final sync step (end_block), above every epoch of the data phase; 0: none;
//           bit 63 set: skip the step (fault injection only: this rank then leaves its peers waiting).
// Launch with the same grid on every rank: 512 threads per block (the kernels may use up to 128
// registers a thread, so one block fits an SM), at most one block per SM so that all blocks are
// resident at once, and at most 512 blocks (the flag rows of the heap).

#define MOONCAKE4J_COMM_PARAMS                                                                                        \
    uint8_t *h0, uint8_t *h1, uint8_t *h2, uint8_t *h3, uint8_t *h4, uint8_t *h5, uint8_t *h6, uint8_t *h7, int rank, \
        int world, uint64_t data_offset, uint64_t bank_bytes, uint64_t epoch_base, uint64_t chunk_seq_base,           \
        uint64_t timeout_ns, uint32_t *status, uint64_t *done, uint64_t ticket, uint64_t sync_epoch

#define MOONCAKE4J_COMM                                                                                          \
    const mooncake4j::collectives::Comm comm {                                                                   \
        {h0, h1, h2, h3, h4, h5, h6, h7}, rank, data_offset, bank_bytes, epoch_base, chunk_seq_base, timeout_ns, \
            status, ticket                                                                                       \
    }

// Runs CALL with a compile-time NR equal to world, then signals done (every path of CALL returns
// uniformly per block, so every thread reaches the signal's __syncthreads).
#define MOONCAKE4J_RUN(N, CALL)                                                  \
    case N: {                                                                    \
        constexpr int NR = N;                                                    \
        if (mooncake4j::collectives::begin_block<NR>(comm)) {                    \
            CALL;                                                                \
            mooncake4j::collectives::end_block<NR>(comm, sync_epoch);            \
        }                                                                        \
    } break;
#define MOONCAKE4J_FOR_WORLD(CALL)                                               \
    switch (world) {                                                             \
        MOONCAKE4J_RUN(1, CALL)                                                  \
        MOONCAKE4J_RUN(2, CALL)                                                  \
        MOONCAKE4J_RUN(3, CALL)                                                  \
        MOONCAKE4J_RUN(4, CALL)                                                  \
        MOONCAKE4J_RUN(5, CALL)                                                  \
        MOONCAKE4J_RUN(6, CALL)                                                  \
        MOONCAKE4J_RUN(7, CALL)                                                  \
        MOONCAKE4J_RUN(8, CALL)                                                  \
        default: break;                                                          \
    }                                                                            \
    mooncake4j::collectives::signal_done(done, ticket)

// The float32 and bfloat16 entry points NAME_f32 and NAME_bf16 of all-reduce FN(in, out, backup, count,
// chunk, comm) (the one-shot ignores chunk).
#define MOONCAKE4J_ALLREDUCE_KERNELS(NAME, FN)                                                                         \
    extern "C" __global__ void __launch_bounds__(512, 1)                                                              \
        NAME##_f32(const float* in, float* out, float* backup, uint64_t count, uint64_t chunk, MOONCAKE4J_COMM_PARAMS) { \
        MOONCAKE4J_COMM;                                                                                              \
        MOONCAKE4J_FOR_WORLD((mooncake4j::collectives::FN<float, NR>(in, out, backup, count, chunk, comm)));          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(512, 1)                                                              \
        NAME##_bf16(const __nv_bfloat16* in, __nv_bfloat16* out, __nv_bfloat16* backup, uint64_t count, uint64_t chunk, \
                    MOONCAKE4J_COMM_PARAMS) {                                                                         \
        MOONCAKE4J_COMM;                                                                                              \
        MOONCAKE4J_FOR_WORLD((mooncake4j::collectives::FN<__nv_bfloat16, NR>(in, out, backup, count, chunk, comm)));  \
    }

MOONCAKE4J_ALLREDUCE_KERNELS(allreduce_oneshot, allreduce_oneshot)
MOONCAKE4J_ALLREDUCE_KERNELS(allreduce_twoshot, allreduce_twoshot)
MOONCAKE4J_ALLREDUCE_KERNELS(allreduce_twoshot_push, allreduce_twoshot_push)
MOONCAKE4J_ALLREDUCE_KERNELS(allreduce_pipe, allreduce_pipe)

extern "C" __global__ void __launch_bounds__(512, 1)
allgather_bytes(const uint8_t* in, uint8_t* out, uint64_t scatter, uint64_t count, uint64_t chunk, MOONCAKE4J_COMM_PARAMS) {
    MOONCAKE4J_COMM;
    MOONCAKE4J_FOR_WORLD((mooncake4j::collectives::all_gather_push<NR>(in, out, count, chunk, scatter, comm)));
}

extern "C" __global__ void __launch_bounds__(512, 1)
reducescatter_f32(const float* in, float* out, uint64_t scatter, uint64_t count, uint64_t chunk, MOONCAKE4J_COMM_PARAMS) {
    MOONCAKE4J_COMM;
    MOONCAKE4J_FOR_WORLD((mooncake4j::collectives::reduce_scatter_push<float, NR>(in, out, count, chunk, scatter, comm)));
}

extern "C" __global__ void __launch_bounds__(512, 1)
reducescatter_bf16(const __nv_bfloat16* in, __nv_bfloat16* out, uint64_t scatter, uint64_t count, uint64_t chunk,
                   MOONCAKE4J_COMM_PARAMS) {
    MOONCAKE4J_COMM;
    MOONCAKE4J_FOR_WORLD(
        (mooncake4j::collectives::reduce_scatter_push<__nv_bfloat16, NR>(in, out, count, chunk, scatter, comm)));
}

extern "C" __global__ void __launch_bounds__(512, 1)
alltoall_bytes(const uint8_t* in, uint8_t* out, uint64_t scatter, uint64_t count, uint64_t chunk, MOONCAKE4J_COMM_PARAMS) {
    MOONCAKE4J_COMM;
    MOONCAKE4J_FOR_WORLD((mooncake4j::collectives::all_to_all_push<NR>(in, out, count, chunk, scatter, comm)));
}

// In place x[i] = x[i] / divisor for i < count; any grid (grid-stride), 512 threads per block, at most
// CollectivePlan.SCALE_MAX_BLOCKS blocks (the done words); block b stores ticket into done[b] at the end.
extern "C" __global__ void __launch_bounds__(512)
scale_f32(float* x, uint64_t count, float divisor, uint64_t* done, uint64_t ticket) {
    mooncake4j::collectives::scale<float>(x, count, divisor);
    mooncake4j::collectives::signal_done(done, ticket);
}

extern "C" __global__ void __launch_bounds__(512)
scale_bf16(__nv_bfloat16* x, uint64_t count, float divisor, uint64_t* done, uint64_t ticket) {
    mooncake4j::collectives::scale<__nv_bfloat16>(x, count, divisor);
    mooncake4j::collectives::signal_done(done, ticket);
}

#undef MOONCAKE4J_ALLREDUCE_KERNELS
#undef MOONCAKE4J_FOR_WORLD
#undef MOONCAKE4J_RUN
#undef MOONCAKE4J_COMM
#undef MOONCAKE4J_COMM_PARAMS
