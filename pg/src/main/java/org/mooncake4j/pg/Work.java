package org.mooncake4j.pg;

import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;

/**
 * An operation in flight, returned by the {@code ...Async} methods (torch's {@code Work}).
 * Thread-safe. The operation's tensors belong to it until it completes.
 */
public interface Work {
    /** Waits for completion (bounded by the operation's own timeout); rethrows its failure. */
    void await();

    /** Waits at most {@code timeout}; false if still running. Rethrows the operation's failure. */
    boolean await(Duration timeout);

    boolean isCompleted();

    Optional<Throwable> exception();

    /** Completes when the operation does (exceptionally when it fails). */
    CompletableFuture<Void> future();

    /** Ranks removed from the group while this operation ran. */
    int[] droppedRanks();

    /** True when this rank's result covered every rank that was active when the operation started. */
    boolean localSuccess();
}
