package org.mooncake4j.transfer.transport;

/** An asynchronous transfer in flight; see {@link AsyncRemoteSegment}. */
@FunctionalInterface
public interface TransferHandle {
    /** A handle for a transfer that finished before it was returned. */
    TransferHandle DONE = () -> {};

    /**
     * Gives up on the transfer: once this returns, the transport no longer touches the caller's local
     * memory for it, and its completion will not be called. Idempotent; may wait briefly while data is
     * being received into that memory.
     */
    void abandon();
}
