package org.mooncake4j.pg;

import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

/** A {@link Work} backed by a future; {@code maxWaitMillis} bounds {@link #await()} (the op's own timeout plus slack). */
final class WorkImpl implements Work {
    private final CompletableFuture<Void> future = new CompletableFuture<>();
    private final String what;
    private final long maxWaitMillis;
    private volatile int[] dropped = new int[0];
    private volatile boolean localSuccess = true;

    WorkImpl(String what, long maxWaitMillis) {
        this.what = what;
        this.maxWaitMillis = maxWaitMillis;
    }

    void complete(int[] droppedRanks, boolean covered) {
        this.dropped = droppedRanks;
        this.localSuccess = covered;
        future.complete(null);
    }

    void fail(Throwable t) { future.completeExceptionally(t); }

    static WorkImpl completed(String what) {
        WorkImpl w = new WorkImpl(what, 0);
        w.complete(new int[0], true);
        return w;
    }

    @Override
    public void await() {
        if (!await(Duration.ofMillis(maxWaitMillis))) {
            throw new PeerFailureException(what + " did not complete within " + maxWaitMillis
                    + " ms; its own timeout should have ended it first — the process may be overloaded.", new int[0]);
        }
    }

    @Override
    public boolean await(Duration timeout) {
        try {
            future.get(timeout.toNanos(), TimeUnit.NANOSECONDS);
            return true;
        } catch (java.util.concurrent.TimeoutException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for " + what, e);
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof RuntimeException r) throw r;
            if (c instanceof Error err) throw err;
            throw new IllegalStateException(what + " failed", c);
        }
    }

    @Override public boolean isCompleted() { return future.isDone(); }

    @Override
    public Optional<Throwable> exception() {
        if (!future.isCompletedExceptionally()) return Optional.empty();
        try {
            future.join();
            return Optional.empty();
        } catch (java.util.concurrent.CompletionException e) {
            return Optional.of(e.getCause());
        } catch (java.util.concurrent.CancellationException e) {
            return Optional.of(e);
        }
    }

    @Override public CompletableFuture<Void> future() { return future; }

    @Override public int[] droppedRanks() { return dropped.clone(); }

    @Override public boolean localSuccess() { return localSuccess; }

    @Override public String toString() { return "Work(" + what + (future.isDone() ? ", done" : "") + ")"; }
}
