package org.mooncake4j.transfer.store;

import java.net.URI;
import java.time.Duration;
import java.util.ServiceLoader;

/** Opens a store by URI: {@code tcp://host:port} (embedded) or {@code etcd://host:port[,host:port]/prefix}. */
public final class MetadataStores {
    private MetadataStores() {}

    /**
     * Opens {@code uri}; the embedded store ({@code tcp://}) authenticates with the group token in env
     * {@code MOONCAKE_TOKEN} (none when unset or blank).
     */
    public static MetadataStore open(URI uri, Duration operationTimeout) {
        return provider(uri).open(uri, operationTimeout);
    }

    /**
     * Opens {@code uri}; the embedded store ({@code tcp://}) authenticates with group token
     * {@code token} ({@code null}: none). etcd ignores it (etcd's own authentication is not the group token's).
     */
    public static MetadataStore open(URI uri, Duration operationTimeout, String token) {
        return provider(uri).open(uri, operationTimeout, token);
    }

    private static MetadataStoreProvider provider(URI uri) {
        String scheme = uri.getScheme() == null ? "" : uri.getScheme();
        for (MetadataStoreProvider p : ServiceLoader.load(MetadataStoreProvider.class)) {
            if (p.scheme().equalsIgnoreCase(scheme)) return p;
        }
        if (scheme.equalsIgnoreCase("etcd")) {
            throw new StoreException("No etcd support on the class path for " + uri
                    + ": add the mooncake4j-transfer-etcd module, or use the embedded store (tcp://host:port).");
        }
        throw new StoreException("Unknown metadata store URI '" + uri + "': use tcp://host:port (embedded store) or etcd://host:port/prefix.");
    }
}
