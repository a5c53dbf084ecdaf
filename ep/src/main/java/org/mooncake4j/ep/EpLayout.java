package org.mooncake4j.ep;

/**
 * Where each region of one rank's EP segment lies for one dispatch shape ({@code maxTokens} = M,
 * {@code hidden} = H, {@code numRanks} = R, {@code numExperts} = E, L = E / R local experts). The
 * signal words sit at fixed offsets (they depend on R only); the rest follows them:
 *
 * <pre>
 * dispatch signals   [R] sequence words, one 64-byte line each     written by source s, value = dispatch seq
 * combine signals    [R] sequence words, one 64-byte line each     written by expert rank r, value = combine seq
 * counts             int32 [R][L]       rows source s sent to local expert j this round
 * recvCount          int32 [L]          the dispatch result recvCount
 * staging            [L][R][M] messages of align16(16 + 2H) bytes: header (int32 token, int32 topk slot,
 *                    int64 dispatch seq), then H bf16 or H e4m3 bytes + ceil(H/128) fp32 scales;
 *                    written by source s into block (j, s); the CUDA path's deduplicated dispatch uses
 *                    source s's blocks (0, s) for a 16-byte header per row and (L - 1, s) for one
 *                    message per token (CudaEpPath.dedup, ep.cu)
 * recvX              [L][R*M] rows of 2H bytes (bf16) or H bytes (fp8): the packed dispatch result
 * recvScales         fp32 [L][R*M][ceil(H/128)]
 * combineSend        bf16 [L][R*M][H]   nextCombineBuffer(handle)
 * combineRecv        bf16 [E][M][H]     written by the rank owning expert e at row (e, source token); the
 *                    CUDA path's reduced combine (CudaEpPath.reducedCombine) uses rows [R][M] instead: row
 *                    (r, t) = expert rank r's partial sum for token t, and behind them each source s's
 *                    {int32 expert, float32 weight} [M][topK] table at [s], written by s before its partials
 *                    are formed (the table word is the second u64 of s's combine signal line)
 * </pre>
 *
 * Every region starts on a 64-byte boundary. Immutable.
 */
record EpLayout(int maxTokens, int hidden, int numRanks, int numExperts, int localExperts, int scaleBlocks,
                long counts, long recvCount, long staging, long messageBytes, long recvX, long recvScales,
                long combineSend, long combineRecv, long totalBytes) {
    static final int LINE = 64;
    static final int HEADER_BYTES = 16;
    static final int SCALE_CHANNELS = 128;

    static long signalBytes(int numRanks) { return 2L * numRanks * LINE; }

    static long dispatchSignal(int src) { return (long) src * LINE; }

    static long combineSignal(int numRanks, int src) { return (long) (numRanks + src) * LINE; }

    /** @throws ArithmeticException when the regions do not fit in a long */
    static EpLayout of(int maxTokens, int hidden, int numRanks, int numExperts) {
        int local = numExperts / numRanks;
        int blocks = (hidden + SCALE_CHANNELS - 1) / SCALE_CHANNELS;
        long rows = Math.multiplyExact((long) numExperts, maxTokens); // L * R * M = E * M
        long rowBf16 = 2L * hidden;
        long message = align(HEADER_BYTES + rowBf16, 16);
        long off = signalBytes(numRanks);
        long counts = off;
        off = align(off + 4L * numRanks * local, LINE);
        long recvCount = off;
        off = align(off + 4L * local, LINE);
        long staging = off;
        off = align(Math.addExact(off, Math.multiplyExact(rows, message)), LINE);
        long recvX = off;
        off = align(Math.addExact(off, Math.multiplyExact(rows, rowBf16)), LINE);
        long recvScales = off;
        off = align(Math.addExact(off, Math.multiplyExact(rows, 4L * blocks)), LINE);
        long combineSend = off;
        off = align(Math.addExact(off, Math.multiplyExact(rows, rowBf16)), LINE);
        long combineRecv = off;
        off = align(Math.addExact(off, Math.multiplyExact(rows, rowBf16)), LINE);
        return new EpLayout(maxTokens, hidden, numRanks, numExperts, local, blocks, counts, recvCount, staging, message, recvX,
                recvScales, combineSend, combineRecv, off);
    }

    private static long align(long v, long a) { return Math.addExact(v, a - 1) / a * a; }

    /** Rows of one local expert's block in recvX / combineSend: R * M. */
    long expertRows() { return (long) numRanks * maxTokens; }

    long countWord(int src, int j) { return counts + 4L * ((long) src * localExperts + j); }

    long stagingRow(int j, int src, int i) { return staging + (((long) j * numRanks + src) * maxTokens + i) * messageBytes; }

    long recvRow(int j, long p, boolean fp8) { return recvX + ((long) j * expertRows() + p) * (fp8 ? hidden : 2L * hidden); }

    long scaleRow(int j, long p) { return recvScales + ((long) j * expertRows() + p) * 4L * scaleBlocks; }

    long combineSendRow(int j, long p) { return combineSend + ((long) j * expertRows() + p) * 2L * hidden; }

    long combineRecvRow(long expert, long token) { return combineRecv + (expert * maxTokens + token) * 2L * hidden; }
}
