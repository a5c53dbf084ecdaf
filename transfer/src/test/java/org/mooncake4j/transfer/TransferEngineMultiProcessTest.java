package org.mooncake4j.transfer;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;
import org.mooncake4j.transfer.store.InMemoryStore;

/** Two real JVMs exchange 64 MiB over each forced transport, then one is killed with SIGKILL. */
class TransferEngineMultiProcessTest {

    @ParameterizedTest
    @ValueSource(strings = {"shm", "tcp"})
    void twoProcessesExchange64MiBAndTheSurvivorSeesAKillWithinASecond(String transport) throws Exception {
        try (EmbeddedStoreServer server = EmbeddedStoreServer.start("127.0.0.1", 0);
             ProcessCluster cluster = ProcessCluster.start(TransferPeerMain.class, 2,
                     Map.of("MOONCAKE_TRANSPORT", transport, "STORE_URI", server.uri()))) {
            InMemoryStore store = server.store();
            long pid0 = cluster.process(0).pid();
            long pid1 = cluster.process(1).pid();
            try {
                await(store, cluster, "rank1/idle");
                if (transport.equals("tcp")) {
                    await(store, cluster, "rank0/ready-for-stop");
                    cluster.signal(1, "STOP");
                    store.set("test/stopped", new byte[] {1});
                    await(store, cluster, "rank0/batch-done");
                    cluster.signal(1, "CONT");
                    store.set("test/continued", new byte[] {1});
                }
                await(store, cluster, "rank0/watching");
                cluster.kill(1);
                assertThat(cluster.awaitOutput(0, "PEER_FAILED rank1", Duration.ofSeconds(1)))
                        .as("rank 0 told of rank 1's death within 1 s\n" + String.join("\n", cluster.output(0))).isTrue();

                List<ProcessCluster.Result> results = cluster.awaitAll(Duration.ofSeconds(30));
                ProcessCluster.Result r0 = results.get(0);
                ProcessCluster.Result r1 = results.get(1);
                assertThat(r0.exitCode()).as(ProcessCluster.describe(results)).isZero();
                Map<String, String> a = r0.results();
                Map<String, String> b = r1.results();
                assertThat(a.get("transport")).isEqualTo(transport);
                assertThat(b.get("transport")).isEqualTo(transport);
                assertThat(a.get("received")).isEqualTo(b.get("sent"));
                assertThat(b.get("received")).isEqualTo(a.get("sent"));
                assertThat(a.get("sent")).isNotEqualTo(b.get("sent"));
                assertThat(a.get("aliveAfterKill")).isEqualTo("false");
                assertThat(a.get("writeAfterKill")).isEqualTo("failed");
                if (transport.equals("tcp")) {
                    assertThat(a.get("stoppedBatch")).isEqualTo("TIMEOUT");
                    assertThat(a.get("resumedBatch")).isEqualTo("COMPLETED");
                }
                System.out.println(transport + ": one-way 64 MiB write " + a.get("writeMBps") + " MB/s");
                assertThat(segmentFiles("rank0-" + pid0 + "-")).isEmpty();
            } finally {
                cluster.close();
                for (Path f : segmentFiles("rank1-" + pid1 + "-")) Files.deleteIfExists(f);
            }
        }
    }

    private static void await(InMemoryStore store, ProcessCluster cluster, String key) {
        try {
            store.waitFor(List.of(key), Deadline.afterMillis(60_000));
        } catch (RuntimeException e) {
            throw new AssertionError("waiting for " + key + ": " + e.getMessage() + "\n--- rank 0\n" + String.join("\n", cluster.output(0))
                    + "\n--- rank 1\n" + String.join("\n", cluster.output(1)), e);
        }
    }

    /** Segment files whose name continues "mooncake4j-" with {@code prefix} ("engine-pid-"), in /dev/shm and the temp directory. */
    private static List<Path> segmentFiles(String prefix) throws IOException {
        List<Path> out = new java.util.ArrayList<>();
        for (Path dir : List.of(Path.of("/dev/shm"), Path.of(System.getProperty("java.io.tmpdir")))) {
            if (!Files.isDirectory(dir)) continue;
            try (Stream<Path> s = Files.list(dir)) {
                s.filter(f -> f.getFileName().toString().startsWith("mooncake4j-" + prefix)).forEach(out::add);
            }
        }
        return out;
    }
}
