package org.mooncake4j.transfer.store;

import java.net.URI;
import java.time.Duration;

/** Opens stores of one URI scheme; found with {@link java.util.ServiceLoader} (the etcd module adds {@code etcd}). */
public interface MetadataStoreProvider {
    String scheme();

    MetadataStore open(URI uri, Duration operationTimeout);

    /**
     * Opens the store authenticating with group token {@code token} ({@code null}: none). The
     * default ignores the token: it is for stores whose authentication is their own business
     * (etcd), not the group token's.
     */
    default MetadataStore open(URI uri, Duration operationTimeout, String token) {
        return open(uri, operationTimeout);
    }
}
