package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;

import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/** Multi-process tests of the mooncake-cpu process group: real JVMs, a real store, real shared memory and sockets. */
class ProcessGroupTest {

    static List<ProcessCluster.Result> runRanks(int n, Map<String, String> env, Duration timeout, String... args) throws Exception {
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> e = new HashMap<>(env);
            e.put("MOONCAKE_STORE", store.uri());
            e.put("MOONCAKE_STORE_HOSTED", "1");
            try (ProcessCluster c = ProcessCluster.start(PgWorker.class, n, e, args)) {
                List<ProcessCluster.Result> results = c.awaitAll(timeout);
                for (ProcessCluster.Result r : results) {
                    assertThat(r.exitCode()).as("rank %d exit code\n%s", r.rank(), ProcessCluster.describe(results)).isZero();
                }
                return results;
            }
        }
    }

    /** Every rank ran the same number of checks and ended with bitwise-identical reduction results. */
    static void assertAgree(List<ProcessCluster.Result> results, long minChecks) {
        String crc = results.get(0).results().get("crc");
        for (ProcessCluster.Result r : results) {
            assertThat(Long.parseLong(r.results().get("checks"))).as("checks on rank %d", r.rank()).isGreaterThanOrEqualTo(minChecks);
            assertThat(r.results().get("crc")).as("result digest of rank %d vs rank 0", r.rank()).isEqualTo(crc);
        }
    }

    @ParameterizedTest(name = "{0} ranks")
    @ValueSource(ints = {2, 3, 4})
    void everyCollectiveDtypeAndOpMatchesTheReference(int n) throws Exception {
        assertAgree(runRanks(n, Map.of(), Duration.ofMinutes(4), "matrix", "small"), 500);
    }

    @ParameterizedTest(name = "{0} ranks")
    @ValueSource(ints = {2, 4})
    void messagesOf64MiBPipelineThroughTheStagingBanks(int n) throws Exception {
        assertAgree(runRanks(n, Map.of(), Duration.ofMinutes(4), "large"), 10);
    }

    @ParameterizedTest(name = "transport {0}")
    @ValueSource(strings = {"shm", "tcp"})
    void eachTransportForcedCarriesEveryCollective(String transport) throws Exception {
        assertAgree(runRanks(3, Map.of("MOONCAKE_TRANSPORT", transport), Duration.ofMinutes(3), "matrix", "tiny"), 100);
        assertAgree(runRanks(2, Map.of("MOONCAKE_TRANSPORT", transport), Duration.ofMinutes(3), "large"), 10);
    }

    @Test
    void pointToPointKeepsOrderPerTagAndMatchesTags() throws Exception {
        assertAgree(runRanks(3, Map.of(), Duration.ofMinutes(2), "p2p"), 4);
    }

    @Test
    void severalAsyncOperationsInFlightCompleteInOrder() throws Exception {
        assertAgree(runRanks(3, Map.of(), Duration.ofMinutes(2), "async"), 10);
    }

    @Test
    void subgroupsHaveTheirOwnSequencesAndP2P() throws Exception {
        assertAgree(runRanks(4, Map.of(), Duration.ofMinutes(2), "subgroups"), 5);
    }

    @Test
    void badInputGetsAClearErrorAndLeavesTheGroupUsable() throws Exception {
        assertAgree(runRanks(2, Map.of(), Duration.ofMinutes(2), "badinput"), 11);
    }

    @Test
    void survivorsOfAKilledPeerAgreeAndGoOnWithTheSumOverTheAgreedMask() throws Exception {
        killRankTwoOfThree("killloop", "ITER 200", Duration.ofSeconds(60), 100);
    }

    @ParameterizedTest(name = "{0} ranks")
    @ValueSource(ints = {2, 3, 4})
    void largeAllReducesOverRegisteredMemoryAreReadInPlaceAndExact(int n) throws Exception {
        List<ProcessCluster.Result> results = runRanks(n, Map.of(), Duration.ofMinutes(4), "registered");
        assertAgree(results, 23);
        // 15 dtype/op/size cases over 64 KiB and 6 reuses read in place (bf16 at 20000 elements is one-shot; the mixed case falls back); with 3 or more ranks the even ranks also ran the subgroup's
        for (ProcessCluster.Result r : results) {
            assertThat(Long.parseLong(r.results().get("inplace"))).as("in-place all-reduces on rank %d", r.rank()).isEqualTo(r.rank() % 2 == 0 && n > 2 ? 22 : 21);
        }
    }

    @Test
    void registeredMemoryOnOneThreadPerRankGivesTheSameResults() throws Exception {
        List<ProcessCluster.Result> results = runRanks(2, Map.of("MOONCAKE_CPU_THREADS", "3"), Duration.ofMinutes(4), "registered");
        assertAgree(results, 23);
        for (ProcessCluster.Result r : results) assertThat(Long.parseLong(r.results().get("inplace"))).isEqualTo(21);
    }

    @Test
    void survivorsOfAPeerKilledInARegisteredAllReduceAgree() throws Exception {
        killRankTwoOfThree("killregistered", "ITER 50", Duration.ofSeconds(90), 80);
    }

    /**
     * Runs {@code scenario} on 3 ranks, kills rank 2 once every rank printed {@code looping}, and checks
     * that the survivors finish the operation in flight within the 5 s timeout, drop exactly rank 2,
     * agree on the epoch and on every result after it.
     */
    @Test
    void survivorsRedoAnAllReduceReducedInPlaceFromTheirRestoredInputs() throws Exception {
        // rank 2 halts after reducing its part of the 20th all-reduce: the survivors have overwritten theirs and
        // never pass the barrier, so they redo over [0, 1], each first putting its part back from the scratch
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> e = Map.of("MOONCAKE_STORE", store.uri(), "MOONCAKE_STORE_HOSTED", "1", "MOONCAKE_TIMEOUT_MS", "5000");
            try (ProcessCluster c = ProcessCluster.start(PgWorker.class, 3, e, "haltinplace")) {
                List<ProcessCluster.Result> all = c.awaitAll(Duration.ofSeconds(90));
                assertThat(all.get(2).exitCode()).as(ProcessCluster.describe(all)).isEqualTo(3);
                List<ProcessCluster.Result> results = all.subList(0, 2);
                for (ProcessCluster.Result res : results) {
                    assertThat(res.exitCode()).as(ProcessCluster.describe(results)).isZero();
                    assertThat(res.results().get("dropped")).isEqualTo("[2]");
                    assertThat(res.results().get("mask")).isEqualTo("[1, 1, 0]");
                    assertThat(Long.parseLong(res.results().get("inplace"))).as("registered all-reduces on rank %d", res.rank()).isGreaterThanOrEqualTo(49);
                }
                assertAgree(results, 49);
            }
        }
    }

    private static void killRankTwoOfThree(String scenario, String looping, Duration wait, long minChecks) throws Exception {
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> e = Map.of("MOONCAKE_STORE", store.uri(), "MOONCAKE_STORE_HOSTED", "1", "MOONCAKE_TIMEOUT_MS", "5000");
            try (ProcessCluster c = ProcessCluster.start(PgWorker.class, 3, e, scenario)) {
                for (int r = 0; r < 3; r++) assertThat(c.awaitOutput(r, looping, wait)).as("rank %d looping", r).isTrue();
                long killedAt = System.nanoTime();
                c.kill(2);
                List<ProcessCluster.Result> results = c.awaitAll(wait).subList(0, 2);
                for (ProcessCluster.Result res : results) {
                    assertThat(res.exitCode()).as(ProcessCluster.describe(results)).isZero();
                    assertThat(res.results().get("dropped")).isEqualTo("[2]");
                    assertThat(res.results().get("mask")).isEqualTo("[1, 1, 0]");
                    long ms = (Long.parseLong(res.results().get("completedAtNanos")) - killedAt) / 1_000_000;
                    assertThat(ms).as("rank %d completed the op in flight %d ms after the kill", res.rank(), ms).isLessThan(5000);
                }
                assertThat(results.get(0).results().get("epoch")).isEqualTo(results.get(1).results().get("epoch"));
                assertAgree(results, minChecks);
            }
        }
    }

    @Test
    void utilitiesShareACallerOwnedEngineThatOutlivesTheGroups() throws Exception {
        List<ProcessCluster.Result> results = runRanks(2, Map.of(), Duration.ofMinutes(2), "utilities");
        for (ProcessCluster.Result r : results) {
            assertThat(r.results().get("engineUsableAfterClose")).isEqualTo("true");
            assertThat(r.results().get("preferredPeer")).isEqualTo("shm");
        }
    }
}
