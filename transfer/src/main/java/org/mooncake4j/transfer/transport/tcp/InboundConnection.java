package org.mooncake4j.transfer.transport.tcp;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.transport.SegmentRanges;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The server side of one peer's connection: a thread that reads frames and applies them to this
 * engine's segments in arrival order (which is what makes a PUBLISH visible only after the writes
 * sent before it). Payloads go straight from the socket into the target segment after the range was
 * checked; a posted WRITE or PUBLISH naming a segment that is no longer registered here is dropped (the
 * writer looked it up before it was closed: normal when a process group moves to a new epoch); a frame
 * naming a range outside a segment, or any other frame naming an unknown segment, is logged with the peer and
 * range and ends the connection, without touching memory. Before any of that, the handshake
 * authenticates the peer with the group token ({@link EngineHandshake}); a peer that fails it is
 * logged and disconnected without a single frame applied.
 *
 * <p>Only this connection's thread reads; answers (ACK, READ_DATA) are written under the channel's
 * write lock, which {@link #close(boolean)} also takes to say goodbye.
 */
final class InboundConnection {
    private static final Logger log = LoggerFactory.getLogger(InboundConnection.class);
    private static final long HANDSHAKE_MILLIS = 10_000;

    private final TcpServer server;
    private final FrameChannel ch;
    private final ByteBuffer in = Frame.newHeader();
    private final ByteBuffer out = Frame.newHeader();
    private final Thread thread;
    private volatile EngineIdentity peer;

    InboundConnection(TcpServer server, FrameChannel ch) {
        this.server = server;
        this.ch = ch;
        this.thread = Thread.ofPlatform().daemon().name("mooncake4j-" + server.self().name() + "-in-" + ch.remote()).unstarted(this::run);
    }

    void start() { thread.start(); }

    Thread thread() { return thread; }

    private String who() {
        EngineIdentity p = peer;
        return (p == null ? "a peer" : "engine " + p.name()) + " at " + ch.remote();
    }

    private void run() {
        String reason = null;
        try {
            if (!handshake()) return;
            reason = serve();
        } catch (EOFException e) {
            reason = "connection from " + who() + " closed without goodbye: the process exited or was killed";
        } catch (ClosedChannelException e) {
            reason = "connection from " + who() + " was closed";
        } catch (AuthenticationException e) {
            log.error("Engine {}: refused connection from {}: authentication failed ({})", server.self().name(), ch.remote(), e.getMessage());
            reason = "refused connection from " + ch.remote() + ": authentication failed (" + e.getMessage() + ")";
        } catch (ProtocolException e) {
            log.error("Engine {}: {}; closing the connection from {}", server.self().name(), e.getMessage(), who());
            reason = "protocol error on the connection from " + who() + ": " + e.getMessage();
        } catch (IOException e) {
            reason = "connection from " + who() + " failed: " + e;
        } catch (RuntimeException e) {
            log.error("Engine {}: applying a frame from {} failed; closing the connection", server.self().name(), who(), e);
            reason = "connection from " + who() + " failed: " + e;
        } finally {
            ch.close();
            server.ended(this, peer, reason);
        }
    }

    /**
     * Authenticates the peer and exchanges identities ({@link EngineHandshake}); false for a probe
     * (the connection ends). No frame is read past the handshake unless the peer proved it holds
     * the group token (when this engine has one).
     */
    private boolean handshake() throws IOException {
        EngineHandshake.Accepted a = EngineHandshake.accept(ch, server.self(), server.token(), Deadline.afterMillis(HANDSHAKE_MILLIS));
        if (a.probe()) return false;
        peer = a.peer();
        Thread.currentThread().setName("mooncake4j-" + server.self().name() + "-in-" + a.peer().name());
        log.info("Engine {}: peer engine {} connected from {}", server.self().name(), a.peer().name(), ch.remote());
        return true;
    }

    /** Applies frames until the peer says goodbye (returns the reason) or the connection fails (throws). */
    private String serve() throws IOException {
        while (true) {
            readHeader(ch, in);
            int op = Frame.op(in);
            int id = Frame.segment(in);
            long off = Frame.offset(in);
            long len = Frame.length(in);
            long req = Frame.request(in);
            switch (op) {
                case Frame.WRITE, Frame.WRITE_ACKED -> {
                    if (op == Frame.WRITE && server.segments().get(id) == null) {
                        // a posted write to a segment closed here since the peer looked it up (a process
                        // group moved to a new epoch): drop it, the peer is healthy
                        if (len < 0) throw new ProtocolException("malformed WRITE length " + len);
                        try {
                            ch.discard(len);
                        } catch (EOFException e) {
                            throw new ProtocolException("truncated frame: the connection ended inside the payload of a dropped WRITE of "
                                    + len + " bytes for segment id " + id);
                        }
                        log.debug("dropped WRITE [{}, {}) for segment id {} (closed here) from {}", off, off + len, id, who());
                        continue;
                    }
                    LocalSegment seg = target(op, id, off, len);
                    try {
                        ch.readInto(seg.memory(), off, len);
                    } catch (EOFException e) {
                        throw new ProtocolException("truncated frame: the connection ended inside the payload of " + Frame.name(op) + " [" + off
                                + ", " + (off + len) + ") of segment " + seg.name() + "; part of that range may hold new bytes");
                    }
                    if (log.isDebugEnabled()) log.debug("{} [{}, {}) of {} from {}", Frame.name(op), off, off + len, seg.name(), who());
                    if (op == Frame.WRITE_ACKED) answer(Frame.encode(out, Frame.ACK, 0, 0, len, req), null, 0, 0);
                }
                case Frame.READ -> {
                    LocalSegment seg = target(op, id, off, len);
                    answer(Frame.encode(out, Frame.READ_DATA, 0, 0, len, req), seg.memory(), off, len);
                }
                case Frame.PUBLISH -> {
                    if (server.segments().get(id) == null) {
                        log.debug("dropped PUBLISH at {} for segment id {} (closed here) from {}", off, id, who());
                        continue;
                    }
                    LocalSegment seg = segment(op, id, off, Waiter.WORD_BYTES);
                    String bad = SegmentRanges.badWord(seg.name(), seg.size(), off);
                    if (bad != null) throw new ProtocolException("PUBLISH: " + bad);
                    Waiter.publish(seg.memory(), off, len);
                }
                case Frame.GOODBYE -> {
                    return "engine " + peer.name() + " at " + ch.remote() + " closed (it said goodbye)";
                }
                default -> throw new ProtocolException("malformed frame (" + Frame.name(op) + ", segment id " + id + ", range ["
                        + off + ", " + (off + len) + "))");
            }
        }
    }

    /**
     * Reads the next header. EOF before its first byte is a peer going away between frames; EOF inside
     * it is a truncated frame.
     */
    static void readHeader(FrameChannel ch, ByteBuffer header) throws IOException {
        header.clear();
        try {
            ch.readFully(header);
        } catch (EOFException e) {
            if (header.position() == 0) throw e;
            throw new ProtocolException("truncated frame: the connection ended after " + header.position() + " of " + Frame.HEADER_BYTES
                    + " header bytes");
        }
    }

    /** The segment a frame targets, after checking that the range lies inside it. */
    private LocalSegment target(int op, int id, long off, long len) throws ProtocolException {
        LocalSegment seg = segment(op, id, off, len);
        String outside = SegmentRanges.outside(seg.name(), seg.size(), off, len);
        if (outside != null) throw new ProtocolException(Frame.name(op) + ": " + outside);
        return seg;
    }

    /** The segment a frame names; {@code off} and {@code len} only describe the frame in the error. */
    private LocalSegment segment(int op, int id, long off, long len) throws ProtocolException {
        LocalSegment seg = server.segments().get(id);
        if (seg == null) {
            throw new ProtocolException(Frame.name(op) + " [" + off + ", " + (off + len) + ") names segment id " + id
                    + ", which is not registered here (closed, or the peer holds a stale descriptor)");
        }
        return seg;
    }

    /** Writes an answer; a peer that does not read its answers within the response timeout loses the connection. */
    private void answer(ByteBuffer header, MemorySegment payload, long off, long len) throws IOException {
        Deadline d = Deadline.after(server.responseTimeout());
        if (!ch.lockWriter(d)) throw new ProtocolException("could not answer within " + server.responseTimeout());
        try {
            ch.writeFrame(header, payload, off, len, d);
        } catch (WriteTimeoutException e) {
            throw new ProtocolException("peer did not read its answers within " + server.responseTimeout());
        } finally {
            ch.unlockWriter();
        }
    }

    /** Ends the connection; with {@code goodbye}, first tells the peer this engine is closing. */
    void close(boolean goodbye) {
        if (goodbye && peer != null && ch.isOpen() && ch.lockWriter(Deadline.afterMillis(100))) {
            try {
                ByteBuffer h = Frame.newHeader();
                ch.writeFrame(Frame.encode(h, Frame.GOODBYE, 0, 0, 0, 0), null, 0, 0, Deadline.afterMillis(100));
            } catch (IOException ignored) {
                // the peer learns from the closed connection instead
            } finally {
                ch.unlockWriter();
            }
        }
        ch.close();
    }
}
