package org.mooncake4j.transfer.etcd;

import java.net.URI;
import java.time.Duration;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStoreProvider;

/**
 * Opens {@code etcd://host:port[,host:port]/prefix} URIs as {@link EtcdStore}s; registered for
 * {@link java.util.ServiceLoader}. Stateless and thread-safe; the caller owns each store it opens.
 */
public final class EtcdStoreProvider implements MetadataStoreProvider {
    @Override public String scheme() { return "etcd"; }

    @Override
    public MetadataStore open(URI uri, Duration operationTimeout) { return EtcdStore.open(uri, operationTimeout); }
}
