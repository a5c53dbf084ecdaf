package org.mooncake4j.core.internal;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * Linux futex on a 32-bit word of a memory segment, through {@code syscall(2)}. The shared (not
 * private) operations are used so a waiter in one process is woken by a writer in another that maps
 * the same /dev/shm file. Where futex is unavailable (not Linux), {@link #available()} is false and
 * callers fall back to timed parking.
 *
 * <p>Thread-safe; the timeout struct is per thread so a wait allocates nothing.
 */
public final class Futex {
    private static final long FUTEX_WAIT = 0;
    private static final long FUTEX_WAKE = 1;
    private static final MethodHandle SYSCALL;
    private static final long SYS_FUTEX;
    private static final ThreadLocal<MemorySegment> TIMESPEC =
            ThreadLocal.withInitial(() -> Arena.global().allocate(16, 8));

    static {
        MethodHandle h = null;
        long nr = -1;
        String arch = System.getProperty("os.arch", "");
        if (System.getProperty("os.name", "").toLowerCase(java.util.Locale.ROOT).contains("linux")) {
            nr = switch (arch) {
                case "amd64", "x86_64" -> 202;
                case "aarch64", "arm64" -> 98;
                default -> -1;
            };
        }
        if (nr >= 0) {
            try {
                Linker linker = Linker.nativeLinker();
                h = linker.downcallHandle(linker.defaultLookup().find("syscall").orElseThrow(),
                        FunctionDescriptor.of(ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG,
                                ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG,
                                ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG),
                        Linker.Option.firstVariadicArg(1));
            } catch (Throwable t) {
                h = null;
            }
        }
        SYSCALL = h;
        SYS_FUTEX = nr;
    }

    private Futex() {}

    public static boolean available() { return SYSCALL != null; }

    /**
     * Sleeps while the 32-bit word at {@code seg[offset]} equals {@code expected}, at most
     * {@code timeoutNanos}. Returns early on a wake, a changed value, or a signal; callers re-check.
     */
    public static void await(MemorySegment seg, long offset, int expected, long timeoutNanos) {
        MemorySegment ts = TIMESPEC.get();
        ts.set(ValueLayout.JAVA_LONG, 0, timeoutNanos / 1_000_000_000L);
        ts.set(ValueLayout.JAVA_LONG, 8, timeoutNanos % 1_000_000_000L);
        try {
            long r = (long) SYSCALL.invokeExact(SYS_FUTEX, seg.address() + offset, FUTEX_WAIT, (long) expected,
                    ts.address(), 0L, 0L);
        } catch (Throwable t) {
            throw new IllegalStateException("futex wait failed", t);
        }
    }

    /** Wakes every waiter on the 32-bit word at {@code seg[offset]}. */
    public static void wakeAll(MemorySegment seg, long offset) {
        try {
            long r = (long) SYSCALL.invokeExact(SYS_FUTEX, seg.address() + offset, FUTEX_WAKE, (long) Integer.MAX_VALUE,
                    0L, 0L, 0L);
        } catch (Throwable t) {
            throw new IllegalStateException("futex wake failed", t);
        }
    }
}
