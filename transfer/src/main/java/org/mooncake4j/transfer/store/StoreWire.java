package org.mooncake4j.transfer.store;

import java.io.ByteArrayOutputStream;
import java.io.DataInput;
import java.io.DataInputStream;
import java.io.DataOutput;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

/**
 * The embedded store's wire format, shared by {@link EmbeddedStoreServer} and {@link EmbeddedStore}.
 *
 * <p>A connection opens with a handshake that authenticates both sides with the group token
 * ({@link org.mooncake4j.transfer.auth.GroupToken}); all integers big-endian:
 *
 * <pre>
 * client → server  int MAGIC, int VERSION
 * server → client  int MAGIC, int VERSION   (always, so a client of another version can say so; the server
 *                                           then closes when the versions differ)
 * server → client  byte flags (FLAG_TOKEN: the server has a token), Ns (32 random bytes)
 * client → server  byte flags, Nc (32), Pc (32) = HMAC-SHA256(token, "mooncake4j-store-client" | Ns | Nc)
 * server → client  byte verdict (AUTH_OK or a refusal, after which the server closes),
 *                  Ps (32) = HMAC-SHA256(token, "mooncake4j-store-server" | Nc | Ns)
 * </pre>
 *
 * Without a token on either side the proofs are zeros and nothing is checked; with a token on only
 * one side the connection is refused. The server reads no request before the client's proof
 * verified, and the client sends none before the server's did. After the handshake, each direction carries frames: a big-endian
 * int length, then that many bytes. A request frame is {@code long id, byte op, fields}; a response
 * frame is {@code long id, byte status, fields}. Responses carry the id of their request and may come
 * in any order (blocking requests answer when they are done). Strings are an int byte count and
 * UTF-8; byte arrays are an int count ({@code -1} = absent) and the bytes; timeouts are milliseconds
 * ({@code -1} = none).
 *
 * <p>Requests: GET key → value?; SET key value → (); CAS key expected? value → bool; ADD key long →
 * long; DELETE key → bool; KEYS prefix → int n, n keys; WAIT_FOR timeout int n, n keys → int n,
 * n (key, value) pairs; AWAIT_CHANGE timeout key current? → value?. Status {@link #ERROR} and
 * {@link #TIMEOUT} carry a message string instead of fields.
 *
 * <p>Stateless static helpers; thread-safe.
 */
final class StoreWire {
    static final int MAGIC = 0x4D43_3453; // "MC4S"
    /** 2: the handshake authenticates with the group token. */
    static final int VERSION = 2;
    static final String CLIENT_LABEL = "mooncake4j-store-client";
    static final String SERVER_LABEL = "mooncake4j-store-server";
    /** Handshake flag: the sender has a group token. */
    static final byte FLAG_TOKEN = 1;
    /** Handshake verdicts. */
    static final byte AUTH_OK = 0, AUTH_BAD_PROOF = 1, AUTH_CLIENT_HAS_NO_TOKEN = 2, AUTH_SERVER_HAS_NO_TOKEN = 3;
    /** How long a connecting client may take over the handshake before the server drops it. */
    static final int HANDSHAKE_MILLIS = 10_000;
    /** Frames larger than this are refused (a corrupt length, or a peer that is not a store). */
    static final int MAX_FRAME = 64 << 20;

    static final byte GET = 1;
    static final byte SET = 2;
    static final byte CAS = 3;
    static final byte ADD = 4;
    static final byte DELETE = 5;
    static final byte KEYS = 6;
    static final byte WAIT_FOR = 7;
    static final byte AWAIT_CHANGE = 8;

    static final byte OK = 0;
    static final byte ERROR = 1;
    static final byte TIMEOUT = 2;

    /** Writes the body of a frame after its id and op/status byte. */
    @FunctionalInterface
    interface Body {
        void write(DataOutput out) throws IOException;
    }

    private StoreWire() {}

    /** One frame's bytes: {@code id}, {@code kind} (op or status), then what {@code body} writes. */
    static byte[] frame(long id, byte kind, Body body) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(64);
        DataOutputStream out = new DataOutputStream(bytes);
        out.writeLong(id);
        out.writeByte(kind);
        body.write(out);
        out.flush();
        return bytes.toByteArray();
    }

    /** Writes a length-prefixed frame and flushes; the caller serialises writers. */
    static void writeFrame(DataOutputStream out, byte[] frame) throws IOException {
        out.writeInt(frame.length);
        out.write(frame);
        out.flush();
    }

    /** Reads one frame; {@link EOFException} when the peer closed the connection between frames. */
    static byte[] readFrame(DataInputStream in) throws IOException {
        int len = in.readInt();
        if (len < 9 || len > MAX_FRAME) throw new IOException("bad frame length " + len + " (the peer is not speaking the store protocol)");
        byte[] frame = new byte[len];
        in.readFully(frame);
        return frame;
    }

    static void writeString(DataOutput out, String s) throws IOException {
        writeBytes(out, s.getBytes(StandardCharsets.UTF_8));
    }

    static String readString(DataInput in) throws IOException {
        byte[] b = readBytes(in);
        if (b == null) throw new IOException("absent string in a store frame");
        return new String(b, StandardCharsets.UTF_8);
    }

    /** Writes a byte array; {@code null} is written as absent. */
    static void writeBytes(DataOutput out, byte[] b) throws IOException {
        if (b == null) {
            out.writeInt(-1);
            return;
        }
        out.writeInt(b.length);
        out.write(b);
    }

    /** Reads a byte array written by {@link #writeBytes}; {@code null} when absent. */
    static byte[] readBytes(DataInput in) throws IOException {
        int n = in.readInt();
        if (n == -1) return null;
        if (n < 0 || n > MAX_FRAME) throw new IOException("bad byte count " + n + " in a store frame");
        byte[] b = new byte[n];
        in.readFully(b);
        return b;
    }
}
