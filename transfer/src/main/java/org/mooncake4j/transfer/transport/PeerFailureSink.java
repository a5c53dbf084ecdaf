package org.mooncake4j.transfer.transport;

/**
 * Where transports report that a peer engine is gone (its connection closed, or a transfer on it
 * failed). Called on the transport's I/O thread; the engine de-duplicates and tells its listeners.
 */
@FunctionalInterface
public interface PeerFailureSink {
    /**
     * @param engineName the peer engine's name
     * @param instanceId the peer engine's instance (one per engine start: a replacement process has a new one)
     * @param reason what was observed, for logs and listeners
     */
    void peerGone(String engineName, String instanceId, String reason);
}
