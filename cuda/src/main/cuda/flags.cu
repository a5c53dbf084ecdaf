// Flags in (possibly peer or host-mapped) memory, for synchronisation with a deadline: a waiter never
// hangs on a peer that died, it reports that the peer did not arrive and lets the host decide.
#include "common.cuh"

// Waits until *flag >= target or timeout_ns (measured with %globaltimer from the kernel's start) has
// passed, then stores 1 (arrived) or 0 (timed out) into *result with a system-scope release, so a
// host thread polling a host-mapped result word sees it without synchronizing the stream.
// Launch with one thread; extra threads return at once.
extern "C" __global__ void timed_flag_wait(const uint64_t* flag, uint64_t target, uint64_t timeout_ns,
                                           uint32_t* result) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const uint64_t start = mooncake4j::global_timer_ns();
    uint32_t arrived = 0;
    for (;;) {
        if (mooncake4j::load_acquire_sys(flag) >= target) {
            arrived = 1;
            break;
        }
        if (mooncake4j::global_timer_ns() - start >= timeout_ns) break;
        __nanosleep(100);
    }
    mooncake4j::store_release_sys(result, arrived);
}

// Stores value into *flag after all of this kernel's and the stream's earlier writes are visible
// system-wide: pairs with timed_flag_wait on the other side. Launch with one thread.
extern "C" __global__ void signal_flag_u64(uint64_t* flag, uint64_t value) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    __threadfence_system();
    mooncake4j::store_release_sys(flag, value);
}
