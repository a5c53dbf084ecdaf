package org.mooncake4j.transfer.transport.tcp;

import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SocketChannel;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.auth.GroupToken;

/**
 * A hand-made engine client for tests: speaks the handshake itself (written from the protocol
 * description, not with the production code, so the two check each other) and then sends whatever
 * bytes a test wants. Blocking socket with a read timeout; one thread.
 */
final class RawPeer implements AutoCloseable {
    static final int READ_TIMEOUT_MILLIS = 3000;

    final SocketChannel socket;
    private final InputStream in;
    byte[] serverNonce;
    long serverFlags;

    private RawPeer(SocketChannel socket) throws IOException {
        this.socket = socket;
        socket.socket().setSoTimeout(READ_TIMEOUT_MILLIS);
        // no Nagle: a header and its payload sent apart would otherwise wait for a delayed ACK (40 ms a case)
        socket.setOption(java.net.StandardSocketOptions.TCP_NODELAY, true);
        this.in = socket.socket().getInputStream();
    }

    static RawPeer open(TransferEngine e) throws IOException {
        return new RawPeer(SocketChannel.open(new InetSocketAddress(e.hostIp(), e.port())));
    }

    /** Opens a connection and completes the handshake as engine {@code me} with {@code token} (null: none); throws unless accepted. */
    static RawPeer authenticated(TransferEngine e, String token, EngineIdentity me) throws IOException {
        RawPeer p = open(e);
        p.readChallenge();
        byte[] nonce = GroupToken.nonce();
        p.send(p.hello(Frame.HELLO, token, nonce, me));
        Answer a = p.readAnswer();
        if (a.op != Frame.HELLO) throw new IOException("handshake refused: " + Frame.name(a.op) + " reason " + a.offset);
        if (token != null) {
            byte[] proof = java.util.Arrays.copyOf(a.payload, GroupToken.MAC_BYTES);
            byte[] identity = java.util.Arrays.copyOfRange(a.payload, GroupToken.MAC_BYTES, a.payload.length);
            if (!GroupToken.of(token).verify(proof, "mooncake4j-te-server", nonce, p.serverNonce, identity)) {
                throw new IOException("the engine's proof did not verify");
            }
        }
        return p;
    }

    /** Reads the server's CHALLENGE. */
    void readChallenge() throws IOException {
        ByteBuffer h = header();
        readFully(h);
        if (Frame.op(h) != Frame.CHALLENGE || Frame.length(h) != GroupToken.NONCE_BYTES) {
            throw new IOException("expected CHALLENGE, got " + Frame.name(Frame.op(h)));
        }
        serverFlags = Frame.offset(h);
        serverNonce = new byte[GroupToken.NONCE_BYTES];
        readFully(ByteBuffer.wrap(serverNonce));
    }

    /** The bytes of a HELLO or PROBE answering the challenge read last, with a proof made with {@code token} (null: flag off, zero proof). */
    ByteBuffer hello(byte op, String token, byte[] clientNonce, EngineIdentity me) {
        byte[] id = me.encode();
        byte[] proof = token == null ? new byte[GroupToken.MAC_BYTES]
                : GroupToken.of(token).mac("mooncake4j-te-client", serverNonce, clientNonce, id);
        ByteBuffer b = ByteBuffer.allocate(Frame.HEADER_BYTES + clientNonce.length + proof.length + id.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(Frame.encode(Frame.newHeader(), op, Frame.VERSION, token == null ? 0 : Frame.FLAG_TOKEN, clientNonce.length + proof.length + id.length, 0));
        b.put(clientNonce).put(proof).put(id);
        return b.flip();
    }

    record Answer(int op, long offset, long length, long request, byte[] payload) {}

    /** Reads a handshake answer (HELLO with payload, or REFUSED). */
    Answer readAnswer() throws IOException {
        ByteBuffer h = header();
        readFully(h);
        int op = Frame.op(h);
        long len = op == Frame.HELLO ? Frame.length(h) : 0;
        if (len < 0 || len > 4096) throw new IOException("answer length " + len);
        byte[] p = new byte[(int) len];
        readFully(ByteBuffer.wrap(p));
        return new Answer(op, Frame.offset(h), Frame.length(h), Frame.request(h), p);
    }

    /** Reads one answer frame after the handshake (ACK, READ_DATA with its data, GOODBYE). */
    Answer readFrame() throws IOException {
        ByteBuffer h = header();
        readFully(h);
        int op = Frame.op(h);
        long len = op == Frame.READ_DATA ? Frame.length(h) : 0;
        if (len < 0 || len > 1 << 20) throw new IOException("unexpected answer length " + len + " of " + Frame.name(op));
        byte[] p = new byte[(int) len];
        readFully(ByteBuffer.wrap(p));
        return new Answer(op, Frame.offset(h), Frame.length(h), Frame.request(h), p);
    }

    void send(ByteBuffer... parts) throws IOException {
        long left = 0;
        for (ByteBuffer b : parts) left += b.remaining();
        while (left > 0) left -= socket.write(parts);
    }

    void send(byte[] bytes) throws IOException { send(ByteBuffer.wrap(bytes)); }

    /** Half-closes: the engine sees the end of the stream after what was sent. */
    void shutdownOutput() throws IOException { socket.shutdownOutput(); }

    void readFully(ByteBuffer b) throws IOException {
        while (b.hasRemaining()) {
            int n = in.read(b.array(), b.arrayOffset() + b.position(), b.remaining());
            if (n < 0) throw new java.io.EOFException("closed by the engine");
            b.position(b.position() + n);
        }
    }

    /** Reads and drops everything until the engine closes; false when it did not within the read timeout. */
    boolean closedByServer() throws IOException {
        byte[] sink = new byte[8192];
        try {
            while (in.read(sink) >= 0) {
                // answers to earlier frames; the close is what counts
            }
            return true;
        } catch (SocketTimeoutException e) {
            return false;
        } catch (IOException e) {
            return true; // reset: the engine closed with our bytes unread
        }
    }

    int localPort() throws IOException { return ((InetSocketAddress) socket.getLocalAddress()).getPort(); }

    static ByteBuffer header() { return ByteBuffer.allocate(Frame.HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN); }

    /** A frame header as heap bytes (Frame.encode fills a direct buffer). */
    static byte[] headerBytes(int magicAndOp, int segment, long offset, long length, long request) {
        ByteBuffer b = header();
        b.putInt(magicAndOp).putInt(segment).putLong(offset).putLong(length).putLong(request);
        return b.array();
    }

    static int magic(int op) { return 0x4D344A00 | (op & 0xFF); }

    @Override
    public void close() throws IOException { socket.close(); }
}
