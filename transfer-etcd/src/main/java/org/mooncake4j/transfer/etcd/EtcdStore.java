package org.mooncake4j.transfer.etcd;

import io.etcd.jetcd.ByteSequence;
import io.etcd.jetcd.Client;
import io.etcd.jetcd.KV;
import io.etcd.jetcd.KeyValue;
import io.etcd.jetcd.Watch;
import io.etcd.jetcd.common.exception.EtcdException;
import io.etcd.jetcd.kv.GetResponse;
import io.etcd.jetcd.kv.TxnResponse;
import io.etcd.jetcd.op.Cmp;
import io.etcd.jetcd.op.CmpTarget;
import io.etcd.jetcd.op.Op;
import io.etcd.jetcd.options.GetOption;
import io.etcd.jetcd.options.PutOption;
import io.etcd.jetcd.options.WatchOption;
import io.grpc.Status;
import java.io.IOException;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.StoreException;

/**
 * A {@link MetadataStore} in an etcd cluster (v3 API, through jetcd):
 * {@code etcd://host:port[,host:port...]/prefix}. Every key is stored under the prefix (the URI's
 * path, ending in {@code /}; {@code /} when it has none), so jobs sharing a cluster do not see each
 * other's keys; {@link #keys} returns keys without it.
 *
 * <p>{@link #compareAndSet} is one etcd transaction (an absent key has version 0); {@link #add} is a
 * compare-and-set retry loop on the key's modification revision. {@link #waitFor} and
 * {@link #awaitChange} read the keys, then watch from the revision they read, so no change between
 * the read and the watch is missed; they re-read at least every second as well. {@link #waitFor}
 * reads the keys one by one (a cluster limits the operations in one transaction), so each value is
 * the one it first saw.
 *
 * <p>Deadlines: every etcd request is awaited with a timeout (the operation timeout, or the earlier
 * call deadline, though a read that a blocking call starts gets at least 100 ms, so that a deadline
 * already due still reads once); a cluster that does not answer becomes a {@link StoreException} that
 * names the URI and what to check. Opening does not contact etcd: the first call reports an unreachable cluster.
 *
 * <p>Threading: thread-safe; all threads share one jetcd client. Ownership: the opener closes the
 * store, which shuts down the jetcd client (its channels and threads); the data stays in etcd.
 */
public final class EtcdStore implements MetadataStore {
    private static final int DEFAULT_PORT = 2379;
    private static final long RECHECK_MILLIS = 1000;
    private static final long WATCH_ERROR_PAUSE_MILLIS = 50;
    private static final long PROBE_BUDGET_NANOS = 200_000_000L;
    /** A read that a blocking call starts gets at least this long, so a deadline already due still reads once. */
    private static final long MIN_READ_NANOS = 100_000_000L;

    private final String uri;
    private final List<InetSocketAddress> endpoints;
    private final Duration operationTimeout;
    private final Client client;
    private final KV kv;
    private final Watch watch;

    /** The call's own deadline passed while an etcd request was in flight (never escapes this class). */
    private static final class CallDeadlinePassed extends RuntimeException {
        CallDeadlinePassed() { super(null, null, false, false); }
    }

    private EtcdStore(String uri, List<InetSocketAddress> endpoints, String prefix, Duration operationTimeout) {
        this.uri = uri;
        this.endpoints = endpoints;
        this.operationTimeout = operationTimeout;
        String[] urls = endpoints.stream().map(a -> "http://" + hostPort(a)).toArray(String[]::new);
        try {
            this.client = Client.builder().endpoints(urls).namespace(bytes(prefix)).build();
        } catch (RuntimeException e) {
            throw new StoreException("Error from etcd client: cannot create a client for " + uri + ": " + e.getMessage()
                    + ". Use etcd://host:port[,host:port]/prefix.", e);
        }
        this.kv = client.getKVClient();
        this.watch = client.getWatchClient();
    }

    /**
     * Opens {@code etcd://host:port[,host:port...]/prefix} (port 2379 when left out). The operation
     * timeout bounds every call without a deadline of its own.
     */
    public static EtcdStore open(URI uri, Duration operationTimeout) {
        if (operationTimeout.isNegative() || operationTimeout.isZero()) {
            throw new IllegalArgumentException("operation timeout must be positive, got " + operationTimeout);
        }
        if (!"etcd".equalsIgnoreCase(uri.getScheme())) {
            throw new StoreException("Not an etcd URI: '" + uri + "'. Use etcd://host:port[,host:port]/prefix.");
        }
        String authority = uri.getRawAuthority();
        if (authority == null || authority.isBlank()) {
            throw new StoreException("The etcd URI '" + uri + "' names no server. Use etcd://host:port[,host:port]/prefix.");
        }
        List<InetSocketAddress> endpoints = new ArrayList<>();
        for (String part : authority.split(",")) endpoints.add(parseEndpoint(part.trim(), uri));
        String prefix = uri.getPath() == null || uri.getPath().isEmpty() ? "/" : uri.getPath();
        if (!prefix.endsWith("/")) prefix += "/";
        return new EtcdStore(uri.toString(), List.copyOf(endpoints), prefix, operationTimeout);
    }

    private static InetSocketAddress parseEndpoint(String hostPort, URI uri) {
        String host = hostPort;
        String port = null;
        if (hostPort.startsWith("[")) {
            int end = hostPort.indexOf(']');
            if (end < 0) throw badEndpoint(hostPort, uri);
            host = hostPort.substring(1, end);
            String rest = hostPort.substring(end + 1);
            if (rest.startsWith(":")) port = rest.substring(1);
            else if (!rest.isEmpty()) throw badEndpoint(hostPort, uri);
        } else {
            int colon = hostPort.lastIndexOf(':');
            if (colon >= 0) {
                host = hostPort.substring(0, colon);
                port = hostPort.substring(colon + 1);
            }
        }
        if (host.isEmpty()) throw badEndpoint(hostPort, uri);
        try {
            int p = port == null ? DEFAULT_PORT : Integer.parseInt(port);
            if (p < 1 || p > 65535) throw badEndpoint(hostPort, uri);
            return InetSocketAddress.createUnresolved(host, p);
        } catch (NumberFormatException e) {
            throw badEndpoint(hostPort, uri);
        }
    }

    private static StoreException badEndpoint(String hostPort, URI uri) {
        return new StoreException("Bad etcd endpoint '" + hostPort + "' in '" + uri + "'. Use etcd://host:port[,host:port]/prefix.");
    }

    private static String hostPort(InetSocketAddress a) {
        String h = a.getHostString();
        return (h.indexOf(':') >= 0 ? "[" + h + "]" : h) + ":" + a.getPort();
    }

    @Override public String uri() { return uri; }

    @Override
    public Optional<byte[]> get(String key) {
        GetResponse r = await(kv.get(bytes(key)), "get of key '" + key + "'");
        return r.getKvs().isEmpty() ? Optional.empty() : Optional.of(r.getKvs().getFirst().getValue().getBytes());
    }

    @Override
    public void set(String key, byte[] value) {
        await(kv.put(bytes(key), ByteSequence.from(value)), "set of key '" + key + "'");
    }

    @Override
    public boolean compareAndSet(String key, byte[] expected, byte[] value) {
        ByteSequence k = bytes(key);
        Cmp cmp = expected == null
                ? new Cmp(k, Cmp.Op.EQUAL, CmpTarget.version(0))
                : new Cmp(k, Cmp.Op.EQUAL, CmpTarget.value(ByteSequence.from(expected)));
        TxnResponse r = await(kv.txn().If(cmp).Then(Op.put(k, ByteSequence.from(value), PutOption.DEFAULT)).commit(),
                "compareAndSet of key '" + key + "'");
        return r.isSucceeded();
    }

    @Override
    public long add(String key, long delta) {
        ByteSequence k = bytes(key);
        String what = "add to key '" + key + "'";
        Deadline opDeadline = Deadline.after(operationTimeout);
        GetResponse current = await(kv.get(k), what, opDeadline, Deadline.NEVER);
        int attempts = 0;
        while (true) {
            KeyValue kvp = current.getKvs().isEmpty() ? null : current.getKvs().getFirst();
            long next = (kvp == null ? 0 : parseCounter(kvp, what)) + delta;
            Cmp unchanged = kvp == null
                    ? new Cmp(k, Cmp.Op.EQUAL, CmpTarget.version(0))
                    : new Cmp(k, Cmp.Op.EQUAL, CmpTarget.modRevision(kvp.getModRevision()));
            TxnResponse r = await(kv.txn().If(unchanged)
                    .Then(Op.put(k, bytes(Long.toString(next)), PutOption.DEFAULT))
                    .Else(Op.get(k, GetOption.DEFAULT))
                    .commit(), what, opDeadline, Deadline.NEVER);
            if (r.isSucceeded()) return next;
            attempts++;
            if (opDeadline.expired()) {
                throw new StoreException("The " + what + " at " + uri + " did not succeed within " + format(operationTimeout.toNanos())
                        + ": other writers changed the counter first " + attempts + " times. Raise the operation timeout or add less often.");
            }
            current = r.getGetResponses().getFirst();
        }
    }

    private long parseCounter(KeyValue kvp, String what) {
        String text = kvp.getValue().toString(StandardCharsets.UTF_8);
        try {
            return Long.parseLong(text);
        } catch (NumberFormatException e) {
            throw new StoreException("The " + what + " at " + uri + " failed: the value is not a decimal counter ('" + text + "').", e);
        }
    }

    @Override
    public boolean delete(String key) {
        return await(kv.delete(bytes(key)), "delete of key '" + key + "'").getDeleted() > 0;
    }

    @Override
    public List<String> keys(String prefix) {
        GetOption keysWithPrefix = GetOption.builder().isPrefix(true).withKeysOnly(true).build();
        GetResponse r = await(kv.get(bytes(prefix), keysWithPrefix), "listing of keys with prefix '" + prefix + "'");
        List<String> keys = new ArrayList<>(r.getKvs().size());
        for (KeyValue kvp : r.getKvs()) keys.add(kvp.getKey().toString(StandardCharsets.UTF_8));
        keys.sort(null);
        return keys;
    }

    @Override
    public Map<String, byte[]> waitFor(List<String> keys, Deadline deadline) {
        List<String> missing = new ArrayList<>(new LinkedHashSet<>(keys));
        Map<String, byte[]> found = new HashMap<>();
        try {
            while (true) {
                long revision = 0;
                for (var it = missing.iterator(); it.hasNext(); ) {
                    String k = it.next();
                    GetResponse r = await(kv.get(bytes(k)), "get of key '" + k + "'", Deadline.after(operationTimeout), deadline);
                    if (!r.getKvs().isEmpty()) {
                        found.put(k, r.getKvs().getFirst().getValue().getBytes());
                        it.remove();
                    } else if (revision == 0) {
                        revision = r.getHeader().getRevision();
                    }
                }
                if (missing.isEmpty()) break;
                if (deadline.expired()) throw timedOut(missing);
                awaitEvent(missing.getFirst(), revision, deadline);
            }
        } catch (CallDeadlinePassed e) {
            throw timedOut(missing);
        } catch (InterruptedException e) {
            throw interrupted("waitFor of keys " + missing, e);
        }
        Map<String, byte[]> out = new LinkedHashMap<>();
        for (String k : keys) out.put(k, found.get(k));
        return out;
    }

    private TimeoutException timedOut(List<String> missing) {
        return new TimeoutException("Timed out waiting for store keys " + missing + " in " + uri
                + ": the processes that publish them have not started or have failed; check that every rank uses the same store URI"
                + " (prefix included) and world size.");
    }

    @Override
    public Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline) {
        byte[] seen = current;
        try {
            while (true) {
                GetResponse r = await(kv.get(bytes(key)), "get of key '" + key + "'", Deadline.after(operationTimeout), deadline);
                seen = r.getKvs().isEmpty() ? null : r.getKvs().getFirst().getValue().getBytes();
                if (!Arrays.equals(seen, current) || deadline.expired()) break;
                awaitEvent(key, r.getHeader().getRevision(), deadline);
            }
        } catch (CallDeadlinePassed e) {
            // the deadline passed during a read: the last value seen is the answer
        } catch (InterruptedException e) {
            throw interrupted("awaitChange of key '" + key + "'", e);
        }
        return Optional.ofNullable(seen == null ? null : seen.clone());
    }

    /**
     * Watches {@code key} for a change after {@code revision} and returns when one happens, when
     * the deadline passes, or after {@value #RECHECK_MILLIS} ms (the caller then reads again).
     */
    private void awaitEvent(String key, long revision, Deadline deadline) throws InterruptedException {
        CompletableFuture<Void> event = new CompletableFuture<>();
        WatchOption after = WatchOption.builder().withRevision(revision + 1).build();
        Watch.Listener listener = Watch.listener(r -> {
            if (!r.getEvents().isEmpty()) event.complete(null);
        }, event::completeExceptionally);
        Deadline until = deadline.min(Deadline.afterMillis(RECHECK_MILLIS));
        Watch.Watcher watcher = watch.watch(bytes(key), after, listener);
        try {
            event.get(until.remainingNanos(), TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            // nothing changed yet: the caller reads again, or stops at its deadline
        } catch (ExecutionException e) {
            // the watch failed (e.g. its revision was compacted): pause, then the caller reads again
            Thread.sleep(Duration.ofNanos(deadline.min(Deadline.afterMillis(WATCH_ERROR_PAUSE_MILLIS)).remainingNanos()));
        } finally {
            watcher.close();
        }
    }

    @Override
    public void close() { client.close(); }

    private static ByteSequence bytes(String s) { return ByteSequence.from(s, StandardCharsets.UTF_8); }

    private <T> T await(CompletableFuture<T> future, String what) {
        return await(future, what, Deadline.after(operationTimeout), Deadline.NEVER);
    }

    /**
     * Waits for an etcd answer until {@code opDeadline} (the operation timeout; a cluster silent until
     * then is unreachable) or {@code callDeadline} (then {@link CallDeadlinePassed}), whichever is
     * first. A little of the operation timeout is kept to probe the endpoints for the error message.
     */
    private <T> T await(CompletableFuture<T> future, String what, Deadline opDeadline, Deadline callDeadline) {
        long probeNanos = Math.min(PROBE_BUDGET_NANOS, operationTimeout.toNanos() / 5);
        Deadline waitUntil = new Deadline(opDeadline.nanoTime() - probeNanos);
        boolean callFirst = !callDeadline.isNever() && callDeadline.nanoTime() - waitUntil.nanoTime() < 0;
        long waitNanos = callFirst ? Math.min(Math.max(callDeadline.remainingNanos(), MIN_READ_NANOS), waitUntil.remainingNanos())
                : waitUntil.remainingNanos();
        try {
            return future.get(waitNanos, TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            future.cancel(true);
            if (callFirst) throw new CallDeadlinePassed();
            throw unreachable(what + ": no answer within " + format(operationTimeout.toNanos()) + " (" + probe(probeNanos) + ")", null);
        } catch (ExecutionException | CompletionException e) {
            throw failure(what, e.getCause() == null ? e : e.getCause());
        } catch (InterruptedException e) {
            future.cancel(true);
            throw interrupted(what, e);
        }
    }

    private StoreException interrupted(String what, InterruptedException e) {
        Thread.currentThread().interrupt();
        return new StoreException("Interrupted during the " + what + " in " + uri + ".", e);
    }

    private StoreException failure(String what, Throwable cause) {
        Status.Code code = cause instanceof EtcdException ee ? Status.Code.valueOf(ee.getErrorCode().name()) : Status.fromThrowable(cause).getCode();
        if (code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED) {
            return unreachable(what + ": " + rootMessage(cause), cause);
        }
        if (code == Status.Code.UNIMPLEMENTED || rootMessage(cause).contains("HTTP status code")) {
            return unreachable(what + ": the server that answered is not an etcd v3 client endpoint (an HTTP proxy, or another service on"
                    + " that port?): " + rootMessage(cause), cause);
        }
        return new StoreException("Error from etcd client: the " + what + " at " + uri + " failed: " + rootMessage(cause) + ".", cause);
    }

    private StoreException unreachable(String detail, Throwable cause) {
        return new StoreException("Error from etcd client: cannot reach etcd at " + uri + ": " + detail
                + ". Start etcd listening on an address peers can reach (e.g. etcd --listen-client-urls http://0.0.0.0:2379"
                + " --advertise-client-urls http://<this-host-ip>:2379), verify with curl http://" + hostPort(endpoints.getFirst())
                + "/version, and that no gRPC proxy is configured for this JVM (GRPC_PROXY_EXP, -Dhttps.proxyHost).", cause);
    }

    /** What a plain TCP connection to each endpoint finds, within {@code budgetNanos} in all. */
    private String probe(long budgetNanos) {
        long each = Math.max(1, budgetNanos / endpoints.size() / 1_000_000);
        List<String> found = new ArrayList<>();
        for (InetSocketAddress a : endpoints) {
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress(a.getHostString(), a.getPort()), (int) each);
                found.add(hostPort(a) + " accepts TCP connections but etcd did not answer: is it an etcd client port, and does the cluster have a leader?");
            } catch (ConnectException e) {
                found.add(hostPort(a) + ": connection refused");
            } catch (IOException e) {
                found.add(hostPort(a) + ": " + (e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage().toLowerCase()));
            }
        }
        return String.join("; ", found);
    }

    private static String rootMessage(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
            String m = c.getMessage() == null ? null : c.getMessage().strip().replaceAll("\\s*\\R\\s*", "; ");
            if (m != null && !m.isEmpty() && sb.indexOf(m) < 0) sb.append(sb.isEmpty() ? "" : ": ").append(m);
        }
        return sb.isEmpty() ? t.getClass().getSimpleName() : sb.toString();
    }

    /** A duration for messages: "300ms", "1.5s", "10s". */
    private static String format(long nanos) {
        long millis = nanos / 1_000_000;
        if (millis < 1000) return millis + "ms";
        long tenths = Math.round(millis / 100.0);
        return tenths % 10 == 0 ? tenths / 10 + "s" : tenths / 10 + "." + tenths % 10 + "s";
    }
}
