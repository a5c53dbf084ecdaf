package org.mooncake4j.transfer.transport;

/**
 * The outcome of one asynchronous transfer (a batch request). Exactly one method is called, once,
 * on whichever thread finishes the transfer (a batch worker or a connection's reader thread):
 * implementations must return quickly.
 */
public interface TransferCompletion {
    void completed(long bytes);

    void failed(String message);
}
