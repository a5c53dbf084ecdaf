package org.mooncake4j.pg.collective;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

/**
 * A few threads of this process that split one memory-bound loop (a reduction or a copy of a large
 * message) into stripes, so that one rank is not held to one core's copy speed on a host with cores
 * to spare. The caller runs stripe 0 itself; worker {@code k} runs stripe {@code k}. Nothing is
 * allocated per run; idle workers park.
 *
 * <p>Used by one operation thread at a time.
 */
final class Stripes implements AutoCloseable {
    /** One striped loop: does part {@code stripe} of {@code stripes}. */
    interface Task {
        void run(int stripe, int stripes);
    }

    /** Stripes per rank for large messages: {@code MOONCAKE_CPU_THREADS}, else cores per local rank, at most 4. */
    static int configuredThreads() {
        int cores = Math.max(1, Math.min(4, org.mooncake4j.core.internal.Waiter.coresPerProcess()));
        return org.mooncake4j.core.internal.Settings.integer("MOONCAKE_CPU_THREADS", cores, 1, 64, "cores per local rank, at most 4: " + cores);
    }

    private final Thread[] workers;
    private volatile Task task;
    /**
     * The run number times 256 plus its stripe count, in one word: a worker that wakes late reads a
     * run's count together with the run itself, never a newer run's count with an older run.
     */
    private volatile long generation;
    private volatile boolean closed;
    private volatile Thread caller;
    private volatile Throwable failure;
    private final AtomicInteger pending = new AtomicInteger();
    /**
     * How long the caller waits for the other stripes of a run: they only copy and reduce memory this
     * process has mapped, so past this a worker thread is stuck (or starved) and nothing can recover.
     */
    private static final long STRIPE_DEADLINE_NANOS = 60_000_000_000L;

    Stripes(int threads, String name) {
        workers = new Thread[Math.max(0, threads - 1)];
        for (int k = 0; k < workers.length; k++) {
            final int stripe = k + 1;
            workers[k] = Thread.ofPlatform().daemon().name(name + "-" + stripe).start(() -> loop(stripe));
        }
    }

    int threads() { return workers.length + 1; }

    /** Runs {@code t} as {@code n <= threads()} stripes and returns when all are done; rethrows a stripe's failure. */
    void run(Task t, int n) {
        if (n <= 1 || workers.length == 0) {
            t.run(0, 1);
            return;
        }
        if (closed) {
            throw new IllegalStateException("the stripe threads of this rank are closed (closed with their group, or stuck in an"
                    + " earlier all-reduce): set MOONCAKE_CPU_THREADS=1 to reduce on the operation thread alone");
        }
        n = Math.min(n, threads());
        task = t;
        failure = null;
        caller = Thread.currentThread();
        pending.set(n - 1);
        generation = ((generation >>> 8) + 1) << 8 | n;
        for (int k = 0; k < n - 1; k++) LockSupport.unpark(workers[k]);
        try {
            t.run(0, n);
        } finally {
            awaitWorkers();
        }
        Throwable f = failure;
        if (f instanceof RuntimeException r) throw r;
        if (f instanceof Error e) throw e;
    }

    private void awaitWorkers() {
        int spins = 0;
        long start = 0;
        while (pending.get() != 0) {
            if (++spins < 20_000) {
                Thread.onSpinWait();
                continue;
            }
            if (start == 0) start = System.nanoTime();
            if (System.nanoTime() - start > STRIPE_DEADLINE_NANOS) {
                closed = true;   // a late worker may still run this task: no further run may share it
                throw new IllegalStateException(pending.get() + " of the " + (threads() - 1) + " stripe threads of this rank ("
                        + workers[0].getName() + "...) did not finish their part of a large all-reduce within "
                        + STRIPE_DEADLINE_NANOS / 1_000_000_000L + " s: they are stuck or starved of CPU. Their thread dump shows where;"
                        + " set MOONCAKE_CPU_THREADS=1 to reduce on the operation thread alone");
            }
            LockSupport.parkNanos(this, 50_000);
        }
    }

    private void loop(int stripe) {
        long seen = 0;
        while (!closed) {
            long g = generation;
            if (g == seen) {
                LockSupport.park(this);
                continue;
            }
            seen = g;
            int stripes = (int) (g & 0xff);
            if (stripe >= stripes) continue;
            try {
                task.run(stripe, stripes);
            } catch (Throwable e) {
                failure = e;
            }
            if (pending.decrementAndGet() == 0) LockSupport.unpark(caller);
        }
    }

    @Override
    public void close() {
        closed = true;
        for (Thread w : workers) LockSupport.unpark(w);
    }
}
