package org.mooncake4j.cuda.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.VarHandle;

/**
 * File descriptors across processes on Linux, for sharing {@code cuMemCreate} allocations exported as
 * POSIX file descriptors: {@code pidfd_open(2)} + {@code pidfd_getfd(2)} (Linux 5.6+) duplicate a
 * descriptor of another process into this one. The kernel allows that when this process may ptrace
 * the other (same user and {@code kernel.yama.ptrace_scope=0}, or a parent, or CAP_SYS_PTRACE).
 *
 * <p>Stateless and thread-safe. The caller owns every descriptor returned and closes it with
 * {@link #close(int)}.
 */
public final class PosixFds {
    /** Same number on x86-64 and aarch64 (the unified syscall table from Linux 5.x). */
    private static final long SYS_PIDFD_OPEN = 434;
    private static final long SYS_PIDFD_GETFD = 438;

    private static final Linker LINKER = Linker.nativeLinker();
    private static final StructLayout CALL_STATE = Linker.Option.captureStateLayout();
    private static final VarHandle ERRNO =
            CALL_STATE.varHandle(MemoryLayout.PathElement.groupElement("errno"));
    private static final MethodHandle SYSCALL = LINKER.downcallHandle(
            LINKER.defaultLookup().find("syscall").orElseThrow(),
            FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG),
            Linker.Option.firstVariadicArg(1), Linker.Option.captureCallState("errno"));
    private static final MethodHandle CLOSE = LINKER.downcallHandle(
            LINKER.defaultLookup().find("close").orElseThrow(),
            FunctionDescriptor.of(JAVA_INT, JAVA_INT), Linker.Option.captureCallState("errno"));
    private static final MethodHandle STRERROR = LINKER.downcallHandle(
            LINKER.defaultLookup().find("strerror").orElseThrow(), FunctionDescriptor.of(ADDRESS, JAVA_INT));

    private PosixFds() {}

    /** A failed system call, with its {@code errno}. */
    public static final class ErrnoException extends RuntimeException {
        private static final long serialVersionUID = 1L;
        private final int errno;

        ErrnoException(String message, int errno) {
            super(message);
            this.errno = errno;
        }

        public int errno() { return errno; }

        /** {@code EPERM}: this process may not take descriptors from the other one. */
        public boolean notPermitted() { return errno == 1; }
    }

    /** A new descriptor in this process for descriptor {@code fd} of process {@code pid}. */
    public static int takeFromProcess(long pid, int fd) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment state = a.allocate(CALL_STATE);
            long pidfd = (long) SYSCALL.invokeExact(state, SYS_PIDFD_OPEN, pid, 0L, 0L);
            if (pidfd < 0) throw errno(state, "pidfd_open(pid " + pid + ")", "");
            try {
                long copy = (long) SYSCALL.invokeExact(state, SYS_PIDFD_GETFD, pidfd, (long) fd, 0L);
                if (copy < 0) {
                    throw errno(state, "pidfd_getfd(pid " + pid + ", fd " + fd + ")",
                            "; taking a descriptor from another process needs ptrace permission over it (same user"
                                    + " and kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE)");
                }
                return (int) copy;
            } finally {
                int rc = (int) CLOSE.invokeExact(state, (int) pidfd);
            }
        } catch (ErrnoException e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException("pidfd_getfd(pid " + pid + ", fd " + fd + ") could not be called", t);
        }
    }

    /** Closes {@code fd}; a failure is reported as {@link ErrnoException}. */
    public static void close(int fd) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment state = a.allocate(CALL_STATE);
            if ((int) CLOSE.invokeExact(state, fd) != 0) throw errno(state, "close(" + fd + ")", "");
        } catch (ErrnoException e) {
            throw e;
        } catch (Throwable t) {
            throw new IllegalStateException("close(" + fd + ") could not be called", t);
        }
    }

    private static ErrnoException errno(MemorySegment state, String call, String hint) throws Throwable {
        int errno = (int) ERRNO.get(state, 0L);
        MemorySegment text = (MemorySegment) STRERROR.invokeExact(errno);
        String description = text.reinterpret(Long.MAX_VALUE).getString(0);
        return new ErrnoException(call + " failed: " + description + " (errno " + errno + ")" + hint, errno);
    }
}
