package org.mooncake4j.core.internal;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.ArrayList;
import java.util.List;

/**
 * The calling thread's CPU affinity on Linux, through glibc's {@code sched_getaffinity(3)} and
 * {@code sched_setaffinity(3)} with pid 0, which name the calling thread only: the JVM's other
 * threads (compiler, GC) keep their own masks. Elsewhere {@link #available()} is false.
 *
 * <p>Binding each rank's calling thread to a core of its own is what MPI launchers do by default:
 * two ranks that spin-wait on each other must never share one core, or every wait lasts until the
 * scheduler takes the core from the spinner. Without binding the scheduler sometimes stacks both on
 * one core and keeps them there (each just ran, so each looks cache-hot and is not migrated) for
 * tens of milliseconds.
 */
public final class CpuAffinity {
    /** Bytes of the CPU mask passed to the kernel: room for 8192 CPUs. */
    private static final int MASK_BYTES = 1024;
    private static final MethodHandle GET;
    private static final MethodHandle SET;
    /** CPUs the process could use when this class was loaded, before any binding through it. */
    private static final int UNBOUND_CPUS;

    static {
        MethodHandle get = null;
        MethodHandle set = null;
        if (System.getProperty("os.name", "").toLowerCase(java.util.Locale.ROOT).contains("linux")) {
            try {
                Linker linker = Linker.nativeLinker();
                FunctionDescriptor fd = FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_LONG,
                        ValueLayout.ADDRESS);
                get = linker.downcallHandle(linker.defaultLookup().find("sched_getaffinity").orElseThrow(), fd);
                set = linker.downcallHandle(linker.defaultLookup().find("sched_setaffinity").orElseThrow(), fd);
            } catch (Throwable t) {
                get = null;
                set = null;
            }
        }
        GET = get;
        SET = set;
        UNBOUND_CPUS = Runtime.getRuntime().availableProcessors();
    }

    /**
     * The CPUs this process may use, as {@link Runtime#availableProcessors()} counted them before any
     * thread was bound through this class. Use it for sizing decisions: {@code availableProcessors()}
     * called on a bound thread counts that thread's mask only.
     */
    public static int processCpus() {
        return Math.max(UNBOUND_CPUS, Runtime.getRuntime().availableProcessors());
    }

    private CpuAffinity() {}

    public static boolean available() { return GET != null && SET != null; }

    /** The CPUs the calling thread may run on, in increasing order; empty where that cannot be read. */
    public static List<Integer> current() {
        List<Integer> cpus = new ArrayList<>();
        if (!available()) return cpus;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mask = arena.allocate(MASK_BYTES, 8);
            int rc = (int) GET.invokeExact(0, (long) MASK_BYTES, mask);
            if (rc != 0) return cpus;
            for (int cpu = 0; cpu < MASK_BYTES * 8; cpu++) {
                if ((mask.get(ValueLayout.JAVA_BYTE, cpu / 8) & (1 << (cpu % 8))) != 0) cpus.add(cpu);
            }
        } catch (Throwable t) {
            throw new IllegalStateException("sched_getaffinity failed", t);
        }
        return cpus;
    }

    /**
     * Restricts the calling thread to {@code cpu}. Returns false when the kernel refused (the CPU is
     * not in this process's cpuset, or offline) or this platform has no affinity call; the thread's
     * mask is then unchanged.
     */
    public static boolean bindCurrentThread(int cpu) {
        if (!available()) return false;
        if (cpu < 0 || cpu >= MASK_BYTES * 8) throw new IllegalArgumentException("CPU " + cpu + " is outside 0.." + (MASK_BYTES * 8 - 1));
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mask = arena.allocate(MASK_BYTES, 8);
            mask.set(ValueLayout.JAVA_BYTE, cpu / 8, (byte) (1 << (cpu % 8)));
            return (int) SET.invokeExact(0, (long) MASK_BYTES, mask) == 0;
        } catch (Throwable t) {
            throw new IllegalStateException("sched_setaffinity failed", t);
        }
    }
}
