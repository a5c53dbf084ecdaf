package org.mooncake4j.transfer.transport.tcp;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.auth.GroupToken;

/**
 * The opening of every engine connection, which authenticates both ends with the group token
 * (challenge-response; the token never crosses the wire):
 *
 * <pre>
 * server → client  CHALLENGE  flags(server has a token), payload: Ns (32 random bytes)
 * client → server  HELLO|PROBE flags(client has a token), payload: Nc (32) | Pc (32) | client identity
 *                  Pc = HMAC-SHA256(token, "mooncake4j-te-client" | Ns | Nc | client identity)
 * server → client  HELLO      flags, payload: Ps (32) | server identity
 *                  Ps = HMAC-SHA256(token, "mooncake4j-te-server" | Nc | Ns | server identity)
 *               or REFUSED    reason; the server closes
 * </pre>
 *
 * The server checks Pc (constant-time) before it reads any other frame, so a client without the
 * token never has a frame applied; the client checks Ps before it sends any frame, so it never sends
 * data to a server without the token. When neither side has a token the proofs are zeros and
 * nothing is checked; when only one side has one, the connection is refused. Every length read
 * before the peer is authenticated is a fixed size or capped ({@link Frame#MAX_IDENTITY_BYTES}).
 *
 * <p>Stateless static helpers; each call owns its connection for the duration.
 */
final class EngineHandshake {
    static final String CLIENT_LABEL = "mooncake4j-te-client";
    static final String SERVER_LABEL = "mooncake4j-te-server";
    private static final byte[] NO_PROOF = new byte[GroupToken.MAC_BYTES];

    private EngineHandshake() {}

    /** What the server learned: who connected and whether it was a HELLO (a lasting connection) or a PROBE. */
    record Accepted(EngineIdentity peer, boolean probe) {}

    /**
     * Server side: challenges, verifies the client's proof and answers with this engine's identity
     * and proof. Throws {@link AuthenticationException} (after sending REFUSED) when the client
     * fails authentication, {@link ProtocolException} for anything that is not this protocol.
     */
    static Accepted accept(FrameChannel ch, EngineIdentity self, GroupToken token, Deadline deadline) throws IOException {
        ByteBuffer h = Frame.newHeader();
        byte[] serverNonce = GroupToken.nonce();
        send(ch, Frame.encode(h, Frame.CHALLENGE, Frame.VERSION, flags(token), serverNonce.length, 0), serverNonce, deadline);
        try {
            ch.readFully(h.clear(), deadline);
        } catch (SocketTimeoutException e) {
            throw new ProtocolException("handshake from " + ch.remote() + " failed: no HELLO within the handshake timeout");
        }
        int op = Frame.op(h);
        if (op != Frame.HELLO && op != Frame.PROBE) {
            throw new ProtocolException("expected HELLO, got " + Frame.name(op) + " (not a mooncake4j engine?)");
        }
        if (Frame.segment(h) != Frame.VERSION) {
            throw new ProtocolException("peer speaks protocol version " + Frame.segment(h) + ", this engine " + Frame.VERSION
                    + ": run the same mooncake4j version on every process");
        }
        long clientFlags = checkFlags(Frame.offset(h), "HELLO");
        byte[] payload = readPayload(ch, Frame.length(h), GroupToken.NONCE_BYTES + GroupToken.MAC_BYTES, "HELLO", deadline);
        byte[] clientNonce = slice(payload, 0, GroupToken.NONCE_BYTES);
        byte[] proof = slice(payload, GroupToken.NONCE_BYTES, GroupToken.MAC_BYTES);
        byte[] identity = slice(payload, GroupToken.NONCE_BYTES + GroupToken.MAC_BYTES, payload.length - GroupToken.NONCE_BYTES - GroupToken.MAC_BYTES);
        boolean clientHasToken = (clientFlags & Frame.FLAG_TOKEN) != 0;
        long refused = 0;
        String why = null;
        if (token == null && clientHasToken) {
            refused = Frame.REFUSED_SERVER_HAS_NO_TOKEN;
            why = "the peer has a group token, this engine has none";
        } else if (token != null && !clientHasToken) {
            refused = Frame.REFUSED_CLIENT_HAS_NO_TOKEN;
            why = "the peer has no group token, this engine requires one";
        } else if (token != null && !token.verify(proof, CLIENT_LABEL, serverNonce, clientNonce, identity)) {
            refused = Frame.REFUSED_BAD_PROOF;
            why = "wrong or missing group token";
        }
        if (refused != 0) {
            try {
                send(ch, Frame.encode(h, Frame.REFUSED, Frame.VERSION, refused, 0, 0), null, Deadline.afterMillis(100));
            } catch (IOException e) {
                // the refusal is only a courtesy: the connection closes either way
            }
            throw new AuthenticationException(refused, why);
        }
        EngineIdentity who;
        try {
            who = EngineIdentity.decode(identity);
        } catch (IllegalArgumentException e) {
            throw new ProtocolException("handshake from " + ch.remote() + " failed: " + e.getMessage());
        }
        byte[] me = self.encode();
        byte[] serverProof = token == null ? NO_PROOF : token.mac(SERVER_LABEL, clientNonce, serverNonce, me);
        send(ch, Frame.encode(h, Frame.HELLO, Frame.VERSION, flags(token), serverProof.length + me.length, 0), concat(serverProof, me), deadline);
        return new Accepted(who, op == Frame.PROBE);
    }

    /**
     * Client side: answers the server's challenge with {@code op} (HELLO or PROBE) and returns the
     * server's identity once its proof verified. Throws {@link AuthenticationException} when either
     * side fails authentication (nothing but the handshake was sent), {@link ProtocolException} for
     * anything that is not this protocol.
     */
    static EngineIdentity connect(FrameChannel ch, EngineIdentity self, GroupToken token, byte op, Deadline deadline) throws IOException {
        ByteBuffer h = Frame.newHeader();
        try {
            ch.readFully(h, deadline);
        } catch (SocketTimeoutException e) {
            throw new ProtocolException("no CHALLENGE by the deadline: the server is stopped or overloaded, or it runs an older mooncake4j"
                    + " (before protocol version " + Frame.VERSION + " the client spoke first)");
        }
        if (Frame.op(h) != Frame.CHALLENGE) throw new ProtocolException("expected CHALLENGE, got " + Frame.name(Frame.op(h)));
        if (Frame.segment(h) != Frame.VERSION) {
            throw new ProtocolException("the engine there speaks protocol version " + Frame.segment(h) + ", this engine " + Frame.VERSION
                    + ": run the same mooncake4j version on every process");
        }
        long serverFlags = checkFlags(Frame.offset(h), "CHALLENGE");
        if (Frame.length(h) != GroupToken.NONCE_BYTES) throw new ProtocolException("CHALLENGE with a nonce of " + Frame.length(h) + " bytes");
        byte[] serverNonce = new byte[GroupToken.NONCE_BYTES];
        ch.readFully(ByteBuffer.wrap(serverNonce), deadline);
        boolean serverHasToken = (serverFlags & Frame.FLAG_TOKEN) != 0;

        byte[] clientNonce = GroupToken.nonce();
        byte[] me = self.encode();
        // a server without a token could not check a proof: it gets none (it refuses the HELLO, and logs why)
        byte[] proof = token == null || !serverHasToken ? NO_PROOF : token.mac(CLIENT_LABEL, serverNonce, clientNonce, me);
        send(ch, Frame.encode(h, op, Frame.VERSION, flags(token), clientNonce.length + proof.length + me.length, 0),
                concat(clientNonce, proof, me), deadline);
        if (token != null && !serverHasToken) {
            throw new AuthenticationException(Frame.REFUSED_SERVER_HAS_NO_TOKEN, "the engine there has no group token, this engine has one");
        }
        if (token == null && serverHasToken) {
            throw new AuthenticationException(Frame.REFUSED_CLIENT_HAS_NO_TOKEN, "this engine has no group token, the engine there requires one");
        }

        ch.readFully(h.clear(), deadline);
        if (Frame.op(h) == Frame.REFUSED) {
            long reason = Frame.offset(h);
            throw new AuthenticationException(reason, reason == Frame.REFUSED_BAD_PROOF ? "wrong or missing group token" : "refusal reason " + reason);
        }
        if (Frame.op(h) != Frame.HELLO) throw new ProtocolException("expected HELLO, got " + Frame.name(Frame.op(h)));
        byte[] payload = readPayload(ch, Frame.length(h), GroupToken.MAC_BYTES, "HELLO", deadline);
        byte[] serverProof = slice(payload, 0, GroupToken.MAC_BYTES);
        byte[] identity = slice(payload, GroupToken.MAC_BYTES, payload.length - GroupToken.MAC_BYTES);
        if (token != null && !token.verify(serverProof, SERVER_LABEL, clientNonce, serverNonce, identity)) {
            throw new AuthenticationException(AuthenticationException.SERVER_PROOF_WRONG, "the engine there could not prove it holds the group token");
        }
        try {
            return EngineIdentity.decode(identity);
        } catch (IllegalArgumentException e) {
            throw new ProtocolException(e.getMessage());
        }
    }

    private static long flags(GroupToken token) { return token == null ? 0 : Frame.FLAG_TOKEN; }

    private static long checkFlags(long flags, String frame) throws ProtocolException {
        if ((flags & ~Frame.FLAG_TOKEN) != 0) throw new ProtocolException(frame + " with unknown flags 0x" + Long.toHexString(flags));
        return flags;
    }

    /** Reads a handshake payload of {@code fixed} bytes plus an identity, refusing lengths outside that before allocating. */
    private static byte[] readPayload(FrameChannel ch, long length, int fixed, String frame, Deadline deadline) throws IOException {
        if (length < fixed + 3 || length > fixed + Frame.MAX_IDENTITY_BYTES) {
            throw new ProtocolException(frame + " payload of " + length + " bytes, expected " + (fixed + 3) + " to " + (fixed + Frame.MAX_IDENTITY_BYTES));
        }
        byte[] payload = new byte[(int) length];
        try {
            ch.readFully(ByteBuffer.wrap(payload), deadline);
        } catch (SocketTimeoutException e) {
            throw new ProtocolException("truncated " + frame + ": its payload did not arrive within the handshake timeout");
        }
        return payload;
    }

    /** Writes one handshake frame under the write lock (the channel is not shared yet, but close() may take the lock). */
    private static void send(FrameChannel ch, ByteBuffer header, byte[] payload, Deadline deadline) throws IOException {
        if (!ch.lockWriter(deadline)) throw new SocketTimeoutException("handshake frame could not be sent by the deadline");
        try {
            ch.writeFrame(header, payload == null ? null : MemorySegment.ofArray(payload), 0, payload == null ? 0 : payload.length, deadline);
        } finally {
            ch.unlockWriter();
        }
    }

    private static byte[] slice(byte[] b, int from, int length) {
        byte[] s = new byte[length];
        System.arraycopy(b, from, s, 0, length);
        return s;
    }

    private static byte[] concat(byte[]... parts) {
        int n = 0;
        for (byte[] p : parts) n += p.length;
        byte[] out = new byte[n];
        int at = 0;
        for (byte[] p : parts) {
            System.arraycopy(p, 0, out, at, p.length);
            at += p.length;
        }
        return out;
    }
}
