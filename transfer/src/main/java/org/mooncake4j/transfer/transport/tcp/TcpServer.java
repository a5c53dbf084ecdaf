package org.mooncake4j.transfer.transport.tcp;

import java.io.IOException;
import java.net.BindException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.time.Duration;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.mooncake4j.transfer.TransferException;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.transport.LocalSegmentTable;
import org.mooncake4j.transfer.transport.PeerFailureSink;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The engine's listening socket. Peers that opened one of this engine's segments connect here; each
 * accepted connection gets its own reader thread ({@link InboundConnection}) that lands their frames
 * in the local segments, once the peer passed the handshake (group-token authentication when the
 * engine has a token, see {@link EngineHandshake}).
 *
 * <p>Threads: one acceptor plus one per connection, all stopped and joined by {@link #close()}.
 * Owned by the engine.
 */
public final class TcpServer implements AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(TcpServer.class);

    private final ServerSocketChannel server;
    private final EngineIdentity self;
    private final LocalSegmentTable segments;
    private final PeerFailureSink sink;
    private final Duration responseTimeout;
    private final GroupToken token;
    private final InetSocketAddress address;
    private final Set<InboundConnection> connections = ConcurrentHashMap.newKeySet();
    private final Thread acceptor;
    private volatile boolean closing;

    private TcpServer(ServerSocketChannel server, EngineIdentity self, LocalSegmentTable segments, PeerFailureSink sink,
                      Duration responseTimeout, GroupToken token) throws IOException {
        this.server = server;
        this.token = token;
        this.self = self;
        this.segments = segments;
        this.sink = sink;
        this.responseTimeout = responseTimeout;
        this.address = (InetSocketAddress) server.getLocalAddress();
        this.acceptor = Thread.ofPlatform().daemon().name("mooncake4j-" + self.name() + "-accept").unstarted(this::acceptLoop);
    }

    /**
     * Binds {@code host:port} (port 0 = any free port) and starts accepting.
     *
     * @param responseTimeout how long an answer (READ data, ACK) may wait for room on the connection
     *                        before the connection is given up
     */
    public static TcpServer start(EngineIdentity self, InetAddress host, int port, LocalSegmentTable segments,
                                  PeerFailureSink sink, Duration responseTimeout) {
        return start(self, host, port, segments, sink, responseTimeout, null);
    }

    /**
     * Like {@link #start(EngineIdentity, InetAddress, int, LocalSegmentTable, PeerFailureSink, Duration)},
     * and every connection must prove it holds {@code token} before a frame of it is applied (null:
     * no authentication, and clients that have a token are refused).
     */
    public static TcpServer start(EngineIdentity self, InetAddress host, int port, LocalSegmentTable segments,
                                  PeerFailureSink sink, Duration responseTimeout, GroupToken token) {
        ServerSocketChannel server = null;
        try {
            server = ServerSocketChannel.open();
            FrameChannel.configure(server, true);
            server.bind(new InetSocketAddress(host, port), 128);
            TcpServer s = new TcpServer(server, self, segments, sink, responseTimeout, token);
            s.acceptor.start();
            return s;
        } catch (BindException e) {
            closeQuietly(server);
            String m = String.valueOf(e.getMessage());
            if (m.toLowerCase(java.util.Locale.ROOT).contains("in use")) {
                throw new TransferException("Transfer engine " + self.name() + " cannot listen on " + host.getHostAddress() + ":" + port
                        + ": bind address already in use (port " + port + " is taken by another process or engine). Choose another port,"
                        + " or port 0 to let the system pick a free one, or stop the process that holds it (ss -ltnp 'sport = :" + port + "').", e);
            }
            throw new TransferException("Transfer engine " + self.name() + " cannot listen on " + host.getHostAddress() + ":" + port + ": " + m
                    + ". The host IP must be an address of this machine: set it with Mooncake.setHostIp/MOONCAKE_HOST_IP"
                    + " (ip -4 addr lists them), or leave it unset to pick one.", e);
        } catch (IOException e) {
            closeQuietly(server);
            throw new TransferException("Transfer engine " + self.name() + " cannot listen on " + host.getHostAddress() + ":" + port + ": " + e, e);
        }
    }

    private static void closeQuietly(ServerSocketChannel s) {
        if (s == null) return;
        try {
            s.close();
        } catch (IOException ignored) {
            // nothing was bound
        }
    }

    public InetSocketAddress address() { return address; }

    public int port() { return address.getPort(); }

    EngineIdentity self() { return self; }

    LocalSegmentTable segments() { return segments; }

    Duration responseTimeout() { return responseTimeout; }

    /** The group token connections must prove, or null. */
    GroupToken token() { return token; }

    boolean closing() { return closing; }

    /** Called by a connection's thread when it ends. */
    void ended(InboundConnection c, EngineIdentity peer, String reason) {
        connections.remove(c);
        if (peer != null && !closing) sink.peerGone(peer.name(), peer.instanceId(), reason);
    }

    private void acceptLoop() {
        while (!closing) {
            SocketChannel c;
            try {
                c = server.accept();
            } catch (ClosedChannelException e) {
                return;
            } catch (IOException e) {
                if (closing) return;
                log.warn("Engine {}: accepting a connection on {} failed: {}", self.name(), address, e.toString());
                continue;
            }
            try {
                InboundConnection in = new InboundConnection(this, FrameChannel.accepted(c));
                connections.add(in);
                if (closing) {
                    connections.remove(in);
                    in.close(false);
                    return;
                }
                in.start();
            } catch (IOException e) {
                log.warn("Engine {}: could not set up a connection from {}: {}", self.name(), c.socket().getRemoteSocketAddress(), e.toString());
                try {
                    c.close();
                } catch (IOException ignored) {
                    // already unusable
                }
            }
        }
    }

    /** Stops accepting, says goodbye on every connection, closes them and joins their threads. */
    @Override
    public void close() {
        closing = true;
        closeQuietly(server);
        join(acceptor);
        for (InboundConnection c : connections) c.close(true);
        for (InboundConnection c : connections) join(c.thread());
        connections.clear();
    }

    private static void join(Thread t) {
        if (t == null || t == Thread.currentThread()) return;
        try {
            t.join(5000);
            if (t.isAlive()) log.warn("Thread {} did not stop within 5 s", t.getName());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
