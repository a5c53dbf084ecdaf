package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.charset.StandardCharsets;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.DType;
import org.mooncake4j.cuda.CudaCollectives.Algorithm;

/** What the GPU collectives refuse before queueing anything, and how a timeout is reported; no GPU needed. */
class CudaCollectivesTest {
    private static final long MS = 1_000_000L;
    private static final long BANK = 128L << 20;
    private static final long A = 0x7f00_0000_0000L;     // a plausible device address
    private static final long B = 0x7f10_0000_0000L;

    @Test
    void allReduceAcceptsFloat32AndBfloat16InPlaceOrSeparate() {
        CudaCollectives.checkAllReduce(A, B, 1000, DType.FLOAT32, 10 * MS, Algorithm.AUTO, BANK);
        CudaCollectives.checkAllReduce(A, A, 1000, DType.BFLOAT16, 10 * MS, Algorithm.TWO_SHOT, BANK);
        CudaCollectives.checkAllReduce(A + 2, B + 6, 1, DType.BFLOAT16, 10 * MS, Algorithm.ONE_SHOT, BANK);
        CudaCollectives.checkAllReduce(0, 0, 0, DType.FLOAT32, 10 * MS, Algorithm.AUTO, BANK);  // nothing to do
        CudaCollectives.checkAllReduce(A, A + 4000, 1000, DType.FLOAT32, 10 * MS, Algorithm.AUTO, BANK); // adjacent
    }

    @Test
    void allReduceRefusesWhatTheKernelsCannotDo() {
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, 10, DType.INT32, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("GPU all_reduce sums float32 or bfloat16, not int32");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, 10, DType.FLOAT16, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("not float16");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, -1, DType.FLOAT32, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must not be negative, got -1");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, 10, DType.FLOAT32, 0, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout must be 1 ns .. 1 h, got 0 ns");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, 10, DType.FLOAT32, 2 * CudaCollectives.MAX_TIMEOUT_NANOS,
                Algorithm.AUTO, BANK)).isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(0, B, 10, DType.FLOAT32, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("src must be a device pointer, got null");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B + 2, 10, DType.FLOAT32, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("dst 0x7f1000000002 is not aligned to the 4 bytes of float32");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, A + 8, 10, DType.FLOAT32, MS, Algorithm.AUTO, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlap")
                .hasMessageContaining("same pointer for an in-place all_reduce");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, BANK / 4 + 1, DType.FLOAT32, MS, Algorithm.ONE_SHOT, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("one-shot all_reduce takes at most " + BANK)
                .hasMessageContaining("use TWO_SHOT or AUTO");
        assertThatThrownBy(() -> CudaCollectives.checkAllReduce(A, B, 10, DType.FLOAT32, MS, null, BANK))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("Algorithm.AUTO");
    }

    @Test
    void allReduceBackupIsOptionalAlignedAndApart() {
        long c = 0x7f20_0000_0000L;
        CudaCollectives.checkBackup(0, A, A, 1000, DType.FLOAT32);                 // none
        CudaCollectives.checkBackup(c, A, A, 1000, DType.FLOAT32);
        CudaCollectives.checkBackup(c + 2, A, B, 1000, DType.BFLOAT16);
        CudaCollectives.checkBackup(A + 4000, A, A, 1000, DType.FLOAT32);          // just past src
        CudaCollectives.checkBackup(A - 4000, A, A, 1000, DType.FLOAT32);          // just before src
        CudaCollectives.checkBackup(A, A, B, 0, DType.FLOAT32);                    // nothing to do
        assertThatThrownBy(() -> CudaCollectives.checkBackup(c + 2, A, A, 10, DType.FLOAT32))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("backup 0x7f2000000002 is not aligned to the 4 bytes");
        assertThatThrownBy(() -> CudaCollectives.checkBackup(A + 8, A, A, 10, DType.FLOAT32))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlaps src").hasMessageContaining("of its own");
        assertThatThrownBy(() -> CudaCollectives.checkBackup(B - 8, A, B, 10, DType.FLOAT32))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlaps dst");
    }

    @Test
    void completionWordsFollowTheStatusWordsAndCoverEveryGrid() {
        assertThat(CudaCollectives.DONE_OFFSET).isGreaterThanOrEqualTo(4L * (1 + SymmetricHeap.Layout.MAX_BLOCKS));
        assertThat(CudaCollectives.DONE_OFFSET % 8).isZero();
        assertThat(CudaCollectives.DONE_WORDS).isGreaterThanOrEqualTo(SymmetricHeap.Layout.MAX_BLOCKS)
                .isGreaterThanOrEqualTo(CollectivePlan.SCALE_MAX_BLOCKS);
        assertThat(CudaCollectives.STATUS_BYTES).isEqualTo(CudaCollectives.DONE_OFFSET + 8L * CudaCollectives.DONE_WORDS);
    }

    @Test
    void allGatherAcceptsSeparateBuffersOrThisRanksSlot() {
        CudaCollectives.checkAllGather(A, B, 1001, 4, 2, MS);
        CudaCollectives.checkAllGather(B + 2 * 1001, B, 1001, 4, 2, MS);   // in place
        CudaCollectives.checkAllGather(B + 4 * 1001, B, 1001, 4, 2, MS);   // just past dst
        CudaCollectives.checkAllGather(0, 0, 0, 4, 2, MS);
        assertThatThrownBy(() -> CudaCollectives.checkAllGather(B + 1001, B, 1001, 4, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("other than at this rank's slot")
                .hasMessageContaining("dst + rank * bytesPerRank");
        assertThatThrownBy(() -> CudaCollectives.checkAllGather(B - 10, B, 1001, 4, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlaps");
        assertThatThrownBy(() -> CudaCollectives.checkAllGather(A, 0, 16, 4, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("device pointers");
        assertThatThrownBy(() -> CudaCollectives.checkAllGather(A, B, -5, 4, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must not be negative");
    }

    @Test
    void reduceScatterAcceptsSeparateBuffersOfFloat32OrBfloat16() {
        CudaCollectives.checkReduceScatter(A, B, 1000, DType.FLOAT32, 4, MS);
        CudaCollectives.checkReduceScatter(A + 2, B + 6, 3, DType.BFLOAT16, 8, MS);
        CudaCollectives.checkReduceScatter(0, 0, 0, DType.FLOAT32, 4, MS);                      // nothing to do
        CudaCollectives.checkReduceScatter(A, A + 4 * 4000, 1000, DType.FLOAT32, 4, MS);        // dst just past src
        CudaCollectives.checkReduceScatter(A + 4000, A, 1000, DType.FLOAT32, 4, MS);            // src just past dst
    }

    @Test
    void reduceScatterRefusesWhatTheKernelsCannotDo() {
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, B, 10, DType.INT32, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("GPU reduce_scatter sums float32 or bfloat16, not int32");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, B, -1, DType.FLOAT32, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must not be negative, got -1");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, B, 10, DType.FLOAT32, 2, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout must be 1 ns .. 1 h, got 0 ns");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, B, 10, DType.FLOAT32, 2, CudaCollectives.MAX_TIMEOUT_NANOS + 1))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(0, B, 10, DType.FLOAT32, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("src must be a device pointer, got null");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, 0, 10, DType.BFLOAT16, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("dst must be a device pointer, got null");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A + 1, B, 10, DType.BFLOAT16, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("src 0x7f0000000001 is not aligned to the 2 bytes of bfloat16");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, A, 10, DType.FLOAT32, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlap")
                .hasMessageContaining("reduce_scatter needs separate buffers");
        // dst inside the second part of src
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, A + 44, 10, DType.FLOAT32, 2, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlap");
        assertThatThrownBy(() -> CudaCollectives.checkReduceScatter(A, B, Long.MAX_VALUE / 8, DType.FLOAT32, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("too large");
    }

    @Test
    void allToAllTakesAnyAlignmentButSeparateBuffers() {
        CudaCollectives.checkAllToAll(A, B, 1001, 4, MS);
        CudaCollectives.checkAllToAll(A + 3, B + 7, 1, 8, MS);
        CudaCollectives.checkAllToAll(A, A + 4 * 1001, 1001, 4, MS);     // adjacent
        CudaCollectives.checkAllToAll(0, 0, 0, 4, MS);
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A, A, 16, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlap")
                .hasMessageContaining("all_to_all needs separate buffers");
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A + 4 * 1001 - 1, A, 1001, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("overlap");
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A, 0, 16, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("device pointers");
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A, B, -5, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must not be negative, got -5");
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A, B, 16, 4, -1))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout");
        assertThatThrownBy(() -> CudaCollectives.checkAllToAll(A, B, Long.MAX_VALUE / 2, 4, MS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("too large");
    }

    @Test
    void divideTakesFloat32OrBfloat16AndAFiniteNonZeroDivisor() {
        CudaCollectives.checkDivide(A, 1000, DType.FLOAT32, 4);
        CudaCollectives.checkDivide(A + 2, 3, DType.BFLOAT16, 3.0);
        CudaCollectives.checkDivide(0, 0, DType.FLOAT32, 8);
        assertThatThrownBy(() -> CudaCollectives.checkDivide(A, 10, DType.INT64, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("GPU divide takes float32 or bfloat16, not int64");
        assertThatThrownBy(() -> CudaCollectives.checkDivide(A, -1, DType.FLOAT32, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must not be negative, got -1");
        for (double bad : new double[] {0, Double.NaN, Double.POSITIVE_INFINITY, 1e-50, 1e300}) {
            assertThatThrownBy(() -> CudaCollectives.checkDivide(A, 10, DType.FLOAT32, bad))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("finite and non-zero");
        }
        assertThatThrownBy(() -> CudaCollectives.checkDivide(0, 10, DType.FLOAT32, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("ptr must be a device pointer, got null");
        assertThatThrownBy(() -> CudaCollectives.checkDivide(A + 2, 10, DType.FLOAT32, 2))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("not aligned to the 4 bytes of float32");
    }

    @Test
    void aTimeoutNamesTheMissingRanksAndWhatToDo() {
        assertThat(CollectiveTimeoutException.ranksOf(0b1001)).containsExactly(0, 3);
        assertThat(CollectiveTimeoutException.ranksOf(1 << 7)).containsExactly(7);
        assertThat(CollectiveTimeoutException.ranksOf(0)).isEmpty();
        CollectiveTimeoutException e = new CollectiveTimeoutException(0, "cuda:0 (NVIDIA H200)", List.of(3), 2_000 * MS);
        assertThat(e).isInstanceOf(org.mooncake4j.core.TimeoutException.class);
        assertThat(e.missingRanks()).containsExactly(3);
        assertThat(e.getMessage()).startsWith("GPU collective on rank 0 (cuda:0 (NVIDIA H200)): rank 3 did not arrive within"
                + " the timeout of 2000 ms.").contains("report [3] as failed").contains("new SymmetricHeap")
                .contains("that rank is alive");
        assertThat(new CollectiveTimeoutException(1, "cuda:1", List.of(0, 2), MS).getMessage()).contains("ranks [0, 2] did not arrive")
                .contains("those ranks are alive");
    }

    /** The names CudaCollectives looks up must be in the fatbin (when this machine built it). */
    @Test
    void builtKernelsIncludeEveryCollective() {
        if (CudaModule.class.getResource(CudaModule.FATBIN_RESOURCE) == null) return;
        String image = new String(CudaModule.readKernelImage(CudaModule.FATBIN_RESOURCE), StandardCharsets.ISO_8859_1);
        for (String k : List.of("allreduce_oneshot_f32", "allreduce_oneshot_bf16", "allreduce_twoshot_f32",
                "allreduce_twoshot_bf16", "allreduce_twoshot_push_f32", "allreduce_twoshot_push_bf16", "allreduce_pipe_f32",
                "allreduce_pipe_bf16", "allgather_bytes",
                "reducescatter_f32", "reducescatter_bf16", "alltoall_bytes", "scale_f32", "scale_bf16")) {
            assertThat(image).as("kernel %s in kernels.fatbin", k).contains(k);
        }
    }

    @Test
    void twoShotVariantComesFromThePropertyThenTheEnvironment() {
        assertThat(CudaCollectives.defaultTwoShotVariant(null, null)).isEqualTo(CudaCollectives.TwoShotVariant.AUTO);
        assertThat(CudaCollectives.defaultTwoShotVariant(null, "PUSH")).isEqualTo(CudaCollectives.TwoShotVariant.PUSH);
        assertThat(CudaCollectives.defaultTwoShotVariant("pull", "push")).isEqualTo(CudaCollectives.TwoShotVariant.PULL);
        assertThat(CudaCollectives.defaultTwoShotVariant(" ", " auto ")).isEqualTo(CudaCollectives.TwoShotVariant.AUTO);
        assertThatThrownBy(() -> CudaCollectives.TwoShotVariant.parse("both")).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("pull, push, pipe or auto").hasMessageContaining(CudaCollectives.TWO_SHOT_ENV);
        assertThat(CudaCollectives.resolveTwoShot(CudaCollectives.TwoShotVariant.PULL, 4, 64 << 20)).isEqualTo(Algorithm.TWO_SHOT_PULL);
        assertThat(CudaCollectives.resolveTwoShot(CudaCollectives.TwoShotVariant.PUSH, 2, 64 << 20)).isEqualTo(Algorithm.TWO_SHOT_PUSH);
        assertThat(CudaCollectives.TwoShotVariant.parse(" Pipe ")).isEqualTo(CudaCollectives.TwoShotVariant.PIPE);
        assertThat(CudaCollectives.resolveTwoShot(CudaCollectives.TwoShotVariant.PIPE, 4, 64 << 20)).isEqualTo(Algorithm.TWO_SHOT_PIPE);
        assertThat(CudaCollectives.resolveTwoShot(CudaCollectives.TwoShotVariant.AUTO, 4, 64 << 20)).isEqualTo(Algorithm.TWO_SHOT_PIPE);
        assertThat(CudaCollectives.resolveTwoShot(CudaCollectives.TwoShotVariant.AUTO, 2, 64 << 20)).isEqualTo(Algorithm.TWO_SHOT_PUSH);
        // both variants take any size
        CudaCollectives.checkAllReduce(A, B, BANK, DType.FLOAT32, MS, Algorithm.TWO_SHOT_PUSH, BANK);
        CudaCollectives.checkAllReduce(A, A, BANK, DType.BFLOAT16, MS, Algorithm.TWO_SHOT_PULL, BANK);
    }
}
