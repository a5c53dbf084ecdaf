package org.mooncake4j.transfer.store;

import java.net.URI;
import java.time.Duration;
import java.util.ServiceLoader;

/** Opens a store by URI: {@code tcp://host:port} (embedded) or {@code etcd://host:port[,host:port]/prefix}. */
public final class MetadataStores {
    private MetadataStores() {}

    public static MetadataStore open(URI uri, Duration operationTimeout) {
        String scheme = uri.getScheme() == null ? "" : uri.getScheme();
        for (MetadataStoreProvider p : ServiceLoader.load(MetadataStoreProvider.class)) {
            if (p.scheme().equalsIgnoreCase(scheme)) return p.open(uri, operationTimeout);
        }
        if (scheme.equalsIgnoreCase("etcd")) {
            throw new StoreException("No etcd support on the class path for " + uri
                    + ": add the mooncake4j-transfer-etcd module, or use the embedded store (tcp://host:port).");
        }
        throw new StoreException("Unknown metadata store URI '" + uri + "': use tcp://host:port (embedded store) or etcd://host:port/prefix.");
    }
}
