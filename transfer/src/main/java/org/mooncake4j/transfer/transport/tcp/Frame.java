package org.mooncake4j.transfer.transport.tcp;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The wire format: every frame starts with a 32-byte little-endian header, a flyweight over a
 * reusable direct {@link ByteBuffer}:
 *
 * <pre>
 *  0  int   magic 'M4J' (high 3 bytes) | opcode (low byte)
 *  4  int   segment id (the receiver's {@link org.mooncake4j.transfer.transport.LocalSegmentTable} id;
 *           the protocol version in HELLO/PROBE)
 *  8  long  offset in the segment
 * 16  long  length of the payload that follows (PUBLISH: the value; ACK: bytes written)
 * 24  long  request id (READ, WRITE_ACKED and their answers; 0 otherwise)
 * </pre>
 *
 * WRITE, WRITE_ACKED and READ_DATA carry the bytes, which the receiver reads straight into the
 * target memory.
 *
 * <p>A connection opens with the handshake of {@link EngineHandshake}: the server speaks first with
 * CHALLENGE, the client answers HELLO (or PROBE), the server answers HELLO or REFUSED. Their
 * segment field is the protocol version, their offset field carries flags ({@link #FLAG_TOKEN}), or
 * the refusal reason in REFUSED.
 */
final class Frame {
    static final int HEADER_BYTES = 32;
    /** 2: the server speaks first with a CHALLENGE, and the HELLOs carry nonces and group-token proofs. */
    static final int VERSION = 2;
    private static final int MAGIC = 0x4D344A00;
    private static final int MAGIC_MASK = 0xFFFFFF00;

    /** Client → server: first frame of a peer connection. */
    static final byte HELLO = 1;
    /** Client → server: first frame of a short-lived identity check; the server answers HELLO and forgets it. */
    static final byte PROBE = 2;
    /** Either way: the sender is closing its engine; the connection ends after it. */
    static final byte GOODBYE = 3;
    /** Posted write: no answer. */
    static final byte WRITE = 4;
    /** Write answered by ACK once the bytes are in the target memory (batch requests). */
    static final byte WRITE_ACKED = 5;
    static final byte ACK = 6;
    static final byte READ = 7;
    static final byte READ_DATA = 8;
    /** Release-store of the 64-bit value in the length field at offset, then wake local waiters. */
    static final byte PUBLISH = 9;
    /** Server → client: first frame of every connection; payload: the server's nonce. */
    static final byte CHALLENGE = 10;
    /** Server → client: the handshake failed authentication (reason in the offset field); the connection ends after it. */
    static final byte REFUSED = 11;

    /** Handshake flag (offset field of CHALLENGE and HELLO/PROBE): the sender has a group token. */
    static final long FLAG_TOKEN = 1;
    /** REFUSED reasons. */
    static final long REFUSED_BAD_PROOF = 1, REFUSED_CLIENT_HAS_NO_TOKEN = 2, REFUSED_SERVER_HAS_NO_TOKEN = 3;

    /**
     * The longest encoded {@link EngineIdentity} accepted in a handshake: names are short, and the cap
     * keeps an unauthenticated peer from making this engine allocate what a length field claims.
     */
    static final int MAX_IDENTITY_BYTES = 1024;

    private Frame() {}

    static ByteBuffer newHeader() {
        return ByteBuffer.allocateDirect(HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** Fills {@code h} with a header and makes it ready to write (position 0, limit 32). */
    static ByteBuffer encode(ByteBuffer h, byte op, int segment, long offset, long length, long request) {
        h.clear();
        h.putInt(0, MAGIC | (op & 0xFF));
        h.putInt(4, segment);
        h.putLong(8, offset);
        h.putLong(16, length);
        h.putLong(24, request);
        h.limit(HEADER_BYTES);
        return h;
    }

    /** The opcode of a received header, or -1 when it does not start with the magic (garbage or another protocol). */
    static int op(ByteBuffer h) {
        int w = h.getInt(0);
        return (w & MAGIC_MASK) == MAGIC ? w & 0xFF : -1;
    }

    static int segment(ByteBuffer h) { return h.getInt(4); }

    static long offset(ByteBuffer h) { return h.getLong(8); }

    static long length(ByteBuffer h) { return h.getLong(16); }

    static long request(ByteBuffer h) { return h.getLong(24); }

    static String name(int op) {
        return switch (op) {
            case HELLO -> "HELLO";
            case PROBE -> "PROBE";
            case GOODBYE -> "GOODBYE";
            case WRITE -> "WRITE";
            case WRITE_ACKED -> "WRITE_ACKED";
            case ACK -> "ACK";
            case READ -> "READ";
            case READ_DATA -> "READ_DATA";
            case PUBLISH -> "PUBLISH";
            case CHALLENGE -> "CHALLENGE";
            case REFUSED -> "REFUSED";
            default -> "opcode " + op;
        };
    }
}
