package org.mooncake4j.core.internal;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.util.List;
import java.util.concurrent.locks.LockSupport;
import org.mooncake4j.core.Deadline;

/**
 * Waits for a 64-bit sequence word in (possibly shared) memory to reach a target, backing off from
 * spinning to yielding to sleeping on a futex. The writer side publishes with {@link #publish}, which
 * stores with release semantics and wakes sleepers. Sequence words only grow; "reached" is
 * {@code value - target >= 0} so wrap-around is harmless.
 *
 * <p>A sequence word occupies {@link #WORD_BYTES} (16) bytes, 8-aligned: the value at {@code offset}
 * and a count of sleeping waiters at {@code offset + 8}, so a publish costs a futex system call only
 * when someone sleeps (Dekker-style: each side stores, fences, then loads the other's word). Give each
 * word its own 64-byte line when several processes write neighbouring words.
 *
 * <p>The spin budget shrinks when the host has fewer cores than busy processes
 * ({@code mooncake4j.spin} system property or {@code MOONCAKE_SPIN} overrides it): spinning on an
 * oversubscribed machine only delays the peer that would set the word.
 */
public final class Waiter {
    /** Bytes one sequence word occupies: the value and its sleeper count. */
    public static final int WORD_BYTES = 16;
    private static final VarHandle LONG = ValueLayout.JAVA_LONG.varHandle();
    private static final int SPINS = configuredSpins();
    private static final int YIELDS = 64;
    private static final long MAX_SLEEP_NANOS = 2_000_000L;

    private Waiter() {}

    private static int configuredSpins() {
        String s = System.getProperty("mooncake4j.spin", System.getenv("MOONCAKE_SPIN"));
        if (s != null) return Integer.parseInt(s.trim());
        // every process has a core of its own: spin, a peer's answer usually comes sooner. A short spin
        // there sends both ranks of a two-process job into futex sleeps that wake each other in turn,
        // each wake paying an idle core's (a halted vCPU's) wake-up: ~240 us per call on a 2-vCPU VM
        // against ~1 us spinning. With more busy processes than cores a spinner only delays the peer
        // that would set the word (or a JIT/GC thread the peer waits behind): hand the core over almost
        // at once.
        return ownCores() ? 20_000 : 50;
    }

    /** True when this host has at least one core per busy process of the job (see {@link #spareCores}). */
    public static boolean ownCores() {
        return CpuAffinity.processCpus() >= busyProcesses();
    }

    /**
     * True when this host has at least two cores per busy process of the job ({@code LOCAL_WORLD_SIZE},
     * else {@code WORLD_SIZE}, else 1): a runnable thread then gets a core within microseconds, not
     * after the scheduler's time slices of other processes.
     */
    public static boolean spareCores() {
        return CpuAffinity.processCpus() >= 2 * busyProcesses();
    }

    /** This host's cores per busy process of the job (see {@link #spareCores}), at least 1. */
    public static int coresPerProcess() {
        return Math.max(1, CpuAffinity.processCpus() / busyProcesses());
    }

    /**
     * Binds the calling thread to the {@code localRank}-th CPU it may run on when the spin policy
     * needs it: with at least one but fewer than two cores per busy process ({@link #ownCores()} and
     * not {@link #spareCores()}), waiters spin, and two processes that spin-wait on each other must
     * never share a core. Unbound, the scheduler at times stacks two of them on one core for tens of
     * milliseconds (each just ran, so neither looks worth migrating), and every wait in that time
     * lasts until the spinner's turn ends. With more processes than cores waiters hardly spin; with
     * two or more cores per process there is always an idle one to move to, and the process's helper
     * threads (which a bound thread's children would inherit) need the rest: then nothing is bound.
     * Only the calling thread is bound ({@link CpuAffinity}). Returns what was done, for a log line.
     */
    public static String bindCallingThread(int localRank) {
        int ranks = busyProcesses();
        int cpus = CpuAffinity.processCpus();
        if (!ownCores()) return "none (" + ranks + " ranks on " + cpus + " CPUs: more ranks than CPUs)";
        if (spareCores()) return "none (" + ranks + " ranks on " + cpus + " CPUs: two or more per rank, for its helper threads)";
        List<Integer> mask = CpuAffinity.current();
        if (mask.isEmpty()) return "none (this platform reports no CPU affinity)";
        if (localRank < 0 || localRank >= mask.size()) {
            return "none (local rank " + localRank + " has no CPU of its own among the calling thread's CPUs " + mask + ")";
        }
        int cpu = mask.get(localRank);
        if (!CpuAffinity.bindCurrentThread(cpu)) return "none (the kernel refused to bind local rank " + localRank + " to CPU " + cpu + ")";
        return "each rank's thread on a CPU of its own (rank i on the i-th of CPUs " + mask + ")";
    }

    /** The job's busy processes on this host: {@code LOCAL_WORLD_SIZE}, else {@code WORLD_SIZE}, else 1. */
    private static int busyProcesses() {
        String local = System.getenv("LOCAL_WORLD_SIZE") != null ? System.getenv("LOCAL_WORLD_SIZE") : System.getenv("WORLD_SIZE");
        try {
            return local == null ? 1 : Math.max(1, Integer.parseInt(local.trim()));
        } catch (NumberFormatException e) {
            return 1;
        }
    }

    /** Reads the word with acquire semantics. */
    public static long load(MemorySegment seg, long offset) {
        return (long) LONG.getAcquire(seg, offset);
    }

    /** Stores the word with release semantics (every earlier write is visible first) and wakes sleepers. */
    public static void publish(MemorySegment seg, long offset, long value) {
        LONG.setRelease(seg, offset, value);
        VarHandle.fullFence();
        if ((long) LONG.getVolatile(seg, offset + 8) != 0 && Futex.available()) Futex.wakeAll(seg, offset);
    }

    /**
     * Returns true once {@code seg[offset] - target >= 0}, false when the deadline passes or
     * {@code abort} says to stop (it is polled while sleeping; may be null).
     */
    public static boolean awaitAtLeast(MemorySegment seg, long offset, long target, Deadline deadline,
                                       java.util.function.BooleanSupplier abort) {
        for (int i = 0; i < SPINS; i++) {
            if (load(seg, offset) - target >= 0) return true;
            Thread.onSpinWait();
        }
        for (int i = 0; i < YIELDS; i++) {
            if (load(seg, offset) - target >= 0) return true;
            Thread.yield();
        }
        while (true) {
            long v = load(seg, offset);
            if (v - target >= 0) return true;
            long left = deadline.remainingNanos();
            if (left == 0) return false;
            if (abort != null && abort.getAsBoolean()) return false;
            long sleep = Math.min(left, MAX_SLEEP_NANOS);
            if (Futex.available()) {
                LONG.getAndAdd(seg, offset + 8, 1L);
                try {
                    VarHandle.fullFence();
                    long again = load(seg, offset);
                    // little-endian: the low half of the sequence word is the futex word
                    if (again - target < 0) Futex.await(seg, offset, (int) again, sleep);
                } finally {
                    LONG.getAndAdd(seg, offset + 8, -1L);
                }
            } else {
                LockSupport.parkNanos(Math.min(sleep, 50_000L));
            }
        }
    }
}
