package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.etcd.EtcdTestServer;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/**
 * The seeds' elastic recovery protocol across real processes, on both stores: a killed rank is
 * replaced by an extension process that reuses its id; a reserved rank is added after
 * extendGroupSizeTo; subgroups and P2P work with the recovered ranks; and the mistakes of the
 * troubleshooting page fail with errors instead of hanging.
 */
class ElasticTest {
    /** A store URI for the test: a fresh embedded server, or a fresh key prefix on the shared etcd. */
    private interface StoreScope extends AutoCloseable {
        String uri();

        @Override
        void close();
    }

    private static StoreScope store(String kind) {
        if (kind.equals("etcd")) {
            EtcdTestServer etcd = EtcdTestServer.start();
            String uri = etcd.storeUri("elastic-" + UUID.randomUUID()).toString();
            return new StoreScope() {
                @Override public String uri() { return uri; }

                @Override public void close() { etcd.close(); }
            };
        }
        EmbeddedStoreServer s = EmbeddedStoreServer.start("127.0.0.1", 0);
        return new StoreScope() {
            @Override public String uri() { return s.uri(); }

            @Override public void close() { s.close(); }
        };
    }

    private static Map<String, String> env(String storeUri, String role, int joinRank, int maxWs, int initWorld) {
        Map<String, String> e = new HashMap<>();
        e.put("MOONCAKE_STORE", storeUri);
        e.put("MOONCAKE_STORE_HOSTED", "1");
        e.put("MOONCAKE_TIMEOUT_MS", "5000");
        e.put("ROLE", role);
        e.put("JOIN_RANK", Integer.toString(joinRank));
        e.put("MAX_WS", Integer.toString(maxWs));
        e.put("INIT_WORLD", Integer.toString(initWorld));
        return e;
    }

    @ParameterizedTest(name = "store {0}")
    @ValueSource(strings = {"embedded", "etcd"})
    void aKilledRankIsReplacedByAJoinerThatReusesItsId(String kind) throws Exception {
        try (StoreScope s = store(kind); ProcessCluster c = new ProcessCluster()) {
            for (int r = 0; r < 3; r++) c.startRank(ElasticWorker.class, r, 3, env(s.uri(), "healthy", 2, 3, 3));
            for (int r = 0; r < 3; r++) assertThat(c.awaitOutput(r, "ITER 50", Duration.ofSeconds(60))).as("rank %d looping", r).isTrue();
            c.kill(2);
            assertThat(c.awaitOutput(0, "DROPPED [2]", Duration.ofSeconds(30))).as("rank 0 saw rank 2 dropped").isTrue();
            // the mistakes of the troubleshooting page, against the running group
            int noext = c.startRank(ElasticWorker.class, 2, 3, env(s.uri(), "noext", 2, 3, 3));
            int maxws = c.startRank(ElasticWorker.class, 2, 3, env(s.uri(), "maxws", 2, 3, 3));
            int joiner = c.startRank(ElasticWorker.class, 2, 3, env(s.uri(), "joiner", 2, 3, 3));
            List<ProcessCluster.Result> all = c.awaitAll(Duration.ofSeconds(120));
            for (int i : new int[] {0, 1, noext, maxws, joiner}) {
                assertThat(all.get(i).exitCode()).as("process %d\n%s", i, ProcessCluster.describe(all)).isZero();
            }
            assertThat(all.get(noext).results().get("error")).contains("cannot start as a regular member").contains("isExtension=true");
            assertThat(all.get(maxws).results().get("error")).contains("max_world_size mismatch").contains("max_world_size 4").contains("has 3");
            for (int i : new int[] {0, 1, joiner}) {
                assertThat(all.get(i).results().get("mask")).as("process %d", i).isEqualTo("[1, 1, 1]");
                assertThat(all.get(i).results().get("epoch")).isEqualTo(all.get(0).results().get("epoch"));
                assertThat(all.get(i).results().get("subEpoch")).isEqualTo(all.get(0).results().get("subEpoch"));
            }
            assertThat(Long.parseLong(all.get(joiner).results().get("joinToFirstCollectiveMs"))).isLessThan(10_000);
            System.out.println("MEASURE joinToFirstCollectiveMs=" + all.get(joiner).results().get("joinToFirstCollectiveMs")
                    + " jvmStartToFirstCollectiveMs=" + all.get(joiner).results().get("jvmStartToFirstCollectiveMs"));
        }
    }

    @ParameterizedTest(name = "store {0}")
    @ValueSource(strings = {"embedded", "etcd"})
    void aReservedRankJoinsAfterExtendGroupSizeTo(String kind) throws Exception {
        try (StoreScope s = store(kind); ProcessCluster c = new ProcessCluster()) {
            for (int r = 0; r < 3; r++) c.startRank(ElasticWorker.class, r, 3, env(s.uri(), "healthy", 3, 4, 3));
            for (int r = 0; r < 3; r++) assertThat(c.awaitOutput(r, "READY", Duration.ofSeconds(60))).isTrue();
            int early = c.startRank(ElasticWorker.class, 3, 4, env(s.uri(), "early", 3, 4, 3));
            assertThat(c.awaitOutput(early, "RESULT error=", Duration.ofSeconds(60))).isTrue();
            int joiner = c.startRank(ElasticWorker.class, 3, 4, env(s.uri(), "joiner", 3, 4, 3));
            List<ProcessCluster.Result> all = c.awaitAll(Duration.ofSeconds(120));
            for (ProcessCluster.Result r : all) assertThat(r.exitCode()).as(ProcessCluster.describe(all)).isZero();
            assertThat(all.get(early).results().get("error")).contains("has not joined yet").contains("joinGroup()");
            for (int i : new int[] {0, 1, 2, joiner}) assertThat(all.get(i).results().get("mask")).isEqualTo("[1, 1, 1, 1]");
        }
    }
}
