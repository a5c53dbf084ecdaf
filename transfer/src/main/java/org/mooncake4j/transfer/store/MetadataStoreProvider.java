package org.mooncake4j.transfer.store;

import java.net.URI;
import java.time.Duration;

/** Opens stores of one URI scheme; found with {@link java.util.ServiceLoader} (the etcd module adds {@code etcd}). */
public interface MetadataStoreProvider {
    String scheme();

    MetadataStore open(URI uri, Duration operationTimeout);
}
