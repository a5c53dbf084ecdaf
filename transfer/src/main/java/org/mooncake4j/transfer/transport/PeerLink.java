package org.mooncake4j.transfer.transport;

/**
 * The liveness of one peer engine as seen from this engine: the state of the TCP connection to it.
 * Every remote segment holds the link of the engine that registered it, whatever transport carries
 * its data, because a closed connection is how a peer's death becomes known at once.
 * Implementations are thread-safe.
 */
public interface PeerLink {
    /** The peer engine's name. */
    String engineName();

    /** False once the connection closed or a transfer on it failed; never true again. */
    boolean alive();

    /** Why the link is dead ("" while alive), for error messages. */
    String failureReason();

    /** The error for an operation on {@code segment} after this link died. */
    default org.mooncake4j.transfer.TransferException unreachable(String segment) {
        return new org.mooncake4j.transfer.TransferException("Segment " + segment + " of engine " + engineName()
                + " is unreachable: " + failureReason() + ". The peer is treated as failed; open the segment again"
                + " once a replacement process has registered it.");
    }
}
