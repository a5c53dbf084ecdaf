package org.mooncake4j.cuda;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_DOUBLE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * The argument list of one kernel launch: the {@code void*[] kernelParams} of {@code cuLaunchKernel},
 * whose entries point at the argument values. Each thread has one reusable instance, so building and
 * launching allocates nothing:
 *
 * <pre>{@code
 * fill.launch(stream, blocks, 256, KernelArgs.begin().ptr(dst).u32(value).u64(n));
 * }</pre>
 *
 * <p>Arguments are added in the kernel's parameter order, each in the width of its C type:
 * {@link #ptr} for pointers, {@link #u64}/{@link #i64} for 64-bit, {@link #u32}/{@link #i32} for
 * 32-bit integers, {@link #f32}/{@link #f64} for floats.
 *
 * <p>Threading: an instance belongs to the thread that got it from {@link #begin()}; it is valid until
 * that thread calls {@link #begin()} again. {@link CudaFunction#launch} refuses it on another thread.
 * Its off-heap memory is freed when the thread and the instance are gone.
 */
public final class KernelArgs {
    /** The most arguments one launch may take. */
    public static final int MAX_ARGS = 32;
    private static final long SLOT = 8;
    private static final ThreadLocal<KernelArgs> PER_THREAD = ThreadLocal.withInitial(KernelArgs::new);

    private final Thread owner = Thread.currentThread();
    private final MemorySegment values;
    private final MemorySegment pointers;
    private int count;

    private KernelArgs() {
        Arena arena = Arena.ofAuto();
        values = arena.allocate(SLOT * MAX_ARGS, 16);
        pointers = arena.allocate(ADDRESS, MAX_ARGS);
        for (int i = 0; i < MAX_ARGS; i++) pointers.setAtIndex(ADDRESS, i, values.asSlice(SLOT * i, SLOT));
    }

    /** The calling thread's argument list, emptied. */
    public static KernelArgs begin() {
        KernelArgs a = PER_THREAD.get();
        a.count = 0;
        return a;
    }

    private long next() {
        if (count == MAX_ARGS) throw new IllegalStateException("a kernel launch takes at most " + MAX_ARGS + " arguments");
        return SLOT * count++;
    }

    /** A device (or host-mapped) pointer. */
    public KernelArgs ptr(long pointer) {
        values.set(JAVA_LONG, next(), pointer);
        return this;
    }

    public KernelArgs u64(long value) {
        values.set(JAVA_LONG, next(), value);
        return this;
    }

    public KernelArgs i64(long value) {
        values.set(JAVA_LONG, next(), value);
        return this;
    }

    public KernelArgs u32(int value) {
        values.set(JAVA_INT, next(), value);
        return this;
    }

    public KernelArgs i32(int value) {
        values.set(JAVA_INT, next(), value);
        return this;
    }

    public KernelArgs f32(float value) {
        values.set(JAVA_FLOAT, next(), value);
        return this;
    }

    public KernelArgs f64(double value) {
        values.set(JAVA_DOUBLE, next(), value);
        return this;
    }

    /** How many arguments have been added since {@link #begin()}. */
    public int count() { return count; }

    /** The {@code void*[]} for {@code cuLaunchKernel}, checked to be used on the owning thread. */
    MemorySegment pointersForLaunch() {
        if (Thread.currentThread() != owner) {
            throw new IllegalStateException("KernelArgs of thread '" + owner.getName() + "' used on thread '"
                    + Thread.currentThread().getName() + "': get them with KernelArgs.begin() on the launching thread");
        }
        return pointers;
    }
}
