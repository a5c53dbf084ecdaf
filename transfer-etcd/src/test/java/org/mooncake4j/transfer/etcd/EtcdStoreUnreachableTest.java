package org.mooncake4j.transfer.etcd;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.net.URI;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;
import org.mooncake4j.transfer.store.StoreException;

/** {@link EtcdStore} against an address where no etcd listens: every call ends by its deadline with what to do. */
class EtcdStoreUnreachableTest {
    @Test
    void unreachableEtcdFailsAtTheOperationTimeoutWithWhatToDo() {
        int port = ProcessCluster.freePort();
        String uri = "etcd://127.0.0.1:" + port + "/job";
        try (MetadataStore s = MetadataStores.open(URI.create(uri), Duration.ofSeconds(1))) {
            long start = System.nanoTime();
            assertThatThrownBy(() -> s.get("k"))
                    .isInstanceOf(StoreException.class)
                    .hasMessageStartingWith("Error from etcd client: cannot reach etcd at " + uri + ": get of key 'k': ")
                    .hasMessageContaining("127.0.0.1:" + port + ": connection refused")
                    .hasMessageContaining("Start etcd listening on an address peers can reach (e.g. etcd --listen-client-urls http://0.0.0.0:2379"
                            + " --advertise-client-urls http://<this-host-ip>:2379)")
                    .hasMessageContaining("verify with curl http://127.0.0.1:" + port + "/version")
                    .hasMessageEndingWith("and that no gRPC proxy is configured for this JVM (GRPC_PROXY_EXP, -Dhttps.proxyHost).");
            long tookMs = (System.nanoTime() - start) / 1_000_000;
            assertThat(tookMs).as("failed by the operation timeout, ms").isLessThan(1500);

            start = System.nanoTime();
            assertThatThrownBy(() -> s.waitFor(List.of("k"), Deadline.afterMillis(300)))
                    .as("a blocking call with an earlier deadline times out at it")
                    .isInstanceOf(TimeoutException.class)
                    .hasMessageContaining("[k]")
                    .hasMessageContaining(uri);
            assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(295).isLessThan(800);
        }
    }

    /** An HTTP proxy or another service on etcd's port: something answers, but not etcd's gRPC API. */
    @Test
    void somethingOtherThanEtcdOnThePortIsNamed() throws Exception {
        io.grpc.Server other = io.grpc.netty.NettyServerBuilder.forAddress(new java.net.InetSocketAddress("127.0.0.1", 0)).build().start();
        try {
            String uri = "etcd://127.0.0.1:" + other.getPort() + "/job";
            try (MetadataStore s = MetadataStores.open(URI.create(uri), Duration.ofSeconds(2))) {
                assertThatThrownBy(() -> s.get("k"))
                        .isInstanceOf(StoreException.class)
                        .hasMessageStartingWith("Error from etcd client: cannot reach etcd at " + uri + ": get of key 'k': the server that answered"
                                + " is not an etcd v3 client endpoint (an HTTP proxy, or another service on that port?): ")
                        .hasMessageEndingWith(". Start etcd listening on an address peers can reach (e.g. etcd --listen-client-urls"
                                + " http://0.0.0.0:2379 --advertise-client-urls http://<this-host-ip>:2379), verify with curl http://127.0.0.1:"
                                + other.getPort() + "/version, and that no gRPC proxy is configured for this JVM (GRPC_PROXY_EXP, -Dhttps.proxyHost).");
            }
        } finally {
            other.shutdownNow();
        }
    }
}
