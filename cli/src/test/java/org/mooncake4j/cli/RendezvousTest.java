package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

class RendezvousTest {
    @Test
    void parsesEndpointsAsTorchrunWritesThem() {
        assertThat(Rendezvous.Endpoint.parse("10.0.0.1:29400")).isEqualTo(new Rendezvous.Endpoint("10.0.0.1", 29400));
        assertThat(Rendezvous.Endpoint.parse("node0")).isEqualTo(new Rendezvous.Endpoint("node0", 29500));
        assertThat(Rendezvous.Endpoint.parse("[::1]:1234")).isEqualTo(new Rendezvous.Endpoint("::1", 1234));
        assertThatThrownBy(() -> Rendezvous.Endpoint.parse("::1:1234")).hasMessageContaining("brackets");
        assertThatThrownBy(() -> Rendezvous.Endpoint.parse("host:http")).hasMessageContaining("not a number");
        assertThatThrownBy(() -> Rendezvous.Endpoint.parse(":80")).hasMessageContaining("no host");
    }

    @Test
    void nodeZeroHostsTheStoreAtTheEndpointAndOtherNodesOnlyPointThere() {
        int port = org.mooncake4j.testkit.ProcessCluster.freePort();
        try (Rendezvous host = Rendezvous.resolve("127.0.0.1:" + port, null, 0, 2);
             Rendezvous other = Rendezvous.resolve("127.0.0.1:" + port, null, 1, 2)) {
            assertThat(host.storeUri()).isEqualTo("tcp://127.0.0.1:" + port);
            assertThat(host.toString()).contains("hosted here");
            assertThat(other.storeUri()).isEqualTo(host.storeUri());
            assertThat(other.toString()).doesNotContain("hosted");
            assertThat(other.masterPort()).isEqualTo(port);
        }
    }

    @Test
    void anExternalStoreIsPassedThroughAndConflictingFlagsAreRefused() {
        try (Rendezvous r = Rendezvous.resolve(null, "etcd://10.1.2.3/job7", 0, 2)) {
            assertThat(r.storeUri()).isEqualTo("etcd://10.1.2.3/job7");
            assertThat(r.masterAddr()).isEqualTo("10.1.2.3");
            assertThat(r.masterPort()).isEqualTo(2379);
        }
        assertThatThrownBy(() -> Rendezvous.resolve("h:1", "etcd://h:2/p", 0, 1)).hasMessageContaining("not both");
        assertThatThrownBy(() -> Rendezvous.resolve(null, null, 0, 2)).hasMessageContaining("--rdzv-endpoint");
        assertThatThrownBy(() -> Rendezvous.resolve(null, "http://x:1", 0, 1)).hasMessageContaining("tcp://host:port");
    }
}
