package org.mooncake4j.transfer.transport.tcp;

import java.io.EOFException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.ConnectException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.TransferException;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.transport.PeerFailureSink;
import org.mooncake4j.transfer.transport.PeerLink;
import org.mooncake4j.transfer.transport.TransferCompletion;
import org.mooncake4j.transfer.transport.TransferHandle;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * This engine's connection to one peer engine (one per peer instance, shared by every segment of that
 * peer). It carries tcp transfers and, for every transport, the peer's liveness: the peer's death
 * closes the connection, the reader thread sees EOF at once, and the link reports the peer gone.
 *
 * <p>Threading: any thread may send; a frame is written whole under the channel's write lock, so
 * frames of one thread keep their order and frames of different threads never interleave. A reader
 * thread receives answers (ACK, READ_DATA straight into the waiting caller's memory) and is the one
 * that notices failure. Owned by the engine; {@link #close()} says goodbye and joins the reader.
 */
public final class TcpPeerLink implements PeerLink, AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(TcpPeerLink.class);
    private static final long ABANDON_GRACE_MILLIS = 1000;

    private final FrameChannel ch;
    private final EngineIdentity self;
    private final EngineIdentity peer;
    private final PeerFailureSink sink;
    /** Header of the frame being sent; guarded by the channel's write lock. */
    private final ByteBuffer out = Frame.newHeader();
    /** Header being received; reader thread only. */
    private final ByteBuffer in = Frame.newHeader();
    private final ConcurrentHashMap<Long, Pending> pending = new ConcurrentHashMap<>();
    private final AtomicLong requests = new AtomicLong();
    private final Thread reader;
    private volatile String failure;
    private volatile boolean closedHere;

    private TcpPeerLink(FrameChannel ch, EngineIdentity self, EngineIdentity peer, PeerFailureSink sink) {
        this.ch = ch;
        this.self = self;
        this.peer = peer;
        this.sink = sink;
        this.reader = Thread.ofPlatform().daemon().name("mooncake4j-" + self.name() + "-out-" + peer.name()).unstarted(this::readLoop);
    }

    /**
     * Connects to the engine {@code expected} at {@code host:port} and checks that it is that engine
     * (a stale descriptor can point at a port some other engine now holds).
     *
     * @param bind local address to connect from, or null for the system's choice
     * @param segment the segment being opened, for messages
     */
    public static TcpPeerLink connect(EngineIdentity self, EngineIdentity expected, String host, int port, InetAddress bind,
                                      String segment, Deadline deadline, PeerFailureSink sink) {
        return connect(self, expected, host, port, bind, segment, deadline, sink, null);
    }

    /**
     * Like {@link #connect(EngineIdentity, EngineIdentity, String, int, InetAddress, String, Deadline, PeerFailureSink)},
     * authenticating both ends with {@code token} (null: none; a peer that has a token then refuses
     * the connection). Nothing but the handshake is sent before the peer proved it holds the token.
     */
    public static TcpPeerLink connect(EngineIdentity self, EngineIdentity expected, String host, int port, InetAddress bind,
                                      String segment, Deadline deadline, PeerFailureSink sink, GroupToken token) {
        String where = host + ":" + port;
        FrameChannel ch = open(host, port, bind, deadline, () -> "Failed to connect to engine " + expected.name() + " for segment " + segment + ": ",
                segment);
        EngineIdentity got;
        try {
            got = EngineHandshake.connect(ch, self, token, Frame.HELLO, deadline);
        } catch (AuthenticationException e) {
            ch.close();
            throw refused(expected.name(), where, e);
        } catch (IOException e) {
            ch.close();
            throw new TransferException("Failed to connect to engine " + expected.name() + " at " + where + " for segment " + segment
                    + ": the handshake failed (" + e.getMessage() + "). Something other than a mooncake4j engine of the same version may hold that port.", e);
        }
        if (!got.equals(expected)) {
            ch.close();
            throw new TransferException("Segment " + segment + " was registered by engine " + expected + " at " + where + ", but the engine there now is "
                    + got + ": the descriptor is stale (" + expected.name() + " has exited). Wait for its replacement to register "
                    + segment + " again.");
        }
        TcpPeerLink link = new TcpPeerLink(ch, self, got, sink);
        link.reader.start();
        log.info("Engine {}: connected to peer engine {} at {}", self.name(), got.name(), where);
        return link;
    }

    /**
     * Asks whoever listens at {@code host:port} for its identity; empty when nobody answers by the
     * deadline. Used to tell a live registration from a stale one.
     */
    public static Optional<EngineIdentity> probe(EngineIdentity self, String host, int port, Deadline deadline) {
        return probe(self, host, port, deadline, null);
    }

    /**
     * Like {@link #probe(EngineIdentity, String, int, Deadline)}, authenticating with {@code token}:
     * an engine that fails authentication is reported as nobody (it cannot be the group's engine that
     * registered a segment, and its identity claim proves nothing).
     */
    public static Optional<EngineIdentity> probe(EngineIdentity self, String host, int port, Deadline deadline, GroupToken token) {
        FrameChannel ch;
        try {
            ch = open(host, port, null, deadline, () -> "", "");
        } catch (TransferException e) {
            return Optional.empty();
        }
        try {
            return Optional.of(EngineHandshake.connect(ch, self, token, Frame.PROBE, deadline));
        } catch (IOException e) {
            return Optional.empty();
        } finally {
            ch.close();
        }
    }

    private static FrameChannel open(String host, int port, InetAddress bind, Deadline deadline,
                                     java.util.function.Supplier<String> prefix, String segment) {
        String where = host + ":" + port;
        InetSocketAddress to = new InetSocketAddress(host, port);
        if (to.isUnresolved()) {
            throw new TransferException(prefix.get() + "cannot resolve host " + host + " (segment " + segment
                    + "). The peer must advertise an address reachable from here: set its host IP with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
        }
        InetAddress from = bind != null && !to.getAddress().isLoopbackAddress() ? bind : null;
        try {
            return FrameChannel.connect(to, from, deadline);
        } catch (ConnectException e) {
            throw new TransferException(prefix.get() + "connection refused by " + where + " (segment " + segment
                    + "). The peer must advertise an address reachable from here: set its host IP with Mooncake.setHostIp/MOONCAKE_HOST_IP"
                    + " to a non-loopback address; check firewalls.", e);
        } catch (SocketTimeoutException e) {
            throw new TransferException(prefix.get() + "no answer from " + where + " (segment " + segment
                    + ") by the deadline: the host is down or a firewall drops the packets. The peer must advertise an address reachable from here"
                    + " (Mooncake.setHostIp/MOONCAKE_HOST_IP); check firewalls.", e);
        } catch (IOException e) {
            throw new TransferException(prefix.get() + "cannot reach " + where + " (segment " + segment + "): " + e
                    + ". The peer must advertise an address reachable from here (Mooncake.setHostIp/MOONCAKE_HOST_IP); check routes and firewalls.", e);
        }
    }

    /** The message for a connection that failed authentication, saying which side lacks what and what to do. */
    private static TransferException refused(String engine, String where, AuthenticationException e) {
        String head = "Engine " + engine + " at " + where;
        String m;
        if (e.reason == Frame.REFUSED_CLIENT_HAS_NO_TOKEN) {
            m = head + " refused this connection: authentication failed (this engine has no group token, the engine there requires one). ";
        } else if (e.reason == Frame.REFUSED_SERVER_HAS_NO_TOKEN) {
            m = head + " has no group token but this engine has one: refusing to connect, so no data goes to an engine outside the group"
                    + " (authentication failed). ";
        } else if (e.reason == AuthenticationException.SERVER_PROOF_WRONG) {
            m = head + " failed authentication: it could not prove it holds the group token (an impostor, or an engine of another group,"
                    + " holds that address), so this engine sends it no data. ";
        } else {
            m = head + " refused this connection: authentication failed. ";
        }
        return new TransferException(m + GroupToken.ADVICE, e);
    }

    @Override public String engineName() { return peer.name(); }

    public EngineIdentity peer() { return peer; }

    /** host:port of the peer engine. */
    public String remote() { return ch.remote(); }

    @Override public boolean alive() { return failure == null; }

    @Override
    public String failureReason() {
        String f = failure;
        return f == null ? "" : f;
    }

    /** Posted write: returns once the frame is handed to the socket. */
    public void write(String segment, int segmentId, long offset, MemorySegment src, long srcOffset, long length, Deadline deadline) {
        send(segment, Frame.WRITE, segmentId, offset, length, 0, src, srcOffset, length, deadline);
    }

    /** Sends a PUBLISH: the peer release-stores {@code value} at {@code offset} after every earlier frame. */
    public void publish(String segment, int segmentId, long offset, long value, Deadline deadline) {
        send(segment, Frame.PUBLISH, segmentId, offset, value, 0, null, 0, 0, deadline);
    }

    /**
     * Reads into {@code dst}, waiting for the data until the deadline. The reader thread receives the
     * data; when {@code dst} is confined to the calling thread it lands in a staging buffer first.
     */
    public void read(String segment, int segmentId, long offset, MemorySegment dst, long dstOffset, long length, Deadline deadline) {
        if (!dst.isAccessibleBy(reader)) {
            try (Arena staging = Arena.ofShared()) {
                MemorySegment tmp = staging.allocate(length, 64);
                read(segment, segmentId, offset, tmp, 0, length, deadline);
                MemorySegment.copy(tmp, 0, dst, dstOffset, length);
            }
            return;
        }
        Pending p = startRead(segment, segmentId, offset, dst, dstOffset, length, deadline, null);
        if (!p.await(deadline)) {
            p.abandon();
            if (!p.done()) {
                throw new TransferException("Timed out reading [" + offset + ", " + (offset + length) + ") of segment " + segment + " from engine "
                        + peer.name() + " at " + ch.remote() + ": no answer by the deadline (the peer is stopped, overloaded or unreachable).");
            }
        }
        String error = p.error();
        if (error != null) throw new TransferException(error);
    }

    /** Starts an acknowledged write; the completion runs when the peer has the bytes. */
    public TransferHandle startWrite(String segment, int segmentId, long offset, MemorySegment src, long srcOffset, long length,
                                     Deadline sendDeadline, TransferCompletion completion) {
        Pending p = new Pending(requests.incrementAndGet(), segment, null, 0, length, completion);
        return start(p, segment, Frame.WRITE_ACKED, segmentId, offset, src, srcOffset, length, sendDeadline);
    }

    /** Starts a read; the data lands in {@code dst} on the reader thread, then the completion runs. */
    public Pending startRead(String segment, int segmentId, long offset, MemorySegment dst, long dstOffset, long length,
                             Deadline sendDeadline, TransferCompletion completion) {
        Pending p = new Pending(requests.incrementAndGet(), segment, dst, dstOffset, length, completion);
        return start(p, segment, Frame.READ, segmentId, offset, null, 0, 0, sendDeadline);
    }

    private Pending start(Pending p, String segment, byte op, int segmentId, long offset, MemorySegment payload, long payloadOffset,
                          long payloadLength, Deadline deadline) {
        pending.put(p.id, p);
        try {
            send(segment, op, segmentId, offset, p.length, p.id, payload, payloadOffset, payloadLength, deadline);
        } catch (TransferException e) {
            pending.remove(p.id);
            p.fail(e.getMessage());
        } catch (RuntimeException e) {
            pending.remove(p.id);
            throw e;
        }
        return p;
    }

    private void send(String segment, byte op, int segmentId, long offset, long lengthField, long request,
                      MemorySegment payload, long payloadOffset, long payloadLength, Deadline deadline) {
        if (failure != null) throw unreachable(segment);
        if (!ch.lockWriter(deadline)) {
            throw new TransferException("Timed out waiting to send " + Frame.name(op) + " to segment " + segment + " of engine " + peer.name()
                    + " at " + ch.remote() + ": other threads kept the connection busy until the deadline (the peer reads slowly or has stopped).");
        }
        try {
            Frame.encode(out, op, segmentId, offset, lengthField, request);
            ch.writeFrame(out, payload, payloadOffset, payloadLength, deadline);
            if (log.isDebugEnabled()) {
                log.debug("{} [{}, {}) of {} to {} ({} payload bytes)", Frame.name(op), offset, offset + lengthField, segment, peer.name(), payloadLength);
            }
        } catch (WriteTimeoutException e) {
            String what = Frame.name(op) + " of [" + offset + ", " + (offset + payloadLength) + ") to segment " + segment + " of engine " + peer.name()
                    + " at " + ch.remote();
            if (e.midFrame()) {
                fail("a " + what + " timed out half-sent; the connection can no longer be used");
                throw new TransferException("Timed out sending " + what + ": the peer stopped reading mid-transfer, so the connection was closed"
                        + " and the peer is treated as failed.", e);
            }
            throw new TransferException("Timed out sending " + what + ": the connection stayed full until the deadline (the peer is not"
                    + " reading: stopped, overloaded or unreachable).", e);
        } catch (IOException e) {
            fail("sending to engine " + peer.name() + " at " + ch.remote() + " failed: " + e);
            throw unreachable(segment);
        } catch (RuntimeException e) {
            if (ch.frameStarted()) fail("a frame to engine " + peer.name() + " was cut short by " + e);
            throw e;
        } finally {
            ch.unlockWriter();
        }
    }

    private void readLoop() {
        String reason;
        try {
            reason = receive();
        } catch (EOFException e) {
            reason = "connection to engine " + peer.name() + " at " + ch.remote() + " closed: the peer process exited or was killed";
        } catch (ClosedChannelException e) {
            reason = "connection to engine " + peer.name() + " at " + ch.remote() + " was closed";
        } catch (ProtocolException e) {
            log.error("Engine {}: {} from engine {} at {}; closing the connection", self.name(), e.getMessage(), peer.name(), ch.remote());
            reason = "protocol error on the connection to engine " + peer.name() + ": " + e.getMessage();
        } catch (IOException | RuntimeException e) {
            reason = "connection to engine " + peer.name() + " at " + ch.remote() + " failed: " + e;
        }
        fail(reason);
    }

    /** Receives answers until the peer says goodbye (returns why) or the connection fails (throws). */
    private String receive() throws IOException {
        while (true) {
            InboundConnection.readHeader(ch, in);
            int op = Frame.op(in);
            long len = Frame.length(in);
            long req = Frame.request(in);
            switch (op) {
                case Frame.ACK -> {
                    Pending p = pending.remove(req);
                    if (p != null) p.complete(len);
                }
                case Frame.READ_DATA -> receiveData(req, len);
                case Frame.GOODBYE -> {
                    return "engine " + peer.name() + " at " + ch.remote() + " closed (it said goodbye)";
                }
                default -> throw new ProtocolException("malformed frame (" + Frame.name(op) + ", length " + len + ")");
            }
        }
    }

    private void receiveData(long req, long len) throws IOException {
        Pending p = pending.remove(req);
        if (p == null || !p.beginReceive()) {
            ch.discard(len);
            return;
        }
        if (!p.dst.isAccessibleBy(Thread.currentThread()) || !p.dst.scope().isAlive()) {
            ch.discard(len);
            p.fail("the buffer for a read of segment " + p.segment + " is confined to its thread or was freed before the data arrived;"
                    + " asynchronous reads need memory from a shared, global or automatic arena that stays alive until they complete");
            return;
        }
        if (len != p.length) {
            p.fail("engine " + peer.name() + " answered a read of " + p.length + " bytes with " + len);
            throw new ProtocolException("READ_DATA of " + len + " bytes for a read of " + p.length);
        }
        try {
            ch.readInto(p.dst, p.dstOffset, len);
        } catch (IOException | RuntimeException e) {
            p.fail("read from engine " + peer.name() + " failed mid-transfer: " + e);
            throw e;
        }
        p.complete(len);
    }

    /**
     * Marks the link dead for {@code reason}, closes the connection, fails every transfer waiting on
     * it and, unless this engine closed it, reports the peer gone. Idempotent.
     */
    public void fail(String reason) {
        synchronized (this) {
            if (failure != null) return;
            failure = reason;
        }
        ch.close();
        for (Pending p : pending.values()) {
            pending.remove(p.id);
            p.fail(unreachable(p.segment).getMessage());
        }
        if (!closedHere) sink.peerGone(peer.name(), peer.instanceId(), reason);
    }

    /** Says goodbye, closes the connection and joins the reader thread. */
    @Override
    public void close() {
        closedHere = true;
        if (failure == null && ch.lockWriter(Deadline.afterMillis(100))) {
            try {
                ch.writeFrame(Frame.encode(Frame.newHeader(), Frame.GOODBYE, 0, 0, 0, 0), null, 0, 0, Deadline.afterMillis(100));
            } catch (IOException ignored) {
                // the peer learns from the closed connection instead
            } finally {
                ch.unlockWriter();
            }
        }
        fail("engine " + self.name() + " closed the connection");
        if (reader.isAlive() && reader != Thread.currentThread()) {
            try {
                reader.join(5000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    @Override
    public String toString() { return "TcpPeerLink[" + self.name() + " -> " + peer + " at " + ch.remote() + (alive() ? "" : ", failed") + "]"; }

    /**
     * A request waiting for its answer. States: waiting → receiving (the reader is copying data into
     * {@code dst}) → done; or waiting → abandoned. Guarded by its monitor; the completion runs outside it.
     */
    public final class Pending implements TransferHandle {
        private static final int WAITING = 0, RECEIVING = 1, DONE = 2, ABANDONED = 3;

        final long id;
        final String segment;
        final MemorySegment dst;
        final long dstOffset;
        final long length;
        private final TransferCompletion completion;
        private int state;
        private String error;

        Pending(long id, String segment, MemorySegment dst, long dstOffset, long length, TransferCompletion completion) {
            this.id = id;
            this.segment = segment;
            this.dst = dst;
            this.dstOffset = dstOffset;
            this.length = length;
            this.completion = completion;
        }

        synchronized boolean beginReceive() {
            if (state != WAITING) return false;
            state = RECEIVING;
            return true;
        }

        void complete(long bytes) { finish(null, bytes); }

        void fail(String message) { finish(message, 0); }

        private void finish(String message, long bytes) {
            synchronized (this) {
                if (state == DONE || state == ABANDONED) return;
                error = message;
                state = DONE;
                notifyAll();
            }
            if (completion != null) {
                if (message == null) completion.completed(bytes); else completion.failed(message);
            }
        }

        /** True once an answer or a failure settled the request (not when it was abandoned first). */
        synchronized boolean done() { return state == DONE; }

        /** The failure message once done, null on success. */
        synchronized String error() { return error; }

        /** Waits until done; false at the deadline. */
        synchronized boolean await(Deadline deadline) {
            while (state != DONE) {
                if (deadline.expired()) return false;
                try {
                    wait(Math.min(deadline.remainingMillis(), 1000));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return false;
                }
            }
            return true;
        }

        @Override
        public void abandon() {
            pending.remove(id);
            if (waitWhileReceiving(ABANDON_GRACE_MILLIS)) return;
            // The data is arriving this very moment but has stalled: only closing the connection stops
            // the reader from writing into memory the caller is about to reuse.
            TcpPeerLink.this.fail("a read answer from engine " + peer.name() + " stalled mid-transfer for " + ABANDON_GRACE_MILLIS + " ms");
            waitWhileReceiving(5 * ABANDON_GRACE_MILLIS);
        }

        /** Abandons a waiting request or waits for a receiving one to finish; false when it is still receiving. */
        private synchronized boolean waitWhileReceiving(long millis) {
            if (state == WAITING) {
                state = ABANDONED;
                return true;
            }
            long end = System.nanoTime() + millis * 1_000_000L;
            while (state == RECEIVING) {
                long left = (end - System.nanoTime()) / 1_000_000L;
                if (left <= 0) return false;
                try {
                    wait(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return false;
                }
            }
            return true;
        }
    }
}
