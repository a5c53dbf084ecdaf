package org.mooncake4j.ep;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/** Multi-process tests of EpBuffer: real JVMs, a real store and real shared memory, results checked bit for bit. */
class EpBufferTest {

    static List<ProcessCluster.Result> runRanks(int n, String scenario) throws Exception {
        return runRanks(n, scenario, 30_000);
    }

    static List<ProcessCluster.Result> runRanks(int n, String scenario, long groupTimeoutMs) throws Exception {
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> e = new HashMap<>();
            e.put("MOONCAKE_STORE", store.uri());
            e.put("MOONCAKE_STORE_HOSTED", "1");
            e.put("MOONCAKE_TIMEOUT_MS", Long.toString(groupTimeoutMs));
            try (ProcessCluster c = ProcessCluster.start(EpWorker.class, n, e, scenario)) {
                List<ProcessCluster.Result> results = c.awaitAll(Duration.ofSeconds(90));
                for (ProcessCluster.Result r : results) {
                    assertThat(r.exitCode()).as("rank %d exit code\n%s", r.rank(), ProcessCluster.describe(results)).isZero();
                }
                return results;
            }
        }
    }

    @ParameterizedTest(name = "{0} ranks")
    @ValueSource(ints = {2, 3})
    void dispatchAndCombineMatchTheReferenceBitForBitAndEveryBadInputGetsAClearError(int n) throws Exception {
        for (ProcessCluster.Result r : runRanks(n, "roundtrip")) {
            assertThat(Long.parseLong(r.results().get("checks"))).as("checks on rank %d", r.rank()).isEqualTo(2 * 10);
            assertThat(Long.parseLong(r.results().get("errors"))).as("errors on rank %d", r.rank()).isEqualTo(20);
        }
    }

    @Test
    void aRankAlreadyInactiveIsNeitherSentToNorWaitedFor() throws Exception {
        List<ProcessCluster.Result> results = runRanks(3, "inactive");
        for (ProcessCluster.Result r : results.subList(0, 2)) {
            assertThat(r.results().get("checks")).isEqualTo("6");
            assertThat(r.results().get("mask")).isEqualTo("[1, 1, 0]");
        }
    }

    @Test
    void aSourceThatDoesNotDispatchInTimeIsMarkedInactiveAndTheOthersGoOnWithTheRest() throws Exception {
        List<ProcessCluster.Result> results = runRanks(3, "late");
        for (ProcessCluster.Result r : results.subList(0, 2)) {
            assertThat(r.results().get("mask")).as("rank %d", r.rank()).isEqualTo("[1, 1, 0]");
            assertThat(r.results().get("checks")).isEqualTo("2");
            assertThat(Long.parseLong(r.results().get("ms"))).as("rank %d round time", r.rank()).isLessThan(1500);
        }
    }

    @Test
    void withoutAnEpTimeoutTheGroupTimeoutStillBoundsTheWaitForAMissingSource() throws Exception {
        List<ProcessCluster.Result> results = runRanks(3, "lateNoTimeout", 2000);
        for (ProcessCluster.Result r : results.subList(0, 2)) {
            assertThat(r.results().get("error")).as("rank %d", r.rank())
                    .isEqualTo("dispatch #1 on rank " + r.rank() + " failed: rank 2 did not send its dispatch within the group timeout of 2000 ms."
                            + " It is now 0 in activeRanks. With timeoutUs = -1 a lost or hung rank is an error; check its logs, and pass"
                            + " timeoutUs >= 0 to have dispatch go on without ranks that fail.");
            assertThat(r.results().get("mask")).isEqualTo("[1, 1, 0]");
            assertThat(Long.parseLong(r.results().get("ms"))).as("rank %d gave up after", r.rank()).isBetween(1900L, 2900L);
        }
    }

    @Test
    void survivorsOfARankKilledDuringDispatchReturnWithItMarkedInactive() throws Exception {
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> e = Map.of("MOONCAKE_STORE", store.uri(), "MOONCAKE_STORE_HOSTED", "1", "MOONCAKE_TIMEOUT_MS", "10000");
            try (ProcessCluster c = ProcessCluster.start(EpWorker.class, 3, e, "kill")) {
                assertThat(c.awaitOutput(2, "STUCK", Duration.ofSeconds(60))).as("rank 2 reached round 3").isTrue();
                Thread.sleep(200); // the survivors are waiting in round 3's dispatch
                long killedAt = System.nanoTime();
                c.kill(2);
                List<ProcessCluster.Result> results = c.awaitAll(Duration.ofSeconds(60)).subList(0, 2);
                for (ProcessCluster.Result r : results) {
                    assertThat(r.exitCode()).as(ProcessCluster.describe(results)).isZero();
                    assertThat(r.results().get("mask")).isEqualTo("[1, 1, 0]");
                    assertThat(r.results().get("checks")).isEqualTo("10");
                    long ms = (Long.parseLong(r.results().get("doneAtNanos")) - killedAt) / 1_000_000;
                    assertThat(ms).as("rank %d finished round 3 %d ms after the kill (timeout 20 s)", r.rank(), ms).isLessThan(5000);
                }
            }
        }
    }

    /**
     * The formula documented on {@link EpBuffer#sizeHint} and in the README, each term rounded up to 64 bytes:
     * {@code 128 R + 4 E + 4 E/R + E M align16(16 + 2 H) + 3 · E M 2 H + E M 4 ceil(H/128)}.
     */
    static long documentedSizeHint(long m, long h, long r, long e) {
        long[] terms = {128 * r, 4 * e, 4 * e / r, e * m * align(16 + 2 * h, 16), e * m * 2 * h, e * m * 2 * h, e * m * 2 * h,
                e * m * 4 * ((h + 127) / 128)};
        long sum = 0;
        for (long t : terms) sum += align(t, 64);
        return sum;
    }

    private static long align(long v, long a) { return (v + a - 1) / a * a; }

    @Test
    void sizeHintFollowsTheDocumentedFormula() {
        assertThat(EpBuffer.sizeHint(8, 256, 2, 6)).isEqualTo(documentedSizeHint(8, 256, 2, 6));
        // shapes where the 16- and 64-byte rounding and ceil(H/128) matter
        assertThat(EpBuffer.sizeHint(3, 100, 3, 9)).isEqualTo(documentedSizeHint(3, 100, 3, 9));
        assertThat(EpBuffer.sizeHint(1, 7, 5, 5)).isEqualTo(documentedSizeHint(1, 7, 5, 5));
        assertThat(EpBuffer.sizeHint(8, 7168, 8, 256)).isEqualTo(documentedSizeHint(8, 7168, 8, 256));
        assertThatThrownBy(() -> EpBuffer.sizeHint(8, 256, 3, 7)).hasMessageContaining("numExperts (7) must be a positive multiple of numRanks (3)");
        assertThatThrownBy(() -> EpBuffer.sizeHint(1 << 30, 1 << 30, 1, 1 << 30)).hasMessageContaining("need more than 2^63 bytes");
    }
}
