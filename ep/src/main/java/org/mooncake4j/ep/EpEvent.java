package org.mooncake4j.ep;

/**
 * Completion of the part of a dispatch or combine that does not run in its receive hook. On the CPU
 * path: without {@code asyncFinish} the work is done when the call returns and this returns at once;
 * with {@code asyncFinish} the work runs on the buffer's background thread and this waits for it and
 * rethrows its failure.
 */
public interface EpEvent {
    /** Waits until the operation's outputs (those not left to the hook) are ready. */
    void currentStreamWait();
}
