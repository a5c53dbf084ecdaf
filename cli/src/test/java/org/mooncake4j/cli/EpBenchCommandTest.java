package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.within;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Real multi-process runs: epbench launches two worker JVMs, each with an EpBuffer on the CPU path. */
class EpBenchCommandTest {
    private static final int TOKENS = 16, HIDDEN = 256, TOPK = 4, EXPERTS = 8, ITERS = 12;

    @TempDir
    Path dir;

    @ParameterizedTest(name = "{0}: {1} bytes per dispatched selection")
    @CsvSource({"--fp8, 280", "--no-fp8, 528"})
    @SuppressWarnings("unchecked")
    void timesAndBandwidthsAreConsistentWithTheBytesMoved(String fp8, long dispatchBytes) throws Exception {
        Path json = dir.resolve("ep.json");
        Object[] r = PgBenchCommandTest.execute("epbench", "-g", "2", "--tokens", "" + TOKENS, "--hidden", "" + HIDDEN, "--topk", "" + TOPK,
                "--experts", "" + EXPERTS, fp8, "--iters", "" + ITERS, "--warmup", "3", "--timeout-s", "60", "--json", json.toString());
        String stdout = (String) r[1];
        assertThat((int) r[0]).as(stdout + r[2]).isZero();
        Map<String, Object> res = (Map<String, Object>) Json.parse(Files.readString(json));
        assertThat(res).containsEntry("ranks", 2L).containsEntry("tokens", (long) TOKENS).containsEntry("hidden", (long) HIDDEN)
                .containsEntry("topk", (long) TOPK).containsEntry("experts", (long) EXPERTS).containsEntry("fp8", fp8.equals("--fp8"))
                .containsEntry("valid_selections_per_rank", (long) TOKENS * TOPK);
        // FP8: hidden + hidden/128*4 + 16 = 256 + 8 + 16; BF16: 2*hidden + 16; combine: 2*hidden
        Map<String, Object> d = (Map<String, Object>) res.get("dispatch"), c = (Map<String, Object>) res.get("combine");
        assertThat(d).containsEntry("bytes_per_selection", dispatchBytes).containsEntry("selections", (long) TOKENS * TOPK);
        assertThat(c).containsEntry("bytes_per_selection", 2L * HIDDEN).containsEntry("selections", (long) TOKENS * TOPK);
        for (Map<String, Object> p : List.of(d, c)) {
            List<Object> us = (List<Object>) p.get("us");
            assertThat(us).hasSize(ITERS).allSatisfy(v -> assertThat((Double) v).isPositive().isLessThan(5e6));
            double median = (Double) p.get("median_us"), mean = (Double) p.get("mean_us"), min = (Double) p.get("min_us");
            double[] sorted = us.stream().mapToDouble(v -> (Double) v).sorted().toArray();
            assertThat(median).isEqualTo((sorted[ITERS / 2 - 1] + sorted[ITERS / 2]) / 2);
            assertThat(mean).isCloseTo(java.util.Arrays.stream(sorted).average().orElseThrow(), within(1e-9 * mean));
            assertThat(min).isEqualTo(sorted[0]).isPositive().isLessThanOrEqualTo(median);
            long bytes = (Long) p.get("bytes_per_selection") * (Long) p.get("selections");
            assertThat((Double) p.get("gbps_median")).isPositive().isCloseTo(bytes / median / 1e3, within(1e-12 * bytes / median));
            assertThat((Double) p.get("gbps_mean")).isCloseTo(bytes / mean / 1e3, within(1e-12 * bytes / mean));
            String name = p == d ? "dispatch" : "combine";
            assertThat(stdout).containsPattern("(?m)^" + name + " +\\| +" + p.get("bytes_per_selection") + " \\| +" + TOKENS * TOPK + " \\| +"
                    + String.format(Locale.ROOT, "%.2f", median) + " \\| +" + String.format(Locale.ROOT, "%.2f", mean) + " \\| ");
        }
        Map<String, Object> sum = (Map<String, Object>) res.get("dispatch_combine");
        assertThat((Double) sum.get("min_us")).isGreaterThanOrEqualTo((Double) d.get("min_us") + (Double) c.get("min_us") - 1e-9);
        // each iteration's sum lies between the phases' minima and maxima summed (a median of sums has
        // no bound in the medians themselves: one slow phase in half the iterations can double it)
        double maxD = ((List<Object>) d.get("us")).stream().mapToDouble(v -> (Double) v).max().orElseThrow();
        double maxC = ((List<Object>) c.get("us")).stream().mapToDouble(v -> (Double) v).max().orElseThrow();
        assertThat((Double) sum.get("median_us")).isPositive().isLessThanOrEqualTo(maxD + maxC + 1e-9)
                .isGreaterThanOrEqualTo((Double) sum.get("min_us"));
        // the back-to-back loop times the same calls without the per-iteration barrier (noisy CPU hosts:
        // only its sign, its bound and its line are checked)
        double loop = (Double) res.get("loop_us_per_iteration");
        assertThat(loop).isPositive().isLessThan(5e6);
        assertThat(stdout).contains(String.format(Locale.ROOT, "%d dispatch + combine calls, one host timer, slowest rank): %.2f us per iteration",
                ITERS, loop));
        assertThat(stdout).contains(EpBenchWorker.HEADER, fp8.equals("--fp8") ? "FP8 dispatch" : "BF16 dispatch");
    }

    @Test
    void cudaTensorsOnAHostWithoutAGpuFailWithAClearMessage() {
        assumeFalse(gpuPresent(), "this host has a GPU");
        Object[] r = PgBenchCommandTest.execute("epbench", "-g", "2", "--tokens", "4", "--hidden", "128", "--topk", "2", "--experts", "4",
                "--device", "cuda", "--iters", "1", "--warmup", "0", "--timeout-s", "60");
        String all = r[1] + "\n" + r[2];
        assertThat((int) r[0]).as(all).isNotZero();
        assertThat(all).contains("epbench --device cuda: rank ").contains("could not put its tensors on cuda:");
    }

    private static boolean gpuPresent() {
        try {
            return org.mooncake4j.cuda.CudaDevice.count() > 0;
        } catch (RuntimeException | LinkageError e) {
            return false;
        }
    }

    @Test
    void badShapesAreRejectedBeforeAnyWorkerStarts() {
        Object[] r = PgBenchCommandTest.execute("epbench", "-g", "3", "--experts", "8");
        assertThat((int) r[0]).isEqualTo(1);
        assertThat((String) r[2]).contains("--experts (8) must be a positive multiple of --ranks (3)");
        r = PgBenchCommandTest.execute("epbench", "--hidden", "100");
        assertThat((String) r[2]).contains("--fp8 needs --hidden to be a multiple of 128");
    }
}
