package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The partition arithmetic shared by the host and the kernels: every element of a chunk belongs to
 * exactly one (part, block) pair, slices start on whole vectors, and nothing outside the chunk (and
 * so outside the bank) is touched.
 */
class CollectivePlanTest {
    private static final long MIB = 1L << 20;

    /** Marks each element of a two-shot chunk with the number of (part, block) slices covering it. */
    private static int[] coverTwoShot(int len, int world, int blocks, int v) {
        int[] hits = new int[len];
        long part = CollectivePlan.partElements(len, world, v);
        long slice = CollectivePlan.sliceElements(part, blocks, v);
        for (int q = 0; q < world; q++) {
            long size = CollectivePlan.partSize(len, part, q);
            for (int b = 0; b < blocks; b++) {
                long[] r = CollectivePlan.blockRange(size, slice, b);
                assertThat(r[0] % v).isZero();
                assertThat((q * part + r[0]) % v).isZero();
                for (long i = r[0]; i < r[1]; i++) hits[(int) (q * part + i)]++;
            }
        }
        return hits;
    }

    @Test
    void twoShotPartsAndSlicesCoverEveryElementOnce() {
        SplittableRandom random = new SplittableRandom(7);
        for (int trial = 0; trial < 400; trial++) {
            int len = trial < 40 ? trial + 1 : random.nextInt(1, 200_000);
            int world = random.nextInt(1, 9);
            int blocks = random.nextInt(1, 140);
            int v = random.nextBoolean() ? 4 : 8;
            int[] hits = coverTwoShot(len, world, blocks, v);
            for (int i = 0; i < len; i++) {
                assertThat(hits[i]).as("element %d of %d, %d ranks, %d blocks, %d per vector", i, len, world, blocks, v).isEqualTo(1);
            }
        }
    }

    @Test
    void oneShotAndAllGatherSlicesCoverEveryElementOnce() {
        SplittableRandom random = new SplittableRandom(11);
        for (int trial = 0; trial < 300; trial++) {
            int len = trial < 30 ? trial + 1 : random.nextInt(1, 100_000);
            int blocks = random.nextInt(1, 140);
            int v = new int[] {4, 8, 16}[random.nextInt(3)];
            long slice = CollectivePlan.sliceElements(len, blocks, v);
            int[] hits = new int[len];
            for (int b = 0; b < blocks; b++) {
                long[] r = CollectivePlan.blockRange(len, slice, b);
                assertThat(r[0] % v).isZero();
                assertThat(r[1]).isLessThanOrEqualTo(len);
                for (long i = r[0]; i < r[1]; i++) hits[(int) i]++;
            }
            for (int h : hits) assertThat(h).isEqualTo(1);
        }
    }

    @Test
    void partsOfATinyChunkAreMostlyEmpty() {
        long part = CollectivePlan.partElements(1, 4, 4);
        assertThat(part).isEqualTo(4);
        assertThat(CollectivePlan.partSize(1, part, 0)).isEqualTo(1);
        assertThat(CollectivePlan.partSize(1, part, 1)).isZero();
        assertThat(CollectivePlan.partSize(1, part, 3)).isZero();
        // 10 elements, 4 ranks, 4 per vector: parts of 4 -> 4, 4, 2, 0
        assertThat(CollectivePlan.partSize(10, 4, 2)).isEqualTo(2);
        assertThat(CollectivePlan.partSize(10, 4, 3)).isZero();
    }

    @Test
    void twoShotChunksArePipelinedWholeVectorsWithinOneBank() {
        long bank = 128 * MIB;
        // 512 MiB of float32: four chunks of one bank
        long count = 128 * MIB;
        long chunk = CollectivePlan.twoShotChunkElements(count, 4, bank);
        assertThat(chunk).isEqualTo(32 * MIB);
        assertThat(CollectivePlan.ceilDiv(count, chunk)).isEqualTo(4);
        // 1 GiB: capped at the bank, eight chunks
        assertThat(CollectivePlan.twoShotChunkElements(256 * MIB, 4, bank)).isEqualTo(32 * MIB);
        // 1 MiB: one chunk of at least 4 MiB
        assertThat(CollectivePlan.twoShotChunkElements(MIB / 4, 4, bank)).isEqualTo(MIB);
        // 64 MiB of bf16: a quarter each
        assertThat(CollectivePlan.twoShotChunkElements(32 * MIB, 2, bank)).isEqualTo(8 * MIB);
        SplittableRandom random = new SplittableRandom(3);
        for (int trial = 0; trial < 1000; trial++) {
            long n = random.nextLong(1, 1L << 32);
            int es = random.nextBoolean() ? 4 : 2;
            long b = random.nextLong(64 * 1024, 1L << 30) / 4096 * 4096;
            long c = CollectivePlan.twoShotChunkElements(n, es, b);
            assertThat(c % (16 / es)).isZero();
            assertThat(c * es).isLessThanOrEqualTo(b).isPositive();
        }
    }

    @Test
    void allGatherChunksAre16ByteMultiplesWithinOneBank() {
        assertThat(CollectivePlan.allGatherChunkBytes(1, 128 * MIB)).isEqualTo(4 * MIB);
        assertThat(CollectivePlan.allGatherChunkBytes(256 * MIB + 5, 128 * MIB)).isEqualTo(64 * MIB + 16);
        assertThat(CollectivePlan.allGatherChunkBytes(1L << 32, 128 * MIB)).isEqualTo(128 * MIB);
        assertThat(CollectivePlan.allGatherChunkBytes(1L << 32, 100_000)).isEqualTo(99_984);
    }

    @Test
    void gridsGrowWithTheMessageUpToTheLimit() {
        assertThat(CollectivePlan.oneShotBlocks(1, 4, 132)).isEqualTo(1);
        assertThat(CollectivePlan.oneShotBlocks(2048, 4, 132)).isEqualTo(1);      // 8 KiB: one vector per thread
        assertThat(CollectivePlan.oneShotBlocks(2049, 4, 132)).isEqualTo(2);
        assertThat(CollectivePlan.oneShotBlocks(64 * 1024, 4, 132)).isEqualTo(32);
        assertThat(CollectivePlan.oneShotBlocks(MIB, 4, 132)).isEqualTo(132);
        // two-shot: sized by one part of the first chunk
        assertThat(CollectivePlan.twoShotBlocks(MIB, MIB, 4, 4, 132)).isEqualTo(128);
        assertThat(CollectivePlan.twoShotBlocks(128 * MIB, 32 * MIB, 4, 4, 132)).isEqualTo(132);
        assertThat(CollectivePlan.twoShotBlocks(1, MIB, 4, 8, 132)).isEqualTo(1);
        assertThat(CollectivePlan.allGatherBlocks(1, 4 * MIB, 132)).isEqualTo(1);
        assertThat(CollectivePlan.allGatherBlocks(1L << 30, 64 * MIB, 132)).isEqualTo(132);
    }

    @Test
    void oneShotThresholdFallsWithTheGroupSizeAndFitsABank() {
        assertThat(CollectivePlan.defaultOneShotMaxBytes(2, 128 * MIB)).isEqualTo(MIB);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(4, 128 * MIB)).isEqualTo(512 * 1024);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(8, 128 * MIB)).isEqualTo(256 * 1024);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(2, 64 * 1024)).isEqualTo(64 * 1024);
    }
}
