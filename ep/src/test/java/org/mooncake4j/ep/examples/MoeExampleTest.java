package org.mooncake4j.ep.examples;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;

/**
 * The MoE example on three real JVMs: the expert-parallel layer matches the single-process reference,
 * then rank 2 is killed with SIGKILL between its dispatch and combine and the survivors' outputs match
 * the reference without rank 2's experts.
 */
class MoeExampleTest {
    private static final int RANKS = 3, TOKENS = 16, HIDDEN = 128, FFN = 256, PER_RANK = 2, TOPK = 3, STEPS = 4, FAIL_STEP = 2, VICTIM = 2;
    private static final long SEED = 11;

    @Test
    void survivorsOfARankKilledMidLayerMatchTheReferenceWithoutItsExperts() throws Exception {
        try (EmbeddedStoreServer store = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Map<String, String> env = Map.of("MOONCAKE_STORE", store.uri(), "MOONCAKE_STORE_HOSTED", "1", "MOONCAKE_TIMEOUT_MS", "10000");
            try (ProcessCluster c = ProcessCluster.start(MoeExample.class, RANKS, env, "--tokens", "" + TOKENS, "--hidden", "" + HIDDEN,
                    "--ffn", "" + FFN, "--experts-per-rank", "" + PER_RANK, "--topk", "" + TOPK, "--steps", "" + STEPS, "--fail-step", "" + FAIL_STEP,
                    "--victim", "" + VICTIM, "--death", "kill", "--seed", "" + SEED, "--timeout-us", "1000000")) {
                assertThat(c.awaitOutput(VICTIM, MoeExample.READY_TO_DIE, Duration.ofSeconds(90))).as("rank 2 dispatched step 2\n%s",
                        String.join("\n", c.output(VICTIM))).isTrue();
                long killedAt = System.nanoTime();
                c.kill(VICTIM);
                List<ProcessCluster.Result> all = c.awaitAll(Duration.ofSeconds(90));
                long afterKillMs = (System.nanoTime() - killedAt) / 1_000_000;
                List<ProcessCluster.Result> survivors = all.subList(0, VICTIM);
                MoeLayer layer = new MoeLayer(new MoeLayer.Config(HIDDEN, FFN, PER_RANK * RANKS, TOPK, SEED));
                for (ProcessCluster.Result r : survivors) {
                    assertThat(r.exitCode()).as(ProcessCluster.describe(all)).isZero();
                    Map<String, String> res = r.results();
                    assertThat(res.get("ok")).isEqualTo("true");
                    for (int s = 0; s < STEPS; s++) {
                        String p = "step" + s + ".";
                        assertThat(res.get(p + "mask")).as("rank %d step %d", r.rank(), s).isEqualTo(s < FAIL_STEP ? "[1, 1, 1]" : "[1, 1, 0]");
                        assertThat(res.get(p + "elements")).isEqualTo(Integer.toString(TOKENS * HIDDEN));
                        assertThat(res.get(p + "outsideBound")).isEqualTo("0");
                        assertThat(res.get(p + "bitIdentical")).isEqualTo(Integer.toString(TOKENS * HIDDEN));
                        double ratio = Double.parseDouble(res.get(p + "maxErrOverBound"));
                        assertThat(ratio).as("rank %d step %d: largest error / bf16 bound", r.rank(), s).isGreaterThan(0).isLessThanOrEqualTo(1);
                        long expectedDropped = s < FAIL_STEP ? 0 : tokensSelectingRank(layer, r.rank(), s, VICTIM);
                        assertThat(res.get(p + "droppedTokens")).as("rank %d step %d", r.rank(), s).isEqualTo(Long.toString(expectedDropped));
                        if (s >= FAIL_STEP) {
                            assertThat(expectedDropped).isPositive();
                            // the dropped contributions are real: far outside the bound of the full reference
                            assertThat(Double.parseDouble(res.get(p + "droppedDeviationOverBound"))).isGreaterThan(10);
                        }
                    }
                }
                assertThat(afterKillMs).as("the survivors finished %d ms after the kill (EP timeout 1 s)", afterKillMs).isLessThan(20_000);
            }
        }
    }

    /** How many of rank {@code rank}'s tokens in step {@code step} select an expert of rank {@code dead}, computed here from the seed. */
    private static long tokensSelectingRank(MoeLayer layer, int rank, int step, int dead) {
        try (Tensor x = layer.tokens(rank, step, TOKENS)) {
            MoeLayer.Routing r = layer.route(x);
            long count = 0;
            for (int t = 0; t < TOKENS; t++) {
                boolean hit = false;
                for (int k = 0; k < TOPK; k++) hit |= r.topkIdx()[t * TOPK + k] / PER_RANK == dead;
                if (hit) count++;
            }
            return count;
        }
    }

    @Test
    void theReferenceAndTheCombineArithmeticAgreeWithinTheBound() {
        MoeLayer layer = new MoeLayer(new MoeLayer.Config(HIDDEN, FFN, 6, TOPK, SEED));
        try (Tensor x = layer.tokens(0, 0, TOKENS)) {
            MoeLayer.Routing r = layer.route(x);
            for (int t = 0; t < TOKENS; t++) {
                float sum = 0;
                for (int k = 0; k < TOPK; k++) {
                    sum += r.topkWeights()[t * TOPK + k];
                    for (int q = 0; q < k; q++) assertThat(r.topkIdx()[t * TOPK + k]).isNotEqualTo(r.topkIdx()[t * TOPK + q]);
                    if (k > 0) assertThat(r.topkWeights()[t * TOPK + k]).isLessThanOrEqualTo(r.topkWeights()[t * TOPK + k - 1]);
                }
                assertThat(sum).isCloseTo(1f, org.assertj.core.data.Offset.offset(1e-6f));
            }
            float[] magnitude = new float[TOKENS * HIDDEN];
            float[] ref = layer.reference(x, r, e -> true, magnitude);
            // one rank (one partial per token), three ranks (up to three partials), six (one expert each)
            for (int ranks : new int[] {1, 3, 6}) {
                short[] bf = layer.combineArithmetic(x, r, e -> true, ranks);
                for (int i = 0; i < ref.length; i++) {
                    float got = org.mooncake4j.core.internal.FloatFormats.bf16ToFloat(bf[i]);
                    assertThat((double) Math.abs(got - ref[i])).as("%d ranks, element %d", ranks, i)
                            .isLessThanOrEqualTo(layer.tolerance(ref[i], magnitude[i]));
                }
            }
            assertThatThrownBy(() -> layer.combineArithmetic(x, r, e -> true, 4)).hasMessageContaining("multiple of numRanks (4)");
        }
    }
}
