package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

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
                if (r[1] > r[0]) assertThat((q * part + r[0]) % v).isZero();
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
                if (r[1] > r[0]) assertThat(r[0] % v).isZero();
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
    void allGatherChunksAre16ByteSlotsAndEveryRanksSlotFitsOneBank() {
        // the slots of all-to-all: at least 4 MiB over all ranks' slots, a quarter of the input, world slots per bank
        assertThat(CollectivePlan.allGatherChunkBytes(1, 128 * MIB, 4)).isEqualTo(MIB);
        assertThat(CollectivePlan.allGatherChunkBytes(1001, 128 * MIB, 8)).isEqualTo(512 * 1024);
        assertThat(CollectivePlan.allGatherChunkBytes(64 * MIB + 5, 128 * MIB, 4)).isEqualTo(16 * MIB + 16);
        assertThat(CollectivePlan.allGatherChunkBytes(256 * MIB + 5, 128 * MIB, 2)).isEqualTo(64 * MIB);
        assertThat(CollectivePlan.allGatherChunkBytes(1L << 32, 128 * MIB, 4)).isEqualTo(32 * MIB);
        assertThat(CollectivePlan.allGatherChunkBytes(1L << 32, 100_008, 1)).isEqualTo(100_000);
        for (long bytes : new long[] {1, 15, 17, 4099, MIB + 3, 64 * MIB, (1L << 30) + 7}) {
            for (int world = 1; world <= 8; world++) {
                long chunk = CollectivePlan.allGatherChunkBytes(bytes, 128 * MIB, world);
                assertThat(chunk % 16).isZero();
                assertThat(world * CollectivePlan.slotElements(bytes, chunk, 1)).isLessThanOrEqualTo(128 * MIB);
                assertThat(chunk).isEqualTo(CollectivePlan.allToAllChunkBytes(bytes, 128 * MIB, world));
            }
        }
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
        // all-gather: sized by one slot
        assertThat(CollectivePlan.allGatherBlocks(1, MIB, 132)).isEqualTo(1);
        assertThat(CollectivePlan.allGatherBlocks(16 * 1024, MIB, 132)).isEqualTo(2);
        assertThat(CollectivePlan.allGatherBlocks(1L << 30, 32 * MIB, 132)).isEqualTo(132);
    }

    @Test
    void oneShotThresholdFallsWithTheGroupSizeAndFitsABank() {
        assertThat(CollectivePlan.defaultOneShotMaxBytes(2, 128 * MIB)).isEqualTo(MIB);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(4, 128 * MIB)).isEqualTo(512 * 1024);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(8, 128 * MIB)).isEqualTo(256 * 1024);
        assertThat(CollectivePlan.defaultOneShotMaxBytes(2, 64 * 1024)).isEqualTo(64 * 1024);
    }

    /**
     * Push layout: for random chunks, the receive and gather slots of every rank's bank are disjoint,
     * 16-byte aligned and inside the bank; every element of the chunk is scattered to exactly one
     * (reducer, slot) position and gathered back to the same index.
     */
    @Test
    void pushSlotsAreDisjointAlignedAndInsideTheBank() {
        SplittableRandom random = new SplittableRandom(13);
        for (int trial = 0; trial < 300; trial++) {
            int world = random.nextInt(1, 9);
            int es = random.nextBoolean() ? 4 : 2;
            int v = CollectivePlan.vectorElements(es);
            long heapBytes = SymmetricHeap.Layout.minimumHeapBytes() + random.nextLong(0, 8 * MIB);
            SymmetricHeap.Layout layout = SymmetricHeap.Layout.of(heapBytes);
            long count = trial < 20 ? trial + 1 : random.nextLong(1, 64 * MIB);
            long chunk = CollectivePlan.pushChunkElements(count, es, layout.bankBytes(), world);
            assertThat(chunk).isPositive();
            assertThat(chunk % v).isZero();
            // every chunk, the last one included, fits its 2 * world slots in one bank
            for (long len : new long[] {Math.min(chunk, count), count - (CollectivePlan.ceilDiv(count, chunk) - 1) * chunk}) {
                long part = CollectivePlan.partElements(len, world, v);
                assertThat(part * es % CollectivePlan.VECTOR_BYTES).isZero();
                assertThat(CollectivePlan.pushSlots(world) * part * es).isLessThanOrEqualTo(layout.bankBytes());
                for (int bank = 0; bank < 2; bank++) {
                    long previousEnd = layout.bankOffset(bank);
                    for (int slot = 0; slot < CollectivePlan.pushSlots(world); slot++) {
                        long at = CollectivePlan.pushSlotOffset(layout, bank, world, slot, part, es);
                        assertThat(at).isEqualTo(previousEnd);            // in order, no overlap, no gap
                        assertThat(at % CollectivePlan.VECTOR_BYTES).isZero();
                        previousEnd = at + part * es;
                    }
                    assertThat(previousEnd).isLessThanOrEqualTo(layout.bankOffset(bank) + layout.bankBytes());
                    assertThat(previousEnd).isLessThanOrEqualTo(heapBytes);
                }
            }
        }
    }

    /** A block's access to bytes [start, end) of one bank of one rank's heap, for some chunk. */
    private record Access(int heap, int bank, long start, long end, int block) {}

    /**
     * Simulates the offsets of a push two-shot all-reduce (device: allreduce_twoshot_push) and returns
     * the first problem found, or null: every block of every rank must touch (read or write) only bytes
     * of a bank that no other block index touches in any chunk of the kernel (block b waits only for
     * block b of its peers, so that is what makes reusing a bank two chunks later safe); everything
     * stays inside the bank; every gather slot read is exactly what its reducer wrote; and every output
     * element is written exactly once on every rank. {@code perChunkPart}: cut each chunk with its own
     * part (the old, broken geometry), instead of {@link CollectivePlan#pushPartElements}.
     */
    private static String simulatePush(long count, int es, long bankBytes, int world, int blocksLimit, boolean perChunkPart) {
        int v = CollectivePlan.vectorElements(es);
        long chunk = CollectivePlan.pushChunkElements(count, es, bankBytes, world);
        long chunks = CollectivePlan.ceilDiv(count, chunk);
        int blocks = CollectivePlan.twoShotBlocks(count, chunk, es, world, blocksLimit);
        java.util.List<Access> accesses = new java.util.ArrayList<>();
        java.util.List<java.util.List<long[]>> outputs = new java.util.ArrayList<>();
        for (int r = 0; r < world; r++) outputs.add(new java.util.ArrayList<>());
        for (long k = 0; k < chunks; k++) {
            int bank = (int) (k & 1);
            long base = k * chunk;
            long len = Math.min(chunk, count - base);
            long part = perChunkPart ? CollectivePlan.partElements(len, world, v) : CollectivePlan.pushPartElements(count, chunk, world, es);
            long slice = CollectivePlan.sliceElements(part, blocks, v);
            if (CollectivePlan.pushSlots(world) * part * es > bankBytes) return "chunk " + k + ": slots of " + part + " elements overflow the bank";
            for (int r = 0; r < world; r++) {
                for (int b = 0; b < blocks; b++) {
                    for (int q = 0; q < world; q++) {
                        long[] range = CollectivePlan.blockRange(CollectivePlan.partSize(len, part, q), slice, b);
                        if (range[1] == range[0]) continue;
                        if (base + q * part + range[1] > count) return "chunk " + k + " part " + q + " block " + b + " ends past the message";
                        long lo = range[0] * es;
                        long hi = range[1] * es;
                        long recv = (long) CollectivePlan.pushReceiveSlot(r) * part * es;     // in rank q's heap
                        long gather = (long) CollectivePlan.pushGatherSlot(world, q) * part * es;
                        if (q != r) {
                            accesses.add(new Access(q, bank, recv + lo, recv + hi, b));       // scatter: write to reducer q
                            accesses.add(new Access(r, bank, gather + lo, gather + hi, b));   // copy out: read own gather slot q
                            // reducer q's reduce writes rank r's gather slot q at its own slice of part q: the same bytes
                            long[] written = CollectivePlan.blockRange(CollectivePlan.partSize(len, part, q), slice, b);
                            if (written[0] != range[0] || written[1] != range[1]) return "gather slot mismatch";
                            accesses.add(new Access(r, bank, gather + lo, gather + hi, b));   // reduce of q: write
                        } else {
                            for (int s = 0; s < world; s++) {                                  // reduce: read receive slots
                                if (s == r) continue;
                                long at = (long) CollectivePlan.pushReceiveSlot(s) * part * es;
                                accesses.add(new Access(r, bank, at + lo, at + hi, b));
                            }
                        }
                        outputs.get(r).add(new long[] {base + q * part + range[0], base + q * part + range[1]});
                    }
                }
            }
        }
        for (Access a : accesses) {
            if (a.start() < 0 || a.end() > bankBytes) return "access [" + a.start() + ", " + a.end() + ") outside the bank";
        }
        // per (heap, bank): merge each block's accesses, then the blocks' unions must be disjoint
        java.util.Map<String, java.util.List<Access>> byBank = new java.util.HashMap<>();
        for (Access a : accesses) byBank.computeIfAbsent(a.heap() + "/" + a.bank(), x -> new java.util.ArrayList<>()).add(a);
        for (var e : byBank.entrySet()) {
            java.util.List<Access> list = new java.util.ArrayList<>(e.getValue());
            list.sort(java.util.Comparator.comparingInt(Access::block).thenComparingLong(Access::start));
            java.util.List<Access> merged = new java.util.ArrayList<>();
            for (Access a : list) {
                Access last = merged.isEmpty() ? null : merged.get(merged.size() - 1);
                if (last != null && last.block() == a.block() && a.start() <= last.end()) {
                    merged.set(merged.size() - 1, new Access(a.heap(), a.bank(), last.start(), Math.max(last.end(), a.end()), a.block()));
                } else {
                    merged.add(a);
                }
            }
            merged.sort(java.util.Comparator.comparingLong(Access::start));
            for (int i = 1; i < merged.size(); i++) {
                Access p = merged.get(i - 1);
                Access a = merged.get(i);
                if (a.start() < p.end()) {
                    return "heap " + a.heap() + " bank " + a.bank() + ": block " + p.block() + " and block " + a.block()
                            + " both touch bytes [" + a.start() + ", " + Math.min(a.end(), p.end()) + ")";
                }
            }
        }
        for (int r = 0; r < world; r++) {
            java.util.List<long[]> out = outputs.get(r);
            out.sort(java.util.Comparator.comparingLong(x -> x[0]));
            long next = 0;
            for (long[] x : out) {
                if (x[0] != next) return "rank " + r + ": output " + (x[0] < next ? "written twice" : "not written") + " at " + Math.min(x[0], next);
                next = x[1];
            }
            if (next != count) return "rank " + r + ": output ends at " + next + " of " + count;
        }
        return null;
    }

    /**
     * The 4xH200 failure: push two-shot all-reduces of about 1 GiB (16 chunks, the last one shorter)
     * summed wrong from chunk 9 on, at 2 and 4 ranks, because the last chunk was cut with its own,
     * smaller part: its slots and slices moved, and block b of a fast rank overwrote bytes that a slow
     * block b'' of a peer had yet to read for an earlier chunk of the same bank. The real heap: banks
     * of 134705152 bytes, up to 132 blocks.
     */
    @Test
    void pushBlocksOwnTheirBankBytesInEveryChunk() {
        long bank = 134_705_152L;
        assertThat(SymmetricHeap.Layout.of(SymmetricHeap.Layout.DATA_OFFSET + 2 * bank).bankBytes()).isEqualTo(bank);
        long[][] cases = {
                {268_435_449L, 4, 2}, {268_435_449L, 4, 4}, {268_435_453L, 4, 4}, {268_435_456L, 4, 4},
                {536_870_912L, 2, 4}, {134_705_157L, 4, 2}, {134_705_157L, 4, 4}, {67_352_653L, 4, 2},
                {268_435_449L, 4, 3}, {268_435_449L, 4, 8}, {536_870_905L, 2, 8}, {1001, 4, 4}, {16 * MIB + 3, 4, 4}};
        for (long[] c : cases) {
            String problem = simulatePush(c[0], (int) c[1], bank, (int) c[2], 132, false);
            assertThat(problem).as("n=%d, %d-byte elements, %d ranks", c[0], c[1], c[2]).isNull();
        }
        // the old geometry fails this check exactly where the GPUs did
        assertThat(simulatePush(268_435_449L, 4, bank, 2, 132, true)).contains("both touch bytes");
        assertThat(simulatePush(268_435_449L, 4, bank, 4, 132, true)).contains("both touch bytes");
        assertThat(simulatePush(536_870_912L, 2, bank, 4, 132, true)).contains("both touch bytes");
        // random sizes, worlds, banks and grids
        SplittableRandom random = new SplittableRandom(29);
        for (int trial = 0; trial < 60; trial++) {
            int world = random.nextInt(1, 9);
            int es = random.nextBoolean() ? 4 : 2;
            long b = SymmetricHeap.Layout.of(SymmetricHeap.Layout.minimumHeapBytes() + random.nextLong(0, 64 * MIB)).bankBytes();
            long count = random.nextLong(1, 96 * MIB);
            String problem = simulatePush(count, es, b, world, random.nextInt(1, 133), false);
            assertThat(problem).as("n=%d, %d-byte elements, %d ranks, bank %d", count, es, world, b).isNull();
        }
    }

    /**
     * The pipelined all-reduce's geometry, as the device computes it: the tiles of every block, step and
     * part cover every element of the message exactly once, and every block's slots (receive and gather
     * tiles of every rank) lie in one bank without overlapping another block's or each other.
     */
    @Test
    void pipeTilesCoverTheMessageOnceAndTheSlotsFitOneBank() {
        SplittableRandom random = new SplittableRandom(31);
        long[][] fixed = {{1, 4, 2, 132}, {1001, 4, 4, 132}, {8 * MIB, 4, 4, 132}, {8 * MIB + 3, 2, 8, 132}, {65_541, 4, 3, 7},
                {4 * MIB + 5, 2, 4, 132}, {3 * MIB + 5, 4, 4, 132}};
        for (int trial = 0; trial < fixed.length + 40; trial++) {
            long count;
            int es;
            int world;
            int limit;
            if (trial < fixed.length) {
                count = fixed[trial][0];
                es = (int) fixed[trial][1];
                world = (int) fixed[trial][2];
                limit = (int) fixed[trial][3];
            } else {
                count = random.nextLong(1, 6 * MIB);
                es = random.nextBoolean() ? 4 : 2;
                world = random.nextInt(2, 9);
                limit = random.nextInt(1, 133);
            }
            SymmetricHeap.Layout layout = SymmetricHeap.Layout.of(257 * MIB);
            String what = "n=" + count + ", " + es + "-byte elements, " + world + " ranks, limit " + limit;
            int blocks = CollectivePlan.twoShotBlocks(count, count, es, world, limit);
            assertThat(blocks).as(what).isBetween(1, limit);
            long tile = CollectivePlan.pipeTileElements(count, es, world, blocks, layout.bankBytes());
            int v = CollectivePlan.vectorElements(es);
            assertThat(tile).as(what).isPositive().isLessThanOrEqualTo(Math.max(v, CollectivePlan.PIPE_TILE_BYTES / es));
            assertThat(tile % v).as(what).isZero();
            long steps = CollectivePlan.pipeSteps(count, es, world, blocks, tile);
            long part = CollectivePlan.partElements(count, world, v);
            long slice = CollectivePlan.pipeSliceElements(count, es, world, blocks);
            assertThat(slice % v).isZero();
            // coverage: device pipe_steps(g, count, q, s, s + 1) for every block, part and step
            long covered = 0;
            for (int q = 0; q < world; q++) {
                long len = CollectivePlan.partSize(count, part, q);
                long next = 0;   // tiles come in order of block, then step
                for (int b = 0; b < blocks; b++) {
                    for (long st = 0; st < steps; st++) {
                        long end = Math.min((long) b * slice + slice, len);
                        long lo = Math.min((long) b * slice + st * tile, end);
                        long hi = Math.min((long) b * slice + (st + 1) * tile, end);
                        if (hi > lo) {
                            assertThat(lo).as(what + ": part %d block %d step %d", q, b, st).isEqualTo(next);
                            assertThat(hi - lo).isLessThanOrEqualTo(tile);
                            next = hi;
                        }
                    }
                }
                assertThat(next).as(what + ": part %d covered", q).isEqualTo(len);
                covered += next;
            }
            assertThat(covered).as(what).isEqualTo(count);
            // slots: every tile inside bank 1, the last block's last tile at most at the bank's end
            for (int bank = 0; bank < 2; bank++) {
                long first = CollectivePlan.pipeTileOffset(layout, bank, world, tile, es, 0, 0, false, 0);
                long last = CollectivePlan.pipeTileOffset(layout, bank, world, tile, es, blocks - 1, CollectivePlan.PIPE_SLOTS - 1, true,
                        world - 1);
                assertThat(first).isEqualTo(layout.bankOffset(bank));
                assertThat(last + tile * es).as(what).isLessThanOrEqualTo(layout.bankOffset(bank) + layout.bankBytes());
            }
            // distinct (block, slot, kind, rank) -> disjoint tiles: offsets step by exactly one tile
            long prev = -1;
            for (int b = 0; b < Math.min(blocks, 3); b++) {
                for (int slot = 0; slot < CollectivePlan.PIPE_SLOTS; slot++) {
                    for (int kind = 0; kind < 2; kind++) {
                        for (int q = 0; q < world; q++) {
                            long o = CollectivePlan.pipeTileOffset(layout, 0, world, tile, es, b, slot + CollectivePlan.PIPE_SLOTS * 5L,
                                    kind == 1, q);
                            if (prev >= 0) assertThat(o - prev).isEqualTo(tile * es);
                            prev = o;
                        }
                    }
                }
            }
        }
        assertThat(CollectivePlan.twoShotBlocks(512 * MIB, 512 * MIB, 4, 4, 132)).isEqualTo(132);
        // a bank too small for one vector per tile: no pipe on that heap
        assertThat(CollectivePlan.pipeTileElements(MIB, 4, 8, 132, 4096)).isZero();
    }

    @Test
    void pipeChunkParameterCarriesTileScatterWarpsAndCopyLag() {
        assertThat(CollectivePlan.PIPE_COPY_LAG).isBetween(0, CollectivePlan.PIPE_SLOTS - 1);
        assertThat(CollectivePlan.PIPE_SCATTER_WARPS).isBetween(0, CollectivePlan.THREADS / 32 - 1);
        assertThat(CollectivePlan.pipeChunkParameter(4096, 0, 0)).isEqualTo(4096);
        long p = CollectivePlan.pipeChunkParameter(4096, 15, 3);
        assertThat(p >>> CollectivePlan.PIPE_LAG_SHIFT).isEqualTo(3);
        assertThat(p >>> CollectivePlan.PIPE_WARPS_SHIFT & 0xff).isEqualTo(15);
        assertThat(p & ((1L << CollectivePlan.PIPE_WARPS_SHIFT) - 1)).isEqualTo(4096);
        long largest = (1L << CollectivePlan.PIPE_WARPS_SHIFT) - 1;
        assertThat(CollectivePlan.pipeChunkParameter(largest, 1, 1) & largest).isEqualTo(largest);
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(4096, 0, CollectivePlan.PIPE_SLOTS))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("copy-out lag 4: need 0 .. 3");
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(4096, 0, -1)).isInstanceOf(IllegalArgumentException.class);
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(4096, 16, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("scatter warps 16: need 0 (half the block) .. 15");
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(4096, -1, 0)).isInstanceOf(IllegalArgumentException.class);
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(0, 0, 1)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("pipe tile of 0 elements");
        assertThatThrownBy(() -> CollectivePlan.pipeChunkParameter(largest + 1, 0, 1)).isInstanceOf(IllegalArgumentException.class);
    }

    @Test
    void pushSlotsNameTheirWriters() {
        // receive slot s of rank j: written by rank s; gather slot world + q: written by reducer q
        for (int world = 1; world <= SymmetricHeap.MAX_RANKS; world++) {
            boolean[] used = new boolean[CollectivePlan.pushSlots(world)];
            for (int r = 0; r < world; r++) {
                assertThat(used[CollectivePlan.pushReceiveSlot(r)]).isFalse();
                used[CollectivePlan.pushReceiveSlot(r)] = true;
                assertThat(used[CollectivePlan.pushGatherSlot(world, r)]).isFalse();
                used[CollectivePlan.pushGatherSlot(world, r)] = true;
            }
            for (boolean u : used) assertThat(u).isTrue();
        }
        SymmetricHeap.Layout layout = SymmetricHeap.Layout.of(257 * MIB);
        long part = 4 * MIB;
        // slot 2 of bank 1 for parts of 4 Mi float32: bank 1 + 2 * 16 MiB
        assertThat(CollectivePlan.pushSlotOffset(layout, 1, 4, 2, part, 4)).isEqualTo(layout.bankOffset(1) + 32 * MIB);
        assertThatThrownBy(() -> CollectivePlan.pushSlotOffset(layout, 0, 4, 8, part, 4))
                .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("slot 8 of 8");
        assertThatThrownBy(() -> CollectivePlan.pushSlotOffset(layout, 0, 4, -1, part, 4))
                .isInstanceOf(IndexOutOfBoundsException.class);
        assertThatThrownBy(() -> CollectivePlan.pushSlotOffset(layout, 0, 4, 7, layout.bankBytes() / 4 / 7, 4))
                .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("ends past bank 0");
        assertThatThrownBy(() -> CollectivePlan.pushSlotOffset(layout, 2, 4, 0, 4, 4)).isInstanceOf(IndexOutOfBoundsException.class);
    }

    @Test
    void pushChunksArePipelinedAndCappedByTwiceTheWorldsSlots() {
        long bank = SymmetricHeap.Layout.of(257 * MIB).bankBytes();
        // 512 MiB of float32 on 4 ranks: parts of at most bank / 8 bytes, whole vectors; eight chunks of 64+ MiB
        long maxPart = CollectivePlan.pushMaxPartElements(4, bank, 4);
        assertThat(maxPart).isEqualTo(bank / 4 / 8 / 4 * 4);
        long chunk = CollectivePlan.pushChunkElements(128 * MIB, 4, bank, 4);
        assertThat(chunk).isEqualTo(4 * maxPart);
        assertThat(CollectivePlan.ceilDiv(128 * MIB, chunk)).isEqualTo(8);
        // 32 MiB: a quarter each, as the pull variant
        assertThat(CollectivePlan.pushChunkElements(8 * MIB, 4, bank, 4))
                .isEqualTo(CollectivePlan.twoShotChunkElements(8 * MIB, 4, bank)).isEqualTo(2 * MIB);
        // small messages: one chunk of at least 4 MiB
        assertThat(CollectivePlan.pushChunkElements(1000, 4, bank, 2)).isEqualTo(MIB);
        // the smallest bank still holds 8 ranks' 16 slots of one vector
        long tiny = SymmetricHeap.Layout.MIN_BANK_BYTES;
        for (int world = 1; world <= 8; world++) {
            for (int es : new int[] {2, 4}) {
                long c = CollectivePlan.pushChunkElements(1L << 40, es, tiny, world);
                assertThat(c).isPositive();
                assertThat(2L * world * CollectivePlan.partElements(c, world, 16 / es) * es).isLessThanOrEqualTo(tiny);
            }
        }
        assertThat(CollectivePlan.pushSlots(4)).isEqualTo(8);
        assertThat(CollectivePlan.pushGatherSlot(4, 1)).isEqualTo(5);
    }

    @Test
    void slotChunksArePipelinedWholeVectorsAndEveryRanksSlotFitsOneBank() {
        long bank = SymmetricHeap.Layout.of(257 * MIB).bankBytes();
        // 128 Mi float32 per rank on 4 ranks: slots of at most bank / 4 bytes
        long max = CollectivePlan.slotMaxElements(4, bank, 4);
        assertThat(max).isEqualTo(bank / 4 / 4 / 4 * 4);
        assertThat(CollectivePlan.reduceScatterChunkElements(128 * MIB, 4, bank, 4)).isEqualTo(max);
        // 8 Mi per rank: a quarter each
        assertThat(CollectivePlan.reduceScatterChunkElements(8 * MIB, 4, bank, 4)).isEqualTo(2 * MIB);
        // small: one chunk, of at least 4 MiB over all ranks' parts
        assertThat(CollectivePlan.reduceScatterChunkElements(1000, 4, bank, 4)).isEqualTo(256 * 1024);
        assertThat(CollectivePlan.reduceScatterChunkElements(1000, 2, bank, 8)).isEqualTo(256 * 1024);
        assertThat(CollectivePlan.allToAllChunkBytes(1001, bank, 8)).isEqualTo(512 * 1024);
        assertThat(CollectivePlan.allToAllChunkBytes(64 * MIB + 3, bank, 2)).isEqualTo(16 * MIB + 16);
        assertThat(CollectivePlan.allToAllChunkBytes(512 * MIB, bank, 8)).isEqualTo(bank / 8 / 16 * 16);
        // slots: the first chunk's length in whole vectors
        assertThat(CollectivePlan.slotElements(1, MIB, 4)).isEqualTo(4);
        assertThat(CollectivePlan.slotElements(3, MIB, 1)).isEqualTo(16);
        assertThat(CollectivePlan.slotElements(10 * MIB, MIB, 2)).isEqualTo(MIB);
        SplittableRandom random = new SplittableRandom(31);
        for (int trial = 0; trial < 2000; trial++) {
            int world = random.nextInt(1, 9);
            int es = new int[] {1, 2, 4}[random.nextInt(3)];
            long b = SymmetricHeap.Layout.of(SymmetricHeap.Layout.minimumHeapBytes() + random.nextLong(0, 512 * MIB)).bankBytes();
            long perRank = trial < 100 ? trial + 1 : random.nextLong(1, 1L << 32);
            long chunk = CollectivePlan.slotChunkElements(perRank, es, b, world);
            int v = CollectivePlan.vectorElements(es);
            assertThat(chunk).isPositive();
            assertThat(chunk % v).isZero();
            long slot = CollectivePlan.slotElements(perRank, chunk, es);
            assertThat(slot).isLessThanOrEqualTo(chunk);
            assertThat(slot * es % CollectivePlan.VECTOR_BYTES).isZero();
            assertThat(world * slot * es).as("%d slots of %d x %d bytes in a bank of %d", world, slot, es, b).isLessThanOrEqualTo(b);
            SymmetricHeap.Layout layout = new SymmetricHeap.Layout(SymmetricHeap.Layout.DATA_OFFSET + 2 * b,
                    SymmetricHeap.Layout.DATA_OFFSET, b);
            CollectivePlan.slotOffset(layout, 1, world, world - 1, slot * es);    // does not throw
            int blocks = CollectivePlan.slotBlocks(perRank, chunk, es, 132);
            assertThat(blocks).isBetween(1, 132);
        }
        // the smallest bank still holds 8 ranks' slots of one vector
        for (int es : new int[] {1, 2, 4}) {
            assertThat(CollectivePlan.slotChunkElements(1L << 40, es, SymmetricHeap.Layout.MIN_BANK_BYTES, 8)).isPositive();
        }
    }

    @Test
    void slotsAreDisjointAndNameTheirWriters() {
        SymmetricHeap.Layout layout = SymmetricHeap.Layout.of(257 * MIB);
        long slotBytes = 8 * MIB;
        assertThat(CollectivePlan.slotOffset(layout, 0, 4, 0, slotBytes)).isEqualTo(layout.bankOffset(0));
        assertThat(CollectivePlan.slotOffset(layout, 1, 4, 3, slotBytes)).isEqualTo(layout.bankOffset(1) + 24 * MIB);
        assertThatThrownBy(() -> CollectivePlan.slotOffset(layout, 0, 4, 4, slotBytes))
                .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("slot 4 of 4");
        assertThatThrownBy(() -> CollectivePlan.slotOffset(layout, 0, 4, -1, slotBytes)).isInstanceOf(IndexOutOfBoundsException.class);
        assertThatThrownBy(() -> CollectivePlan.slotOffset(layout, 0, 4, 3, layout.bankBytes() / 3))
                .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("ends past bank 0");
    }

    /**
     * Block b of a rank waits only for block b of its peers, so in every chunk of a push reduce-scatter,
     * all-to-all or all-gather each block must store into and read from the same bytes of each slot (those of the
     * first chunk's slice), and every element of every chunk must be moved by exactly one block.
     */
    @Test
    void slotBlocksOwnTheirBankBytesInEveryChunkAndCoverEveryElementOnce() {
        SplittableRandom random = new SplittableRandom(37);
        for (int trial = 0; trial < 300; trial++) {
            int world = random.nextInt(1, 9);
            int es = new int[] {1, 2, 4}[random.nextInt(3)];
            int v = CollectivePlan.vectorElements(es);
            long b = SymmetricHeap.Layout.of(SymmetricHeap.Layout.minimumHeapBytes() + random.nextLong(0, 4 * MIB)).bankBytes();
            int perRank = trial < 40 ? trial + 1 : random.nextInt(1, 3_000_000);
            long chunk = CollectivePlan.slotChunkElements(perRank, es, b, world);
            int blocks = random.nextInt(1, 133);
            long slot = CollectivePlan.slotElements(perRank, chunk, es);
            long slice = CollectivePlan.sliceElements(slot, blocks, v);     // device: slot_chunk
            byte[] hits = new byte[perRank];
            for (long k = 0; k < CollectivePlan.ceilDiv(perRank, chunk); k++) {
                long base = k * chunk;
                long len = Math.min(chunk, perRank - base);
                for (int blk = 0; blk < blocks; blk++) {
                    long[] r = CollectivePlan.blockRange(len, slice, blk);
                    if (r[1] <= r[0]) continue;
                    assertThat(r[0]).isEqualTo(blk * slice);             // the slot bytes of block blk, every chunk
                    assertThat(r[1]).isLessThanOrEqualTo(Math.min((blk + 1) * slice, slot));
                    assertThat(r[0] % v).isZero();
                    for (long i = r[0]; i < r[1]; i++) hits[(int) (base + i)]++;
                }
            }
            for (int i = 0; i < perRank; i++) {
                assertThat(hits[i]).as("element %d of %d per rank, %d ranks, %d blocks", i, perRank, world, blocks).isEqualTo((byte) 1);
            }
        }
    }

    @Test
    void scaleGridsGrowWithTheMessageUpToTheirLimit() {
        assertThat(CollectivePlan.scaleBlocks(1, 4)).isEqualTo(1);
        assertThat(CollectivePlan.scaleBlocks(2048, 4)).isEqualTo(1);
        assertThat(CollectivePlan.scaleBlocks(2049, 4)).isEqualTo(2);
        assertThat(CollectivePlan.scaleBlocks(1L << 30, 2)).isEqualTo(CollectivePlan.SCALE_MAX_BLOCKS);
    }

    @Test
    void twoShotVariantIsPipelinedFromThreeRanksAndAtTwoFrom8To32MiB() {
        assertThat(CollectivePlan.defaultTwoShot(2, 512 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PUSH);
        assertThat(CollectivePlan.defaultTwoShot(2, 128 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PUSH);
        assertThat(CollectivePlan.defaultTwoShot(2, 32 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PIPE);
        assertThat(CollectivePlan.defaultTwoShot(2, 8 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PIPE);
        assertThat(CollectivePlan.defaultTwoShot(2, 8 * MIB - 1)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PUSH);
        assertThat(CollectivePlan.defaultTwoShot(2, 32 * MIB + 1)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PUSH);
        assertThat(CollectivePlan.defaultTwoShot(4, 32 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PIPE);
        assertThat(CollectivePlan.defaultTwoShot(3, 2 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PIPE);
        assertThat(CollectivePlan.defaultTwoShot(8, 2 * MIB)).isEqualTo(CudaCollectives.Algorithm.TWO_SHOT_PIPE);
    }
}
