package org.mooncake4j.transfer.etcd;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.net.URI;
import java.time.Duration;
import java.util.UUID;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStoreContract;
import org.mooncake4j.transfer.store.MetadataStores;
import org.mooncake4j.transfer.store.StoreException;

/**
 * The store contract for {@link EtcdStore} against a real etcd server; each test works under its own
 * prefix. Without the etcd binary every test is skipped (failed under CI) with how to install it.
 */
class EtcdStoreTest extends MetadataStoreContract {
    private static EtcdTestServer etcd;

    @BeforeAll
    static void startEtcd() {
        if (EtcdTestServer.findBinary() != null) etcd = EtcdTestServer.start();
    }

    @AfterAll
    static void stopEtcd() {
        if (etcd != null) etcd.close();
    }

    @Override
    protected MetadataStore newStore() {
        EtcdTestServer.requireBinary();
        return MetadataStores.open(etcd.storeUri("contract-" + UUID.randomUUID()), Duration.ofSeconds(5));
    }

    @Test
    void openByUriFindsTheEtcdProvider() {
        assertThat(store).isInstanceOf(EtcdStore.class);
        assertThat(store.uri()).startsWith("etcd://127.0.0.1:" + etcd.clientPort() + "/contract-");
    }

    @Test
    void keysLiveUnderThePrefixAndPrefixesAreIsolated() {
        String job = "iso-" + UUID.randomUUID();
        try (MetadataStore a = MetadataStores.open(etcd.storeUri(job + "/a"), Duration.ofSeconds(5));
             MetadataStore b = MetadataStores.open(etcd.storeUri(job + "/b"), Duration.ofSeconds(5));
             MetadataStore root = MetadataStores.open(URI.create("etcd://127.0.0.1:" + etcd.clientPort()), Duration.ofSeconds(5))) {
            a.set("k", bytes("from-a"));
            b.set("k", bytes("from-b"));
            a.set("k2", bytes("x"));
            assertThat(string(a.get("k").orElseThrow())).isEqualTo("from-a");
            assertThat(string(b.get("k").orElseThrow())).isEqualTo("from-b");
            assertThat(a.keys("")).containsExactly("k", "k2");
            assertThat(b.keys("")).containsExactly("k");
            assertThat(root.keys(job + "/")).as("the raw keys, seen from the root prefix").containsExactly(job + "/a/k", job + "/a/k2", job + "/b/k");
            assertThat(string(root.get(job + "/b/k").orElseThrow())).isEqualTo("from-b");
            assertThat(b.delete("k2")).as("a's key is not b's").isFalse();
        }
    }

    @Test
    void severalEndpointsWorkWhileOneIsDown() {
        int dead = org.mooncake4j.testkit.ProcessCluster.freePort();
        URI uri = URI.create("etcd://127.0.0.1:" + dead + ",127.0.0.1:" + etcd.clientPort() + "/multi-" + UUID.randomUUID());
        try (MetadataStore s = MetadataStores.open(uri, Duration.ofSeconds(5))) {
            for (int i = 0; i < 10; i++) {
                s.set("k" + i, bytes(Integer.toString(i)));
                assertThat(string(s.get("k" + i).orElseThrow())).isEqualTo(Integer.toString(i));
            }
        }
    }

    @Test
    void nonCounterValueFailsAddWithTheKey() {
        store.set("text", bytes("abc"));
        assertThatThrownBy(() -> store.add("text", 1))
                .isInstanceOf(StoreException.class)
                .hasMessageContaining("add to key 'text'")
                .hasMessageContaining(store.uri())
                .hasMessageContaining("not a decimal counter ('abc')");
    }

    @Test
    void badUrisAreExplained() {
        assertThatThrownBy(() -> EtcdStore.open(URI.create("etcd:///prefix"), Duration.ofSeconds(1)))
                .isInstanceOf(StoreException.class).hasMessageContaining("names no server");
        assertThatThrownBy(() -> EtcdStore.open(URI.create("etcd://127.0.0.1:notaport/p"), Duration.ofSeconds(1)))
                .isInstanceOf(StoreException.class).hasMessageContaining("Bad etcd endpoint '127.0.0.1:notaport'");
    }
}
