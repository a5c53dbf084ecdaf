package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.internal.FloatFormats;

/** The GPU harness's settings, inputs and report formats; no GPU needed. */
class CollectiveBenchTest {
    private static final long MIB = 1L << 20;

    @Test
    void settingsComeFromTheEnvironmentWithDefaults() {
        CollectiveBench.Config c = CollectiveBench.Config.fromEnv(Map.of("RANK", "1", "WORLD_SIZE", "4", "RDV_DIR", "/tmp/rdv"));
        assertThat(c.rank()).isEqualTo(1);
        assertThat(c.worldSize()).isEqualTo(4);
        assertThat(c.heapBytes()).isEqualTo(257 * MIB);
        assertThat(c.sharing()).isEqualTo(SymmetricHeap.Sharing.AUTO);
        assertThat(c.phases()).containsExactlyInAnyOrder("check", "time", "fault");
        assertThat(c.checkMaxBytes()).isEqualTo(1024 * MIB);
        assertThat(c.timeMaxBytes()).isEqualTo(512 * MIB);
        assertThat(c.oneShotMaxBytes()).isEqualTo(-1);
        assertThat(c.faultTimeoutNanos()).isEqualTo(2_000_000_000L);

        CollectiveBench.Config d = CollectiveBench.Config.fromEnv(Map.of("RANK", "0", "WORLD_SIZE", "2", "RDV_DIR", "/x",
                "PHASES", "time", "SHARING", "ipc", "ONESHOT_MAX_BYTES", "65536", "HEAP_MIB", "64"));
        assertThat(d.phases()).containsExactly("time");
        assertThat(d.sharing()).isEqualTo(SymmetricHeap.Sharing.LEGACY_IPC);
        assertThat(d.oneShotMaxBytes()).isEqualTo(65536);
        assertThat(d.heapBytes()).isEqualTo(64 * MIB);
    }

    @Test
    void missingOrWrongSettingsSayWhatToSet() {
        assertThatThrownBy(() -> CollectiveBench.Config.fromEnv(Map.of("WORLD_SIZE", "2", "RDV_DIR", "/x")))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("RANK is not set");
        assertThatThrownBy(() -> CollectiveBench.Config.fromEnv(Map.of("RANK", "2", "WORLD_SIZE", "2", "RDV_DIR", "/x")))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("RANK=2 must be in 0..WORLD_SIZE-1");
        assertThatThrownBy(() -> CollectiveBench.Config.fromEnv(Map.of("RANK", "0", "WORLD_SIZE", "2")))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("RDV_DIR is not set");
        assertThatThrownBy(() -> CollectiveBench.Config.fromEnv(Map.of("RANK", "0", "WORLD_SIZE", "2", "RDV_DIR", "/x",
                "PHASES", "check,bench"))).isInstanceOf(IllegalArgumentException.class).hasMessageContaining("unknown phase 'bench'");
        assertThatThrownBy(() -> CollectiveBench.Config.fromEnv(Map.of("RANK", "0", "WORLD_SIZE", "two", "RDV_DIR", "/x")))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("WORLD_SIZE=two is not an integer");
    }

    @Test
    void timedSizesAreThoseOfTorchBaselines() {
        // torch_baselines.py: for p in range(3, 31, 2): n = max(1, (1 << p) // 4) floats
        List<Long> sizes = CollectiveBench.timedSizes(512 * MIB);
        assertThat(sizes).hasSize(14);
        assertThat(sizes.getFirst()).isEqualTo(8);
        assertThat(sizes.get(1)).isEqualTo(32);
        assertThat(sizes.getLast()).isEqualTo(512 * MIB);
        for (int i = 1; i < sizes.size(); i++) assertThat(sizes.get(i)).isEqualTo(4 * sizes.get(i - 1));
        assertThat(CollectiveBench.timedSizes(MIB)).hasSize(9).endsWith(512 * 1024L);
        assertThatThrownBy(() -> CollectiveBench.timedSizes(4)).isInstanceOf(IllegalArgumentException.class);
        assertThat(CollectiveBench.timedSizes(32 * MIB, 512 * MIB)).containsExactly(32 * MIB, 128 * MIB, 512 * MIB);
        assertThatThrownBy(() -> CollectiveBench.timedSizes(600 * MIB, 512 * MIB)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("lower TIME_MIN_BYTES");
    }

    @Test
    void inputsAreSmallIntegersOrBf16ValuesThatDifferByRankAndIndex() {
        Set<Float> f32 = new HashSet<>();
        Set<Short> bf16 = new HashSet<>();
        for (long i = 0; i < 10_000; i++) {
            float v = CollectiveBench.f32Value(5, 2, i);
            assertThat(v).isBetween(-64f, 64f);
            assertThat(v).isEqualTo((float) Math.rint(v));
            f32.add(v);
            float b = FloatFormats.bf16ToFloat(CollectiveBench.bf16Value(5, 2, i));
            assertThat(Math.abs(b)).isLessThanOrEqualTo(31.25f);
            bf16.add(CollectiveBench.bf16Value(5, 2, i));
        }
        assertThat(f32).hasSize(129);
        assertThat(bf16.size()).isGreaterThan(1000);
        assertThat(CollectiveBench.f32Value(5, 2, 7)).isEqualTo(CollectiveBench.f32Value(5, 2, 7));
        int differs = 0;
        for (long i = 0; i < 1000; i++) {
            if (CollectiveBench.f32Value(5, 0, i) != CollectiveBench.f32Value(5, 1, i)) differs++;
            if (CollectiveBench.byteValue(5, 0, i) != CollectiveBench.byteValue(6, 0, i)) differs++;
        }
        assertThat(differs).isGreaterThan(1900);
    }

    @Test
    void jsonHasTheRowsOfTorchBaselinesAndTheDetail() {
        List<CollectiveBench.Row> rows = List.of(
                new CollectiveBench.Row(8, 2, "one-shot", 10.0, 10.0, 20.0, 30.0, 40.0),
                new CollectiveBench.Row(512 * MIB, 128 * MIB, "push", 2000.0, Double.NaN, 2500.0, 2000.0, 2100.0),
                new CollectiveBench.Row(32 * MIB, 8 * MIB, "pipe", 150.0, Double.NaN, 300.0, 200.0, 150.0));
        String json = CollectiveBench.json(4, "NVIDIA H200", "SHAREABLE", rows);
        // busbw = bytes / time * 2(n-1)/n: 8 B in 10 us = 0.0008 GB/s, * 1.5 = 0.0012
        assertThat(json).startsWith("{\"world\": 4, \"device\": \"NVIDIA H200\", \"heap\": \"SHAREABLE\", \"dtype\": \"float32\"")
                .contains("\"mooncake_allreduce\": [[8, 10.0000, 0.0012], [536870912, 2000.0000, 402.6532], [33554432, 150.0000,"
                        + " 335.5443]]")
                .contains("\"mooncake_allreduce_pull\": [[8, 20.0000, 0.0006], [536870912, 2500.0000, 322.1225], [33554432, 300.0000,"
                        + " 167.7722]]")
                .contains("\"mooncake_allreduce_push\": [[8, 30.0000, 0.0004], [536870912, 2000.0000, 402.6532], [33554432, 200.0000,"
                        + " 251.6582]]")
                .contains("\"mooncake_allreduce_pipe\": [[8, 40.0000, 0.0003], [536870912, 2100.0000, 383.4792], [33554432, 150.0000,"
                        + " 335.5443]]")
                .contains("{\"bytes\": 8, \"count\": 2, \"algorithm\": \"one-shot\", \"time_us\": 10.0000, \"algbw_GBps\": 0.0008,"
                        + " \"busbw_GBps\": 0.0012, \"one_shot_us\": 10.0000, \"two_shot_pull_us\": 20.0000,"
                        + " \"two_shot_push_us\": 30.0000, \"two_shot_pipe_us\": 40.0000, \"faster_two_shot\": \"pull\"}")
                .contains("\"one_shot_us\": null")
                .contains("\"two_shot_pipe_us\": 2100.0000, \"faster_two_shot\": \"push\"}")
                .contains("\"two_shot_pipe_us\": 150.0000, \"faster_two_shot\": \"pipe\"}")
                .endsWith("]}\n");
        assertThat(rows.get(1).algbw()).isCloseTo(268.435456, org.assertj.core.data.Offset.offset(1e-9));
        assertThat(rows.get(1).busbw(2)).isEqualTo(rows.get(1).algbw());
        assertThat(rows.get(1).busbw(1)).isZero();
        assertThat(new CollectiveBench.Row(8, 2, "one-shot", 1, 1, Double.NaN, 2, 3).fasterTwoShot()).isEqualTo("-");
        assertThat(new CollectiveBench.Row(8, 2, "one-shot", 1, 1, 4, 2, Double.NaN).fasterTwoShot()).isEqualTo("-");
        assertThat(CollectiveBench.label(CudaCollectives.Algorithm.TWO_SHOT_PIPE)).isEqualTo("pipe");
        assertThat(CollectiveBench.label(CudaCollectives.Algorithm.TWO_SHOT_PUSH)).isEqualTo("push");
        assertThat(CollectiveBench.label(CudaCollectives.Algorithm.TWO_SHOT_PULL)).isEqualTo("pull");
        assertThat(CollectiveBench.label(CudaCollectives.Algorithm.ONE_SHOT)).isEqualTo("one-shot");
    }

    @Test
    void moreJsonHasTheRowsOfTorchNcclMorePerCollective() {
        List<CollectiveBench.MoreRow> rows = List.of(
                new CollectiveBench.MoreRow("allgather", 32, 8, 10.0),
                new CollectiveBench.MoreRow("reducescatter", 32, 8, 20.0),
                new CollectiveBench.MoreRow("alltoall", 32, 8, 40.0),
                new CollectiveBench.MoreRow("allgather", 2048 * MIB, 512 * MIB, 4000.0));
        String json = CollectiveBench.moreJson(4, "NVIDIA H200", "SHAREABLE", rows);
        // busbw = bytes of the full tensor / time * (n-1)/n: 32 B in 10 us = 0.0032 GB/s, * 0.75 = 0.0024
        assertThat(json).startsWith("{\"world\": 4, \"device\": \"NVIDIA H200\", \"heap\": \"SHAREABLE\", \"dtype\": \"float32\"")
                .contains("\"mooncake_allgather\": [[32, 10.0000, 0.0024], [2147483648, 4000.0000, 402.6532]]")
                .contains("\"mooncake_reducescatter\": [[32, 20.0000, 0.0012]]")
                .contains("\"mooncake_alltoall\": [[32, 40.0000, 0.0006]]")
                .endsWith("]}\n");
        assertThat(rows.get(3).algbw()).isCloseTo(536.870912, org.assertj.core.data.Offset.offset(1e-9));
        assertThat(rows.get(3).busbw(2)).isCloseTo(rows.get(3).algbw() / 2, org.assertj.core.data.Offset.offset(1e-9));
        assertThat(rows.get(3).busbw(1)).isZero();
        assertThat(CollectiveBench.MORE).containsExactly("allgather", "reducescatter", "alltoall");
        String t = CollectiveBench.moreTable(4, "cuda:0 (NVIDIA H200)", null, rows);
        assertThat(t).contains("# mooncake all_gather, reduce_scatter (sum, float32), all_to_all, 4 ranks on cuda:0 (NVIDIA H200)")
                .contains("busbw = algbw * (n-1)/n")
                .containsPattern("\\s+reducescatter\\s+32\\s+8\\s+20\\.00\\s+0\\.00\\s+0\\.00");
    }

    @Test
    void tableLooksLikeNcclTests() {
        String t = CollectiveBench.table(2, "cuda:0 (NVIDIA H200)", null, List.of(new CollectiveBench.Row(1024, 256, "one-shot", 7.5,
                7.5, Double.NaN, 9.0, 8.0)));
        assertThat(t).contains("# mooncake all_reduce (sum, float32), 2 ranks on cuda:0 (NVIDIA H200)")
                .contains("size(B)").contains("busbw(GB/s)")
                .contains("pull(us)").contains("push busbw").contains("pipe busbw").contains("faster")
                .containsPattern("\\s+1024\\s+256\\s+one-shot\\s+7\\.50\\s+0\\.14\\s+0\\.14\\s+7\\.50\\s+-\\s+9\\.00\\s+8\\.00\\s+-\\s+0\\.11\\s+0\\.13\\s+-");
        assertThat(CollectiveBench.human(1L << 30)).isEqualTo("1.00 GiB");
        assertThat(CollectiveBench.human(1001)).isEqualTo("1001 B");
    }
}
