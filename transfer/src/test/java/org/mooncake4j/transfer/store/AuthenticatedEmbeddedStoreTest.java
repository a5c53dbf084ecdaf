package org.mooncake4j.transfer.store;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;

/** The store contract for {@link EmbeddedStore} over connections authenticated with a group token. */
class AuthenticatedEmbeddedStoreTest extends MetadataStoreContract {
    private static final String TOKEN = "contract-token";
    private final List<EmbeddedStoreServer> servers = new ArrayList<>();

    @Override
    protected MetadataStore newStore() {
        EmbeddedStoreServer server = EmbeddedStoreServer.start("127.0.0.1", 0, TOKEN);
        servers.add(server);
        return EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5), TOKEN);
    }

    @AfterEach
    void stopServers() {
        servers.forEach(EmbeddedStoreServer::close);
    }
}
