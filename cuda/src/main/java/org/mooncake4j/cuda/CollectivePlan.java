package org.mooncake4j.cuda;

/**
 * The arithmetic of the GPU collectives: grid sizes, pipeline chunks, and how a chunk is cut into
 * parts and per-block slices. {@link CudaCollectives} uses it to launch; the slicing methods mirror
 * the device code in {@code collectives.cu} (same formulas), so the partitions can be checked on a
 * machine without a GPU. Every rank computes the same values from the same arguments, which the
 * kernels' per-block barriers rely on.
 */
final class CollectivePlan {
    /** Threads per block of every collective kernel. */
    static final int THREADS = 512;
    /** The width of the kernels' vector loads and stores. */
    static final int VECTOR_BYTES = 16;
    /** Two-shot all-reduce and the slot collectives cut a message into at least this many pipeline chunks ... */
    static final int PIPELINE_CHUNKS = 4;
    /** ... of at least this many bytes each (fewer chunks for smaller messages), at most one bank. */
    static final long MIN_PIPELINE_CHUNK_BYTES = 4L << 20;
    /**
     * The two-shot all-reduce's own chunking and grid, tunable per run through the environment (every
     * rank must see the same values, like NCCL's variables): MOONCAKE_CUDA_AR_CHUNKS pipeline chunks
     * (default {@link #PIPELINE_CHUNKS}), MOONCAKE_CUDA_AR_MIN_CHUNK_KIB (default 4096) and
     * MOONCAKE_CUDA_AR_MAX_BLOCKS (default 0: the heap's limit, one block per SM; at most
     * {@link SymmetricHeap.Layout#MAX_BLOCKS}, the rows of arrival flags).
     */
    static final int AR_CHUNKS = tunable("MOONCAKE_CUDA_AR_CHUNKS", PIPELINE_CHUNKS, 1, 256);
    static final long AR_MIN_CHUNK_BYTES = (long) tunable("MOONCAKE_CUDA_AR_MIN_CHUNK_KIB", (int) (MIN_PIPELINE_CHUNK_BYTES >> 10), 16, 1 << 20) << 10;
    static final int AR_MAX_BLOCKS = tunable("MOONCAKE_CUDA_AR_MAX_BLOCKS", 0, 1, SymmetricHeap.Layout.MAX_BLOCKS);
    /**
     * The same three for the slot collectives (all-gather, reduce-scatter, all-to-all):
     * MOONCAKE_CUDA_SLOT_CHUNKS, MOONCAKE_CUDA_SLOT_MIN_CHUNK_KIB (over all ranks' slots of a chunk) and
     * MOONCAKE_CUDA_SLOT_MAX_BLOCKS; MOONCAKE_CUDA_SLOT_SCATTER_WARPS: the warps of a block that store
     * the next chunk into the peers while the others consume the current one (default 0: half the block).
     */
    static final int SLOT_CHUNKS = tunable("MOONCAKE_CUDA_SLOT_CHUNKS", PIPELINE_CHUNKS, 1, 256);
    static final long SLOT_MIN_CHUNK_BYTES = (long) tunable("MOONCAKE_CUDA_SLOT_MIN_CHUNK_KIB", (int) (MIN_PIPELINE_CHUNK_BYTES >> 10), 16, 1 << 20) << 10;
    static final int SLOT_MAX_BLOCKS = tunable("MOONCAKE_CUDA_SLOT_MAX_BLOCKS", 0, 1, SymmetricHeap.Layout.MAX_BLOCKS);
    static final int SLOT_SCATTER_WARPS = tunable("MOONCAKE_CUDA_SLOT_SCATTER_WARPS", 0, 0, THREADS / 32 - 1);

    private static int tunable(String name, int fallback, int min, int max) {
        return org.mooncake4j.core.internal.Settings.integer(name, fallback, min, max, String.valueOf(fallback));
    }

    private CollectivePlan() {}

    static long ceilDiv(long a, long b) { return (a + b - 1) / b; }

    static long roundUp(long a, long m) { return ceilDiv(a, m) * m; }

    /** Elements per 16-byte vector. */
    static int vectorElements(int elementBytes) { return VECTOR_BYTES / elementBytes; }

    /** Enough blocks that each thread of a block moves about one vector of a span of {@code bytes}; 1..limit. */
    static int blocksFor(long bytes, int limit) {
        return (int) Math.max(1, Math.min(limit, ceilDiv(bytes, (long) THREADS * VECTOR_BYTES)));
    }

    /**
     * The largest all-reduce that {@link CudaCollectives.Algorithm#AUTO} runs one-shot. One-shot reads
     * (n-1) copies of the message over NVLink with one barrier, two-shot 2(n-1)/n copies with two; at 2
     * ranks the traffic is the same, at 8 one-shot moves 4x more, so the crossover falls with the size
     * of the group. Tune with {@link CudaCollectives#setOneShotMaxBytes}.
     */
    static long defaultOneShotMaxBytes(int worldSize, long bankBytes) {
        long t = worldSize <= 2 ? 1L << 20 : worldSize <= 4 ? 512L << 10 : 256L << 10;
        return Math.min(t, bankBytes);
    }

    // ---- one-shot ------------------------------------------------------------------------------

    static int oneShotBlocks(long count, int elementBytes, int limit) { return blocksFor(count * elementBytes, limit); }

    // ---- two-shot ------------------------------------------------------------------------------

    /**
     * Elements per pipeline chunk of a two-shot all-reduce of {@code count}: a quarter of the message,
     * at least {@link #MIN_PIPELINE_CHUNK_BYTES}, at most one bank, a whole number of vectors.
     */
    static long twoShotChunkElements(long count, int elementBytes, long bankBytes) {
        int v = vectorElements(elementBytes);
        long bankElements = bankBytes / elementBytes / v * v;
        long target = Math.max(AR_MIN_CHUNK_BYTES / elementBytes, ceilDiv(count, AR_CHUNKS));
        return Math.min(roundUp(target, v), bankElements);
    }

    /**
     * Blocks of a two-shot all-reduce (every variant): enough for one part of the first chunk (the
     * pipelined variant: chunkElements = count), at most MOONCAKE_CUDA_AR_MAX_BLOCKS and never more
     * than {@code limit} (one per SM: all blocks must be resident at once).
     */
    static int twoShotBlocks(long count, long chunkElements, int elementBytes, int worldSize, int limit) {
        long len = Math.min(count, chunkElements);
        return blocksFor(partElements(len, worldSize, vectorElements(elementBytes)) * elementBytes,
                AR_MAX_BLOCKS > 0 ? Math.min(AR_MAX_BLOCKS, limit) : limit);
    }

    /** Elements per part of a chunk of {@code len} cut into {@code worldSize} parts of whole vectors (device: ch.part). */
    static long partElements(long len, int worldSize, int vectorElements) {
        return roundUp(ceilDiv(len, worldSize), vectorElements);
    }

    /** The elements of part {@code q} (device: part_size): the last parts may be shorter or empty. */
    static long partSize(long len, long part, int q) {
        long start = q * part;
        return start >= len ? 0 : Math.min(part, len - start);
    }

    // ---- two-shot, push variant ----------------------------------------------------------------

    /**
     * The two-shot algorithm that {@link CudaCollectives.TwoShotVariant#AUTO} runs for {@code bytes} among
     * {@code worldSize} ranks. Measured on 4×H200 (CollectiveBench, float32, 2 MiB to 512 MiB, kernels
     * back to back): pushing beat pulling at every size, by 6-17 % at 2 ranks and 25-45 % at 4; at 4
     * ranks the pipelined variant beat pushing by 2-11 % from 2 MiB to 32 MiB and 3 % at 512 MiB
     * (16 KiB tiles; 128 MiB within 3 % either way), while at 2 ranks, through the process group, the
     * push variant stayed ahead (fewer peers: its two barriers per chunk cost less). With the copy-out
     * moved to the scatter group ({@link #PIPE_COPY_LAG} 3), on 2×H200 the pipelined variant beat
     * pushing from 8 MiB to 32 MiB at 2 ranks too (kernels alone 6-9 %, through the process group
     * 9 % at 32 MiB), tied at 512 MiB and lost 3 % at 128 MiB, so 2 ranks push outside that range.
     */
    static CudaCollectives.Algorithm defaultTwoShot(int worldSize, long bytes) {
        if (worldSize >= 3 || bytes >= PIPE_TWO_RANKS_MIN_BYTES && bytes <= PIPE_TWO_RANKS_MAX_BYTES) {
            return CudaCollectives.Algorithm.TWO_SHOT_PIPE;
        }
        return CudaCollectives.Algorithm.TWO_SHOT_PUSH;
    }

    /** Two ranks run the pipelined all-reduce from here ... */
    static final long PIPE_TWO_RANKS_MIN_BYTES = 8L << 20;
    /** ... up to here (both measured; push outside). */
    static final long PIPE_TWO_RANKS_MAX_BYTES = 32L << 20;

    /**
     * Elements per part at most, in a chunk of the push variant: every rank's bank holds the chunk's
     * {@code worldSize} receive slots and {@code worldSize} gather slots of one part each, whole vectors.
     */
    static long pushMaxPartElements(int elementBytes, long bankBytes, int worldSize) {
        int v = vectorElements(elementBytes);
        return bankBytes / elementBytes / (2L * worldSize) / v * v;
    }

    /**
     * Elements per pipeline chunk of a push two-shot all-reduce of {@code count}: the policy of
     * {@link #twoShotChunkElements} (a quarter of the message, at least
     * {@link #MIN_PIPELINE_CHUNK_BYTES}, whole vectors), capped so that the chunk's
     * {@code 2 * worldSize} slots of {@link #partElements} fit one bank.
     */
    static long pushChunkElements(long count, int elementBytes, long bankBytes, int worldSize) {
        int v = vectorElements(elementBytes);
        long target = Math.max(AR_MIN_CHUNK_BYTES / elementBytes, ceilDiv(count, AR_CHUNKS));
        return Math.min(roundUp(target, v), pushMaxPartElements(elementBytes, bankBytes, worldSize) * worldSize);
    }

    /**
     * Elements per part of every chunk of a push two-shot all-reduce of {@code count} in chunks of
     * {@code chunkElements} (device: push_chunk): the part of the first chunk, for the last (shorter)
     * chunk too, whose parts are then shorter or empty. The slots and each block's slice of them must
     * not move from chunk to chunk: block b of a rank waits only for block b of its peers, so bytes of
     * a bank that block b writes for chunk k+2 must be bytes that only block b read for chunk k.
     */
    static long pushPartElements(long count, long chunkElements, int worldSize, int elementBytes) {
        return partElements(Math.min(count, chunkElements), worldSize, vectorElements(elementBytes));
    }

    /** Slots of a push chunk per bank: {@code worldSize} receive slots, then {@code worldSize} gather slots. */
    static int pushSlots(int worldSize) { return 2 * worldSize; }

    /** The receive slot that rank {@code source} writes part {@code rank} of its input into (in rank {@code rank}'s heap). */
    static int pushReceiveSlot(int source) { return source; }

    /** The gather slot that rank {@code owner} writes its reduced part into (in every peer's heap). */
    static int pushGatherSlot(int worldSize, int owner) { return worldSize + owner; }

    /**
     * The byte offset within every rank's heap of slot {@code slot} of a push chunk in bank
     * {@code bank} whose parts hold {@code partElements} (device: push_slot_offset).
     */
    static long pushSlotOffset(SymmetricHeap.Layout layout, int bank, int worldSize, int slot, long partElements,
                               int elementBytes) {
        if (slot < 0 || slot >= pushSlots(worldSize)) {
            throw new IndexOutOfBoundsException("slot " + slot + " of " + pushSlots(worldSize));
        }
        long offset = layout.bankOffset(bank) + slot * partElements * elementBytes;
        if (offset + partElements * elementBytes > layout.bankOffset(bank) + layout.bankBytes()) {
            throw new IndexOutOfBoundsException("slot " + slot + " of parts of " + partElements + " elements of " + elementBytes
                    + " bytes ends past bank " + bank + " (" + layout.bankBytes() + " bytes)");
        }
        return offset;
    }

    // ---- pipelined push all-reduce ------------------------------------------------------------

    /**
     * Slots per block of the pipelined all-reduce (device: kPipeSlots): four let the reduce group
     * store into a peer's gather tiles without a flag of its own for the peer's copy-out (see
     * collectives.cu).
     */
    static final int PIPE_SLOTS = 4;
    /**
     * Bytes per tile (one step of one block within one part) of the pipelined all-reduce, tunable per
     * run with MOONCAKE_CUDA_AR_TILE_KIB (every rank must see the same value; default 16, the fastest of
     * 4, 8, 12, 16, 32, 64 and 120 KiB on 4×H200 from 32 MiB to 512 MiB); capped so that every block's
     * slots fit one bank.
     */
    static final long PIPE_TILE_BYTES = (long) tunable("MOONCAKE_CUDA_AR_TILE_KIB", 16, 1, 1 << 14) << 10;

    /**
     * Which warp group of the pipelined all-reduce copies the peers' reduced tiles (the gather tiles)
     * into the output, tunable per run with MOONCAKE_CUDA_AR_PIPE_COPY_LAG (every rank must see the
     * same value): 0, the reduce group, after it waited for the step before; 1 to {@code PIPE_SLOTS - 1}
     * (default 3), the scatter group, that many steps behind its scatter, so that the reduce group meets
     * its peers once per step instead of twice and never stops storing to copy. On 2×H200, 2 ranks,
     * lag 3 against 0: 512 MiB 1521 against 1597-1599 µs (kernels alone) and 1562-1568 against
     * 1708-1767 µs (through the process group, in place with the backup); 32 MiB 115-116 against
     * 118-119 µs; no size slower. Lag 2 timed as 3, lag 1 between.
     */
    static final int PIPE_COPY_LAG = tunable("MOONCAKE_CUDA_AR_PIPE_COPY_LAG", 3, 0, PIPE_SLOTS - 1);
    /**
     * Warps of the pipelined all-reduce's scatter group, tunable per run with
     * MOONCAKE_CUDA_AR_PIPE_SCATTER_WARPS (every rank must see the same value): 0 (the default), half
     * the block; 1 to {@code THREADS / 32 - 1}, that many, the rest reduce.
     */
    static final int PIPE_SCATTER_WARPS = tunable("MOONCAKE_CUDA_AR_PIPE_SCATTER_WARPS", 0, 0, THREADS / 32 - 1);
    /** The kernel takes its scatter warps in the chunk parameter's 8 bits from here (device: kPipeWarpsShift) ... */
    static final int PIPE_WARPS_SHIFT = 52;
    /** ... and the copy-out lag in its bits from here up (device: kPipeLagShift). */
    static final int PIPE_LAG_SHIFT = 60;

    /** The pipelined kernel's chunk parameter: the tile's elements, the scatter warps (0: half) and the copy-out lag. */
    static long pipeChunkParameter(long tileElements, int scatterWarps, int copyLag) {
        if (tileElements <= 0 || tileElements >= 1L << PIPE_WARPS_SHIFT) {
            throw new IllegalArgumentException("pipe tile of " + tileElements + " elements: need 1 .. 2^" + PIPE_WARPS_SHIFT + " - 1");
        }
        if (scatterWarps < 0 || scatterWarps >= THREADS / 32) {
            throw new IllegalArgumentException("pipe scatter warps " + scatterWarps + ": need 0 (half the block) .. " + (THREADS / 32 - 1));
        }
        if (copyLag < 0 || copyLag >= PIPE_SLOTS) {
            throw new IllegalArgumentException("pipe copy-out lag " + copyLag + ": need 0 .. " + (PIPE_SLOTS - 1));
        }
        return tileElements | (long) scatterWarps << PIPE_WARPS_SHIFT | (long) copyLag << PIPE_LAG_SHIFT;
    }

    /**
     * Elements per tile of a pipelined all-reduce of {@code count} over {@code blocks} blocks: {@link
     * #PIPE_TILE_BYTES}, no more than a block's slice of a part, whole vectors, and small enough that
     * the {@code blocks * PIPE_SLOTS * 2 * worldSize} tiles fit one bank; 0 when not even one vector
     * per tile fits (then the kernel cannot run on this heap).
     */
    static long pipeTileElements(long count, int elementBytes, int worldSize, int blocks, long bankBytes) {
        int v = vectorElements(elementBytes);
        long slice = pipeSliceElements(count, elementBytes, worldSize, blocks);
        long fit = bankBytes / elementBytes / ((long) blocks * PIPE_SLOTS * 2 * worldSize) / v * v;
        long want = Math.max(v, PIPE_TILE_BYTES / elementBytes / v * v);
        return Math.min(Math.min(want, slice), fit);
    }

    /** Elements of every part that one block handles (device: g.slice). */
    static long pipeSliceElements(long count, int elementBytes, int worldSize, int blocks) {
        int v = vectorElements(elementBytes);
        return roundUp(ceilDiv(partElements(count, worldSize, v), blocks), v);
    }

    /** Steps of every block (device: g.steps); the kernel raises flags up to epoch + steps. */
    static long pipeSteps(long count, int elementBytes, int worldSize, int blocks, long tileElements) {
        return ceilDiv(pipeSliceElements(count, elementBytes, worldSize, blocks), tileElements);
    }

    /**
     * Byte offset within every rank's heap of tile {@code q} of kind {@code gather} (false: receive) of
     * step {@code step} of block {@code block} (device: pipe_tile_offset), in bank {@code bank}.
     */
    static long pipeTileOffset(SymmetricHeap.Layout layout, int bank, int worldSize, long tileElements, int elementBytes,
                               int block, long step, boolean gather, int q) {
        long tiles = ((long) block * PIPE_SLOTS + step % PIPE_SLOTS) * 2 * worldSize + (gather ? worldSize : 0) + q;
        return layout.bankOffset(bank) + tiles * tileElements * elementBytes;
    }

    // ---- all-gather (push, one slot per source rank, like all-to-all) ---------------------------

    /**
     * Bytes per pipeline chunk of an all-gather of {@code bytes} per rank: the slots of
     * {@link #slotChunkElements} (a quarter of the input, at least {@link #MIN_PIPELINE_CHUNK_BYTES}
     * over all ranks' slots, 16-byte multiples, {@code worldSize} slots in one bank), as for all-to-all.
     */
    static long allGatherChunkBytes(long bytes, long bankBytes, int worldSize) {
        return slotChunkElements(bytes, 1, bankBytes, worldSize);
    }

    /** Blocks of an all-gather: enough for one slot (device: slot_chunk). */
    static int allGatherBlocks(long bytes, long chunkBytes, int limit) { return slotBlocks(bytes, chunkBytes, 1, limit); }

    // ---- reduce-scatter, all-to-all and all-gather (push, one slot per source rank) --------------

    /**
     * Elements of every part per pipeline chunk of a push reduce-scatter (or all-to-all, with
     * {@code elementBytes} 1) of {@code perRank} elements per part: a quarter of a part, at least
     * {@link #MIN_PIPELINE_CHUNK_BYTES} of all {@code worldSize} parts together, whole vectors, and at
     * most what lets a bank hold the chunk's {@code worldSize} slots.
     */
    static long slotChunkElements(long perRank, int elementBytes, long bankBytes, int worldSize) {
        int v = vectorElements(elementBytes);
        long target = Math.max(ceilDiv(SLOT_MIN_CHUNK_BYTES, (long) worldSize * elementBytes), ceilDiv(perRank, SLOT_CHUNKS));
        return Math.min(roundUp(target, v), slotMaxElements(elementBytes, bankBytes, worldSize));
    }

    /** The most elements of one slot: {@code worldSize} slots of whole vectors in one bank. */
    static long slotMaxElements(int elementBytes, long bankBytes, int worldSize) {
        int v = vectorElements(elementBytes);
        return bankBytes / elementBytes / worldSize / v * v;
    }

    /**
     * Elements per slot of every chunk (device: slot_chunk): the first chunk's length in whole vectors,
     * for the last (shorter) chunk too, so that each block's bytes of a bank stay put from chunk to chunk.
     */
    static long slotElements(long perRank, long chunkElements, int elementBytes) {
        return roundUp(Math.min(perRank, chunkElements), vectorElements(elementBytes));
    }

    /** Blocks of a push reduce-scatter or all-to-all: enough for one slot. */
    static int slotBlocks(long perRank, long chunkElements, int elementBytes, int limit) {
        return blocksFor(slotElements(perRank, chunkElements, elementBytes) * elementBytes,
                SLOT_MAX_BLOCKS > 0 ? Math.min(SLOT_MAX_BLOCKS, limit) : limit);
    }

    /**
     * The byte offset within every rank's heap of slot {@code slot} (written by rank {@code slot}) of a
     * push reduce-scatter or all-to-all chunk in bank {@code bank} (device: slot_offset).
     */
    static long slotOffset(SymmetricHeap.Layout layout, int bank, int worldSize, int slot, long slotBytes) {
        if (slot < 0 || slot >= worldSize) throw new IndexOutOfBoundsException("slot " + slot + " of " + worldSize);
        long offset = layout.bankOffset(bank) + slot * slotBytes;
        if (offset + slotBytes > layout.bankOffset(bank) + layout.bankBytes()) {
            throw new IndexOutOfBoundsException("slot " + slot + " of " + slotBytes + " bytes ends past bank " + bank + " ("
                    + layout.bankBytes() + " bytes)");
        }
        return offset;
    }

    /** Elements per chunk of every part of a reduce-scatter of {@code countPerRank} elements per rank. */
    static long reduceScatterChunkElements(long countPerRank, int elementBytes, long bankBytes, int worldSize) {
        return slotChunkElements(countPerRank, elementBytes, bankBytes, worldSize);
    }

    /** Bytes per chunk of every block of an all-to-all of {@code bytesPerRank} per block. */
    static long allToAllChunkBytes(long bytesPerRank, long bankBytes, int worldSize) {
        return slotChunkElements(bytesPerRank, 1, bankBytes, worldSize);
    }

    // ---- scale ---------------------------------------------------------------------------------

    /** The most blocks of a scale kernel (grid-stride: any grid works). */
    static final int SCALE_MAX_BLOCKS = 1024;

    /** Blocks of an element-wise scale of {@code count} elements: one vector per thread, 1..{@value #SCALE_MAX_BLOCKS}. */
    static int scaleBlocks(long count, int elementBytes) { return blocksFor(count * elementBytes, SCALE_MAX_BLOCKS); }

    // ---- slices (device: block_range) ------------------------------------------------------------

    /** Elements per block when {@code len} is split over {@code blocks} in whole vectors. */
    static long sliceElements(long len, int blocks, int vectorElements) {
        return roundUp(ceilDiv(len, blocks), vectorElements);
    }

    /** Block {@code block}'s range {@code [lo, hi)} of a span of {@code len} cut into slices of {@code slice}. */
    static long[] blockRange(long len, long slice, int block) {
        long lo = Math.min(block * slice, len);
        return new long[] {lo, Math.min(lo + slice, len)};
    }
}
