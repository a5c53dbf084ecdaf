package org.mooncake4j.cli;

import java.net.URI;
import java.net.URISyntaxException;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/**
 * Where the workers of a job meet: the metadata store they get as {@code MOONCAKE_STORE}, and the
 * {@code MASTER_ADDR}/{@code MASTER_PORT} that torchrun-style code expects. On the node that hosts
 * the embedded store (a single-node job, or node 0 of {@code --rdzv-endpoint}), this object runs it,
 * so that no rank is special and a dead rank 0 does not take the store down.
 *
 * <p>Ownership: it owns the hosted store server, if any; {@link #close()} stops it, which must come
 * after the workers are gone. Immutable otherwise; safe to read from any thread.
 */
final class Rendezvous implements AutoCloseable {
    /** torchrun's default {@code MASTER_PORT}. */
    static final int DEFAULT_PORT = 29500;

    private final String storeUri;
    private final String masterAddr;
    private final int masterPort;
    private final EmbeddedStoreServer hosted;

    private Rendezvous(String storeUri, String masterAddr, int masterPort, EmbeddedStoreServer hosted) {
        this.storeUri = storeUri;
        this.masterAddr = masterAddr;
        this.masterPort = masterPort;
        this.hosted = hosted;
    }

    /** A host and port as written in {@code --rdzv-endpoint}: {@code host:port}, {@code [v6addr]:port}, or a host alone (port 29500). */
    record Endpoint(String host, int port) {
        static Endpoint parse(String text) {
            String s = text.trim();
            String host;
            String port;
            if (s.startsWith("[")) {
                int close = s.indexOf(']');
                if (close < 0) throw new IllegalArgumentException("--rdzv-endpoint " + text + ": an IPv6 address needs a closing ']', e.g. [::1]:29500");
                host = s.substring(1, close);
                port = s.length() > close + 1 && s.charAt(close + 1) == ':' ? s.substring(close + 2) : null;
            } else {
                int colon = s.lastIndexOf(':');
                if (colon >= 0 && s.indexOf(':') != colon) {
                    throw new IllegalArgumentException("--rdzv-endpoint " + text + ": write an IPv6 address in brackets, e.g. [::1]:29500");
                }
                host = colon < 0 ? s : s.substring(0, colon);
                port = colon < 0 ? null : s.substring(colon + 1);
            }
            if (host.isEmpty()) throw new IllegalArgumentException("--rdzv-endpoint " + text + " has no host: write host:port, e.g. 10.0.0.1:29500");
            int p = DEFAULT_PORT;
            if (port != null) {
                try {
                    p = Integer.parseInt(port);
                } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("--rdzv-endpoint " + text + ": port '" + port + "' is not a number");
                }
                if (p < 0 || p > 65535) throw new IllegalArgumentException("--rdzv-endpoint " + text + ": port " + p + " is outside 0..65535");
            }
            return new Endpoint(host, p);
        }
    }

    /** A single-node job: the embedded store on the loopback interface, on a free port. */
    static Rendezvous hostLocal() { return host("127.0.0.1", 0); }

    /**
     * Resolves the {@code run} flags: {@code --store URI} uses that store and hosts nothing;
     * {@code --rdzv-endpoint host:port} hosts the embedded store there on node 0 and connects to it on
     * the other nodes; neither hosts it locally (single node only).
     */
    static Rendezvous resolve(String rdzvEndpoint, String store, int nodeRank, int nnodes) {
        if (store != null && rdzvEndpoint != null) {
            throw new IllegalArgumentException("Give either --store (an existing store) or --rdzv-endpoint (node 0 hosts the store there), not both");
        }
        if (store != null) return external(store);
        if (rdzvEndpoint != null) {
            Endpoint e = Endpoint.parse(rdzvEndpoint);
            if (nodeRank == 0) return host(e.host(), e.port());
            if (e.port() == 0) throw new IllegalArgumentException("--rdzv-endpoint " + rdzvEndpoint + ": nodes other than node 0 need node 0's real port, not 0");
            return new Rendezvous(storeUri(e.host(), e.port()), e.host(), e.port(), null);
        }
        if (nnodes > 1) {
            throw new IllegalArgumentException("--nnodes " + nnodes + " needs --rdzv-endpoint host:port (node 0 hosts the store there) "
                    + "or --store etcd://host:port/prefix, the same on every node");
        }
        return hostLocal();
    }

    private static Rendezvous external(String store) {
        URI uri;
        try {
            uri = new URI(store.trim());
        } catch (URISyntaxException e) {
            throw new IllegalArgumentException("--store " + store + " is not a URI: write tcp://host:port or etcd://host:port/prefix");
        }
        String scheme = uri.getScheme() == null ? "" : uri.getScheme().toLowerCase(java.util.Locale.ROOT);
        if (!scheme.equals("tcp") && !scheme.equals("etcd")) {
            throw new IllegalArgumentException("--store " + store + ": use tcp://host:port (a running embedded store) or etcd://host:port/prefix");
        }
        if (uri.getHost() == null) throw new IllegalArgumentException("--store " + store + " has no host: write " + scheme + "://host:port" + (scheme.equals("etcd") ? "/prefix" : ""));
        int port = uri.getPort() >= 0 ? uri.getPort() : scheme.equals("etcd") ? 2379 : DEFAULT_PORT;
        return new Rendezvous(uri.toString(), uri.getHost(), port, null);
    }

    private static Rendezvous host(String bindHost, int port) {
        EmbeddedStoreServer server = EmbeddedStoreServer.start(bindHost, port);
        return new Rendezvous(server.uri(), bindHost, server.port(), server);
    }

    private static String storeUri(String host, int port) {
        return "tcp://" + (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + port;
    }

    /** The value of {@code MOONCAKE_STORE}. */
    String storeUri() { return storeUri; }

    String masterAddr() { return masterAddr; }

    int masterPort() { return masterPort; }

    @Override
    public void close() {
        if (hosted != null) hosted.close();
    }

    @Override
    public String toString() { return storeUri + (hosted != null ? " (hosted here)" : ""); }
}
