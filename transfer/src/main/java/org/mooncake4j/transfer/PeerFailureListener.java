package org.mooncake4j.transfer;

/**
 * Told when a peer engine is known to be gone: its connection closed (a killed process closes its
 * sockets at once) or a transfer to it failed. Called on an engine I/O thread: return quickly.
 */
@FunctionalInterface
public interface PeerFailureListener {
    void peerFailed(String engineName, String reason);
}
