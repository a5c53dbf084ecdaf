package org.mooncake4j.transfer.store;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayInputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.NoRouteToHostException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.UnknownHostException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.transfer.auth.GroupToken;

/**
 * Client of an {@link EmbeddedStoreServer} ({@code tcp://host:port}).
 *
 * <p>Threading: thread-safe. All threads share one TCP connection; each call sends a request with
 * its own id and waits for the answer with that id, so a thread blocked in {@link #waitFor} or
 * {@link #awaitChange} does not hold up the others. A virtual thread reads the answers. When the
 * connection breaks, calls in flight fail with {@link StoreException}; the next call connects again,
 * retrying until its deadline.
 *
 * <p>Deadlines: calls without one use the operation timeout given to {@link #connect}; connecting is
 * part of it. Blocking calls send their deadline to the server, which answers by then; the client
 * gives the answer {@value #ANSWER_GRACE_MILLIS} ms to arrive and then fails the call.
 *
 * <p>Security: each connection proves this client holds the group token and checks that the server
 * holds it too, before any request is sent (see {@link StoreWire}); a refusal is a
 * {@link StoreException} saying which side lacks what, and is not retried.
 *
 * <p>Ownership: the caller of {@link #connect} owns the client and closes it; closing fails the
 * calls in flight. The server's state is not affected.
 */
public final class EmbeddedStore implements MetadataStore {
    /** How long after a blocking call's deadline the server's answer may take to arrive. */
    static final long ANSWER_GRACE_MILLIS = 250;
    private static final long MAX_CONNECT_ATTEMPT_MILLIS = 2000;

    private final String host;
    private final int port;
    private final String uri;
    private final Duration operationTimeout;
    private final GroupToken token;
    private final ReentrantLock connectLock = new ReentrantLock();
    private final AtomicLong ids = new AtomicLong();
    private volatile Link link;
    private volatile boolean closed;

    private EmbeddedStore(String host, int port, Duration operationTimeout, GroupToken token) {
        this.host = host;
        this.token = token;
        this.port = port;
        this.uri = "tcp://" + (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + port;
        this.operationTimeout = operationTimeout;
    }

    /**
     * Connects to the store at {@code host:port}, retrying until {@code operationTimeout} (ranks often
     * start before the store); the timeout then bounds every call without a deadline of its own.
     * Authenticates with the group token in env {@code MOONCAKE_TOKEN} (none when unset or blank).
     */
    public static EmbeddedStore connect(String host, int port, Duration operationTimeout) {
        return connectWith(host, port, operationTimeout, GroupToken.fromEnvironment());
    }

    /**
     * Like {@link #connect(String, int, Duration)}, authenticating with group token {@code token}
     * ({@code null}: none, and a server that has a token refuses this client; blank is refused).
     * A refusal fails at once, without retries: waiting does not fix a wrong token.
     */
    public static EmbeddedStore connect(String host, int port, Duration operationTimeout, String token) {
        return connectWith(host, port, operationTimeout, GroupToken.of(token));
    }

    private static EmbeddedStore connectWith(String host, int port, Duration operationTimeout, GroupToken token) {
        if (operationTimeout.isNegative() || operationTimeout.isZero()) {
            throw new IllegalArgumentException("operation timeout must be positive, got " + operationTimeout);
        }
        EmbeddedStore s = new EmbeddedStore(host, port, operationTimeout, token);
        s.link(Deadline.after(operationTimeout), System.nanoTime());
        return s;
    }

    @Override public String uri() { return uri; }

    @Override
    public Optional<byte[]> get(String key) {
        DataInputStream in = call(StoreWire.GET, "get of key '" + key + "'", opDeadline(), false, o -> StoreWire.writeString(o, key));
        return Optional.ofNullable(read(in, () -> StoreWire.readBytes(in)));
    }

    @Override
    public void set(String key, byte[] value) {
        call(StoreWire.SET, "set of key '" + key + "'", opDeadline(), false, o -> {
            StoreWire.writeString(o, key);
            StoreWire.writeBytes(o, value);
        });
    }

    @Override
    public boolean compareAndSet(String key, byte[] expected, byte[] value) {
        DataInputStream in = call(StoreWire.CAS, "compareAndSet of key '" + key + "'", opDeadline(), false, o -> {
            StoreWire.writeString(o, key);
            StoreWire.writeBytes(o, expected);
            StoreWire.writeBytes(o, value);
        });
        return read(in, in::readBoolean);
    }

    @Override
    public long add(String key, long delta) {
        DataInputStream in = call(StoreWire.ADD, "add to key '" + key + "'", opDeadline(), false, o -> {
            StoreWire.writeString(o, key);
            o.writeLong(delta);
        });
        return read(in, in::readLong);
    }

    @Override
    public boolean delete(String key) {
        DataInputStream in = call(StoreWire.DELETE, "delete of key '" + key + "'", opDeadline(), false, o -> StoreWire.writeString(o, key));
        return read(in, in::readBoolean);
    }

    @Override
    public List<String> keys(String prefix) {
        DataInputStream in = call(StoreWire.KEYS, "listing of keys with prefix '" + prefix + "'", opDeadline(), false, o -> StoreWire.writeString(o, prefix));
        return read(in, () -> {
            int n = in.readInt();
            List<String> keys = new ArrayList<>(n);
            for (int i = 0; i < n; i++) keys.add(StoreWire.readString(in));
            return keys;
        });
    }

    @Override
    public Map<String, byte[]> waitFor(List<String> keys, Deadline deadline) {
        DataInputStream in = call(StoreWire.WAIT_FOR, "waitFor of keys " + keys, deadline, true, o -> {
            o.writeLong(timeoutMillis(deadline));
            o.writeInt(keys.size());
            for (String k : keys) StoreWire.writeString(o, k);
        });
        return read(in, () -> {
            int n = in.readInt();
            Map<String, byte[]> values = new LinkedHashMap<>();
            for (int i = 0; i < n; i++) values.put(StoreWire.readString(in), StoreWire.readBytes(in));
            return values;
        });
    }

    @Override
    public Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline) {
        DataInputStream in = call(StoreWire.AWAIT_CHANGE, "awaitChange of key '" + key + "'", deadline, true, o -> {
            o.writeLong(timeoutMillis(deadline));
            StoreWire.writeString(o, key);
            StoreWire.writeBytes(o, current);
        });
        return Optional.ofNullable(read(in, () -> StoreWire.readBytes(in)));
    }

    @Override
    public void close() {
        connectLock.lock();
        try {
            closed = true;
            Link l = link;
            link = null;
            if (l != null) l.fail("the client was closed");
        } finally {
            connectLock.unlock();
        }
    }

    private Deadline opDeadline() { return Deadline.after(operationTimeout); }

    private static long timeoutMillis(Deadline deadline) {
        return deadline.isNever() ? -1 : deadline.remainingMillis();
    }

    /** Reads an answer's fields. */
    @FunctionalInterface
    private interface Reader<T> {
        T read() throws IOException;
    }

    private <T> T read(DataInputStream in, Reader<T> reader) {
        try {
            return reader.read();
        } catch (IOException e) {
            throw new StoreException("Malformed answer from the metadata store at " + uri + " (" + e.getMessage()
                    + "): check that client and server run the same mooncake4j version.", e);
        }
    }

    /**
     * Sends one request and waits for its answer until {@code deadline} ({@code blocking}: plus
     * {@link #ANSWER_GRACE_MILLIS}, since the server answers at the deadline). Returns the answer's
     * fields; ERROR answers become {@link StoreException}, TIMEOUT answers {@link TimeoutException}.
     */
    private DataInputStream call(byte op, String what, Deadline deadline, boolean blocking, StoreWire.Body body) {
        long started = System.nanoTime();
        Link l = link(deadline, started);
        long id = ids.incrementAndGet();
        byte[] frame;
        try {
            frame = StoreWire.frame(id, op, body);
        } catch (IOException e) {
            throw new StoreException("Cannot encode the " + what + " for " + uri + ": " + e.getMessage(), e);
        }
        CompletableFuture<byte[]> answer = l.register(id, what);
        l.send(frame);
        Deadline until = blocking && !deadline.isNever() ? new Deadline(deadline.nanoTime() + ANSWER_GRACE_MILLIS * 1_000_000L) : deadline;
        byte[] reply = await(l, id, answer, what, until, started);
        DataInputStream in = new DataInputStream(new ByteArrayInputStream(reply));
        byte status = read(in, () -> {
            in.readLong();
            return in.readByte();
        });
        return switch (status) {
            case StoreWire.OK -> in;
            case StoreWire.TIMEOUT -> throw new TimeoutException(read(in, () -> StoreWire.readString(in)));
            case StoreWire.ERROR -> throw new StoreException("The " + what + " failed in the metadata store at " + uri + ": "
                    + read(in, () -> StoreWire.readString(in)));
            default -> throw new StoreException("Malformed answer from the metadata store at " + uri + " (status " + status
                    + "): check that client and server run the same mooncake4j version.");
        };
    }

    private byte[] await(Link l, long id, CompletableFuture<byte[]> answer, String what, Deadline until, long started) {
        try {
            return until.isNever() ? answer.get() : answer.get(until.remainingNanos(), TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            l.forget(id);
            throw new StoreException("The metadata store at " + uri + " did not answer the " + what + " within "
                    + format(System.nanoTime() - started) + ". It is connected but not responding: check that the process hosting it"
                    + " (the launcher, or rank 0) is not stopped, swapping, or overloaded.");
        } catch (ExecutionException e) {
            StoreException cause = (StoreException) e.getCause();
            throw new StoreException(cause.getMessage(), cause);
        } catch (InterruptedException e) {
            l.forget(id);
            Thread.currentThread().interrupt();
            throw new StoreException("Interrupted while waiting for the " + what + " from the metadata store at " + uri + ".", e);
        }
    }

    /** The live connection, connecting (and retrying until {@code deadline}) when there is none. */
    private Link link(Deadline deadline, long started) {
        Link l = link;
        if (l != null && !l.failed) return l;
        connectLock.lock();
        try {
            if (closed) throw new StoreException("The metadata store client for " + uri + " is closed; open a new one.");
            l = link;
            if (l != null && !l.failed) return l;
            link = l = connectWithRetries(deadline, started);
            return l;
        } finally {
            connectLock.unlock();
        }
    }

    private Link connectWithRetries(Deadline deadline, long started) {
        long backoffMillis = 20;
        String cause;
        while (true) {
            long attemptMillis = Math.max(1, Math.min(deadline.remainingMillis(), MAX_CONNECT_ATTEMPT_MILLIS));
            Socket socket = new Socket();
            try {
                socket.connect(new InetSocketAddress(host, port), (int) attemptMillis);
                socket.setTcpNoDelay(true);
                socket.setKeepAlive(true);
                socket.setSoTimeout((int) attemptMillis);
                DataOutputStream out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));
                DataInputStream in = new DataInputStream(new BufferedInputStream(socket.getInputStream()));
                out.writeInt(StoreWire.MAGIC);
                out.writeInt(StoreWire.VERSION);
                out.flush();
                int magic = in.readInt();
                int version = in.readInt();
                if (magic != StoreWire.MAGIC) {
                    close(socket);
                    throw new StoreException("The server at " + uri + " answered, but it is not a mooncake4j metadata store. Check the"
                            + " address and port (an etcd server needs an etcd://host:port/prefix URI), and that no HTTP proxy or"
                            + " firewall intercepts the connection.");
                }
                if (version != StoreWire.VERSION) {
                    close(socket);
                    throw new StoreException("The metadata store at " + uri + " speaks protocol version " + version + ", this client "
                            + StoreWire.VERSION + ": run the same mooncake4j version everywhere.");
                }
                authenticate(socket, in, out);
                socket.setSoTimeout(0);
                return new Link(socket, in, out);
            } catch (IOException e) {
                close(socket);
                cause = describe(e);
            }
            if (deadline.expired()) break;
            try {
                Thread.sleep(Math.min(backoffMillis, deadline.remainingMillis()));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new StoreException("Interrupted while connecting to the metadata store at " + uri + ".", e);
            }
            if (deadline.expired()) break;
            backoffMillis = Math.min(backoffMillis * 2, 500);
        }
        throw new StoreException("Cannot reach the metadata store at " + uri + " (" + cause + ") after " + format(System.nanoTime() - started)
                + ". Check that the store is running (the launcher hosts it; rank 0 hosts it when started without the launcher),"
                + " that this address is reachable from this host (not another machine's loopback address), and that no firewall"
                + " or HTTP proxy is in the way.");
    }

    /**
     * The authentication part of the handshake (see {@link StoreWire}): proves this client holds the
     * token and checks the server's proof before any request is sent. Throws {@link StoreException}
     * (socket closed) on a refusal either way.
     */
    private void authenticate(Socket socket, DataInputStream in, DataOutputStream out) throws IOException {
        boolean serverHasToken = (in.readByte() & StoreWire.FLAG_TOKEN) != 0;
        byte[] serverNonce = new byte[GroupToken.NONCE_BYTES];
        in.readFully(serverNonce);
        byte[] clientNonce = GroupToken.nonce();
        out.writeByte(token == null ? 0 : StoreWire.FLAG_TOKEN);
        out.write(clientNonce);
        // a server without a token could not check a proof: it gets none (it refuses, and logs why)
        out.write(token == null || !serverHasToken ? new byte[GroupToken.MAC_BYTES] : token.mac(StoreWire.CLIENT_LABEL, serverNonce, clientNonce));
        out.flush();
        if (token != null && !serverHasToken) {
            close(socket);
            throw new StoreException("The metadata store at " + uri + " has no group token but this process has one: refusing to use it"
                    + " (authentication failed). " + GroupToken.ADVICE);
        }
        byte verdict = in.readByte();
        if (verdict != StoreWire.AUTH_OK) {
            close(socket);
            String why = switch (verdict) {
                case StoreWire.AUTH_CLIENT_HAS_NO_TOKEN -> " (this process has no group token, the store requires one)";
                case StoreWire.AUTH_SERVER_HAS_NO_TOKEN -> " (this process has a group token, the store has none)";
                default -> " (wrong group token)";
            };
            throw new StoreException("The metadata store at " + uri + " refused this connection: authentication failed" + why + ". "
                    + GroupToken.ADVICE);
        }
        byte[] serverProof = new byte[GroupToken.MAC_BYTES];
        in.readFully(serverProof);
        if (token != null && !token.verify(serverProof, StoreWire.SERVER_LABEL, clientNonce, serverNonce)) {
            close(socket);
            throw new StoreException("The metadata store at " + uri + " could not prove it holds the group token (an impostor, or another"
                    + " group's store, holds that address): refusing to use it (authentication failed). " + GroupToken.ADVICE);
        }
    }

    private static String describe(IOException e) {
        if (e instanceof ConnectException) return "connection refused";
        if (e instanceof SocketTimeoutException) return "no answer: connection timed out";
        if (e instanceof UnknownHostException) return "unknown host";
        if (e instanceof NoRouteToHostException) return "no route to host";
        if (e instanceof EOFException) return "the server closed the connection during the handshake";
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m.toLowerCase();
    }

    /** A duration for messages: "300ms", "1.5s", "10s". */
    static String format(long nanos) {
        long millis = nanos / 1_000_000;
        if (millis < 1000) return millis + "ms";
        long tenths = Math.round(millis / 100.0);
        return tenths % 10 == 0 ? tenths / 10 + "s" : tenths / 10 + "." + tenths % 10 + "s";
    }

    private static void close(Socket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // the socket is being discarded
        }
    }

    /** One TCP connection: the requests awaiting answers, and the virtual thread reading them. */
    private final class Link {
        private final Socket socket;
        private final DataInputStream in;
        private final DataOutputStream out;
        private final ReentrantLock writeLock = new ReentrantLock();
        private final Map<Long, Pending> pending = new ConcurrentHashMap<>();
        private volatile boolean failed;
        private volatile String failure;

        private record Pending(CompletableFuture<byte[]> answer, String what) {}

        Link(Socket socket, DataInputStream in, DataOutputStream out) {
            this.socket = socket;
            this.in = in;
            this.out = out;
            Thread.ofVirtual().name("mooncake-store-client-" + uri).start(this::readLoop);
        }

        CompletableFuture<byte[]> register(long id, String what) {
            CompletableFuture<byte[]> f = new CompletableFuture<>();
            pending.put(id, new Pending(f, what));
            if (failed) f.completeExceptionally(lost(what));
            return f;
        }

        void forget(long id) { pending.remove(id); }

        void send(byte[] frame) {
            writeLock.lock();
            try {
                StoreWire.writeFrame(out, frame);
            } catch (IOException e) {
                fail(describe(e));
            } finally {
                writeLock.unlock();
            }
        }

        private void readLoop() {
            try {
                while (!failed) {
                    byte[] frame = StoreWire.readFrame(in);
                    long id = new DataInputStream(new ByteArrayInputStream(frame)).readLong();
                    Pending p = pending.remove(id);
                    if (p != null) p.answer.complete(frame);
                }
            } catch (IOException e) {
                fail(e instanceof EOFException ? "the server closed the connection" : describe(e));
            }
        }

        /** Marks the connection broken, closes it, and fails every call waiting on it. */
        void fail(String why) {
            if (failed) return;
            failure = why;
            failed = true;
            close(socket);
            for (Long id : List.copyOf(pending.keySet())) {
                Pending p = pending.remove(id);
                if (p != null) p.answer.completeExceptionally(lost(p.what));
            }
        }

        private StoreException lost(String what) {
            if (closed) return new StoreException("The metadata store client for " + uri + " was closed during the " + what + ".");
            return new StoreException("Lost the connection to the metadata store at " + uri + " during the " + what + " (" + failure
                    + "). The store stopped or was killed, or the network failed: check the process hosting it (the launcher,"
                    + " or rank 0); the outcome of this call is unknown.");
        }
    }
}
