package org.mooncake4j.transfer.transport.tcp;

/**
 * A handshake failed authentication with the group token; the connection is closed before any frame
 * is applied. {@link #reason} is one of the {@code Frame.REFUSED_*} reasons, or
 * {@link #SERVER_PROOF_WRONG} when a server could not prove it holds the token.
 */
final class AuthenticationException extends ProtocolException {
    /** Client side only: the server's proof did not verify (it lacks the token: an impostor or another group's engine). */
    static final long SERVER_PROOF_WRONG = 100;

    final long reason;

    AuthenticationException(long reason, String message) {
        super(message);
        this.reason = reason;
    }
}
