package org.mooncake4j.transfer.store;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayInputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.BindException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.locks.ReentrantLock;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.transfer.auth.GroupToken;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The embedded metadata store's server: an {@link InMemoryStore} served over TCP with the protocol
 * of {@link StoreWire}, for {@link EmbeddedStore} clients ({@code tcp://host:port}). The launcher
 * hosts one; rank 0 hosts one when started without the launcher.
 *
 * <p>Threading: one platform thread accepts connections; each connection has a virtual thread that
 * reads requests and answers the quick ones in order; each blocking request ({@code waitFor},
 * {@code awaitChange}) runs on its own virtual thread until the client's deadline, so it never holds
 * up other requests on the same connection. Answers are written under a per-connection lock. When a
 * connection closes, its blocking requests are interrupted.
 *
 * <p>Security: with a group token every connection must prove it holds the token (challenge-response,
 * see {@link StoreWire}) before any request of it is read; a client that fails is logged and
 * disconnected. Data is not encrypted.
 *
 * <p>Ownership: whoever calls {@link #start} owns the server and must {@link #close()} it, which
 * closes the listening socket and every connection. The state lives only in this process.
 */
public final class EmbeddedStoreServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(EmbeddedStoreServer.class);

    private final ServerSocket listener;
    private final String uri;
    private final InMemoryStore store;
    private final GroupToken token;
    private final Set<Connection> connections = ConcurrentHashMap.newKeySet();
    private final Thread acceptor;
    private volatile boolean closed;

    private EmbeddedStoreServer(ServerSocket listener, String host, GroupToken token) {
        this.listener = listener;
        this.token = token;
        this.uri = "tcp://" + (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + listener.getLocalPort();
        this.store = new InMemoryStore(uri);
        this.acceptor = Thread.ofPlatform().daemon().name("mooncake-store-accept-" + listener.getLocalPort()).unstarted(this::acceptLoop);
    }

    /**
     * Binds {@code bindHost:port} ({@code port} 0 = any free port; {@code 0.0.0.0} = every interface)
     * and starts serving, authenticating clients with the group token in env {@code MOONCAKE_TOKEN}
     * (none when it is unset or blank), as clients opened with {@link MetadataStores#open(java.net.URI, java.time.Duration)}
     * do. Throws {@link StoreException} when the address cannot be bound.
     */
    public static EmbeddedStoreServer start(String bindHost, int port) {
        return startWith(bindHost, port, GroupToken.fromEnvironment());
    }

    /**
     * Like {@link #start(String, int)}, with group token {@code token}: every client must prove it
     * holds it before it can read or write anything. {@code null} turns authentication off (and
     * clients that have a token refuse this server); a blank token is refused.
     */
    public static EmbeddedStoreServer start(String bindHost, int port, String token) {
        return startWith(bindHost, port, GroupToken.of(token));
    }

    private static EmbeddedStoreServer startWith(String bindHost, int port, GroupToken token) {
        ServerSocket s;
        try {
            s = new ServerSocket();
        } catch (IOException e) {
            throw new StoreException("Cannot create the metadata store's server socket: " + e.getMessage(), e);
        }
        try {
            s.setReuseAddress(true);
            s.bind(new InetSocketAddress(bindHost, port), 256);
        } catch (IOException e) {
            closeQuietly(s);
            String where = bindHost + ":" + port;
            String msg = String.valueOf(e.getMessage());
            if (e instanceof BindException && msg.toLowerCase().contains("in use")) {
                throw new StoreException("Cannot start the metadata store on " + where + ": bind address already in use (port " + port
                        + "). Choose another port (port 0 picks a free one) or stop the process using port " + port
                        + " (find it with: ss -ltnp 'sport = :" + port + "').", e);
            }
            throw new StoreException("Cannot start the metadata store on " + where + ": " + msg + ". Use an address of this host ("
                    + "0.0.0.0 for every interface) and a port from 0 to 65535.", e);
        }
        EmbeddedStoreServer server = new EmbeddedStoreServer(s, bindHost, token);
        server.acceptor.start();
        LOG.debug("metadata store serving at {}", server.uri);
        return server;
    }

    /** The port it listens on (the chosen one when started with port 0). */
    public int port() { return listener.getLocalPort(); }

    /** {@code tcp://bindHost:port}. */
    public String uri() { return uri; }

    /** The state it serves, for the hosting process's own use and for tests. */
    public InMemoryStore store() { return store; }

    @Override
    public void close() {
        closed = true;
        closeQuietly(listener);
        for (Connection c : connections) c.close();
        try {
            acceptor.join(2000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void acceptLoop() {
        while (!closed) {
            Socket socket;
            try {
                socket = listener.accept();
            } catch (IOException e) {
                if (!closed) LOG.warn("metadata store at {} stopped accepting connections: {}", uri, e.toString());
                return;
            }
            Connection c = new Connection(socket);
            connections.add(c);
            if (closed) {
                c.close();
                return;
            }
            Thread.ofVirtual().name("mooncake-store-conn-" + socket.getRemoteSocketAddress()).start(c::serve);
        }
    }

    private static void closeQuietly(AutoCloseable c) {
        try {
            c.close();
        } catch (Exception ignored) {
            // closing; nothing left to report to
        }
    }

    /** One client connection: reads requests, answers them, interrupts its waiters when it closes. */
    private final class Connection {
        private final Socket socket;
        private final ReentrantLock writeLock = new ReentrantLock();
        private final Set<Thread> waiters = ConcurrentHashMap.newKeySet();
        private volatile boolean gone;
        private DataOutputStream out;

        Connection(Socket socket) { this.socket = socket; }

        void serve() {
            try {
                socket.setTcpNoDelay(true);
                socket.setKeepAlive(true);
                DataInputStream in = new DataInputStream(new BufferedInputStream(socket.getInputStream()));
                out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));
                if (!handshake(in)) return;
                while (!gone) handle(StoreWire.readFrame(in));
            } catch (SocketTimeoutException e) {
                LOG.warn("metadata store at {}: {} did not complete the handshake within {} ms; closing it", uri, socket.getRemoteSocketAddress(),
                        StoreWire.HANDSHAKE_MILLIS);
            } catch (IOException e) {
                if (!gone && !closed && !(e instanceof java.io.EOFException) && !(e instanceof SocketException)) {
                    LOG.debug("metadata store at {}: connection from {} failed: {}", uri, socket.getRemoteSocketAddress(), e.toString());
                }
            } finally {
                close();
            }
        }

        /**
         * Checks the client speaks this protocol and authenticates it (see {@link StoreWire}); true
         * when requests may follow. Reads only fixed-size fields, with a timeout, so a client that
         * is not authenticated costs neither memory nor a thread for long.
         */
        private boolean handshake(DataInputStream in) throws IOException {
            socket.setSoTimeout(StoreWire.HANDSHAKE_MILLIS);
            int magic = in.readInt();
            int version = in.readInt();
            if (magic != StoreWire.MAGIC) {
                LOG.warn("metadata store at {}: {} is not a mooncake4j store client (wrong handshake); closing it", uri, socket.getRemoteSocketAddress());
                return false;
            }
            out.writeInt(StoreWire.MAGIC);
            out.writeInt(StoreWire.VERSION);
            if (version != StoreWire.VERSION) {
                out.flush();
                LOG.warn("metadata store at {}: client {} speaks protocol version {}, this store {}; closing it (run the same mooncake4j"
                        + " version everywhere)", uri, socket.getRemoteSocketAddress(), version, StoreWire.VERSION);
                return false;
            }
            byte[] serverNonce = GroupToken.nonce();
            out.writeByte(token == null ? 0 : StoreWire.FLAG_TOKEN);
            out.write(serverNonce);
            out.flush();
            byte clientFlags = in.readByte();
            byte[] clientNonce = new byte[GroupToken.NONCE_BYTES];
            in.readFully(clientNonce);
            byte[] proof = new byte[GroupToken.MAC_BYTES];
            in.readFully(proof);
            boolean clientHasToken = (clientFlags & StoreWire.FLAG_TOKEN) != 0;
            byte verdict = StoreWire.AUTH_OK;
            String why = null;
            if (token == null && clientHasToken) {
                verdict = StoreWire.AUTH_SERVER_HAS_NO_TOKEN;
                why = "the client has a group token, this store has none";
            } else if (token != null && !clientHasToken) {
                verdict = StoreWire.AUTH_CLIENT_HAS_NO_TOKEN;
                why = "the client has no group token, this store requires one";
            } else if (token != null && !token.verify(proof, StoreWire.CLIENT_LABEL, serverNonce, clientNonce)) {
                verdict = StoreWire.AUTH_BAD_PROOF;
                why = "wrong or missing group token";
            }
            out.writeByte(verdict);
            if (verdict != StoreWire.AUTH_OK) {
                out.flush();
                LOG.error("metadata store at {}: refused connection from {}: authentication failed ({})", uri, socket.getRemoteSocketAddress(), why);
                return false;
            }
            out.write(token == null ? new byte[GroupToken.MAC_BYTES] : token.mac(StoreWire.SERVER_LABEL, clientNonce, serverNonce));
            out.flush();
            socket.setSoTimeout(0);
            return true;
        }

        private void handle(byte[] frame) throws IOException {
            DataInputStream req = new DataInputStream(new ByteArrayInputStream(frame));
            long id = req.readLong();
            byte op = req.readByte();
            if (op == StoreWire.WAIT_FOR || op == StoreWire.AWAIT_CHANGE) {
                Thread t = Thread.ofVirtual().name("mooncake-store-wait-" + id).unstarted(() -> {
                    try {
                        answer(id, op, req);
                    } finally {
                        waiters.remove(Thread.currentThread());
                    }
                });
                waiters.add(t);
                t.start();
                if (gone) t.interrupt();
            } else {
                answer(id, op, req);
            }
        }

        /** Executes one request and writes its answer; failures of the store become ERROR answers. */
        private void answer(long id, byte op, DataInputStream req) {
            byte[] reply;
            try {
                try {
                    reply = execute(id, op, req);
                } catch (TimeoutException e) {
                    reply = StoreWire.frame(id, StoreWire.TIMEOUT, o -> StoreWire.writeString(o, e.getMessage()));
                } catch (RuntimeException e) {
                    if (gone) return;
                    String msg = e instanceof NumberFormatException ? "the value is not a decimal counter (" + e.getMessage() + ")" : e.toString();
                    reply = StoreWire.frame(id, StoreWire.ERROR, o -> StoreWire.writeString(o, msg));
                }
            } catch (IOException e) {
                close();
                return;
            }
            send(reply);
        }

        private byte[] execute(long id, byte op, DataInputStream req) throws IOException {
            switch (op) {
                case StoreWire.GET -> {
                    Optional<byte[]> v = store.get(StoreWire.readString(req));
                    return StoreWire.frame(id, StoreWire.OK, o -> StoreWire.writeBytes(o, v.orElse(null)));
                }
                case StoreWire.SET -> {
                    String key = StoreWire.readString(req);
                    store.set(key, StoreWire.readBytes(req));
                    return StoreWire.frame(id, StoreWire.OK, o -> { });
                }
                case StoreWire.CAS -> {
                    String key = StoreWire.readString(req);
                    byte[] expected = StoreWire.readBytes(req);
                    boolean done = store.compareAndSet(key, expected, StoreWire.readBytes(req));
                    return StoreWire.frame(id, StoreWire.OK, o -> o.writeBoolean(done));
                }
                case StoreWire.ADD -> {
                    String key = StoreWire.readString(req);
                    long v = store.add(key, req.readLong());
                    return StoreWire.frame(id, StoreWire.OK, o -> o.writeLong(v));
                }
                case StoreWire.DELETE -> {
                    boolean had = store.delete(StoreWire.readString(req));
                    return StoreWire.frame(id, StoreWire.OK, o -> o.writeBoolean(had));
                }
                case StoreWire.KEYS -> {
                    List<String> keys = store.keys(StoreWire.readString(req));
                    return StoreWire.frame(id, StoreWire.OK, o -> {
                        o.writeInt(keys.size());
                        for (String k : keys) StoreWire.writeString(o, k);
                    });
                }
                case StoreWire.WAIT_FOR -> {
                    Deadline deadline = deadline(req.readLong());
                    int n = req.readInt();
                    List<String> keys = new ArrayList<>(n);
                    for (int i = 0; i < n; i++) keys.add(StoreWire.readString(req));
                    Map<String, byte[]> values = store.waitFor(keys, deadline);
                    return StoreWire.frame(id, StoreWire.OK, o -> {
                        o.writeInt(values.size());
                        for (Map.Entry<String, byte[]> e : values.entrySet()) {
                            StoreWire.writeString(o, e.getKey());
                            StoreWire.writeBytes(o, e.getValue());
                        }
                    });
                }
                case StoreWire.AWAIT_CHANGE -> {
                    Deadline deadline = deadline(req.readLong());
                    String key = StoreWire.readString(req);
                    Optional<byte[]> v = store.awaitChange(key, StoreWire.readBytes(req), deadline);
                    return StoreWire.frame(id, StoreWire.OK, o -> StoreWire.writeBytes(o, v.orElse(null)));
                }
                default -> throw new IOException("unknown store op " + op + " from " + socket.getRemoteSocketAddress());
            }
        }

        private static Deadline deadline(long timeoutMillis) {
            return timeoutMillis < 0 ? Deadline.NEVER : Deadline.afterMillis(timeoutMillis);
        }

        private void send(byte[] reply) {
            writeLock.lock();
            try {
                if (!gone) StoreWire.writeFrame(out, reply);
            } catch (IOException e) {
                close();
            } finally {
                writeLock.unlock();
            }
        }

        void close() {
            if (gone) return;
            gone = true;
            connections.remove(this);
            closeQuietly(socket);
            for (Thread t : waiters) t.interrupt();
        }
    }
}
