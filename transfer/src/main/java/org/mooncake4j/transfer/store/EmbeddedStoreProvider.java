package org.mooncake4j.transfer.store;

import java.net.URI;
import java.time.Duration;

/**
 * Opens {@code tcp://host:port} URIs as {@link EmbeddedStore} clients; registered for
 * {@link java.util.ServiceLoader}. Stateless and thread-safe; the caller owns each store it opens.
 */
public final class EmbeddedStoreProvider implements MetadataStoreProvider {
    @Override public String scheme() { return "tcp"; }

    /** Opens {@code uri} authenticating with the group token in env {@code MOONCAKE_TOKEN} (none when unset or blank). */
    @Override
    public MetadataStore open(URI uri, Duration operationTimeout) {
        return EmbeddedStore.connect(host(uri), uri.getPort(), operationTimeout);
    }

    /** Opens {@code uri} authenticating with {@code token} ({@code null}: none). */
    @Override
    public MetadataStore open(URI uri, Duration operationTimeout, String token) {
        return EmbeddedStore.connect(host(uri), uri.getPort(), operationTimeout, token);
    }

    private static String host(URI uri) {
        String host = uri.getHost();
        if (host == null || uri.getPort() < 0) {
            throw new StoreException("Metadata store URI '" + uri + "' needs a host and a port: use tcp://host:port"
                    + " (the address the launcher or rank 0 prints for its store).");
        }
        return host.startsWith("[") && host.endsWith("]") ? host.substring(1, host.length() - 1) : host;
    }
}
