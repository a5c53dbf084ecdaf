package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

/**
 * Reduce-scatter: {@code in} holds one part of {@code count} elements per rank id (part r at
 * {@code r * count}); {@code out} receives this rank's part reduced over the members, in rank order.
 * Parts of ranks outside the membership (dropped ones) are nobody's. Pipelined one chunk per peer per step.
 */
public final class ReduceScatter {
    private ReduceScatter() {}

    public static void run(CollectiveContext c, DType dtype, ReduceOp op, MemorySegment in, MemorySegment out, long count) {
        int[] m = c.members;
        int n = m.length;
        int es = dtype.byteSize();
        long partBytes = count * es;
        if (n == 1) { // one contribution: every op, AVG included, leaves it unchanged
            MemorySegment.copy(in, c.rank * partBytes, out, 0, partBytes);
            return;
        }
        long steps = CollectiveContext.chunks(partBytes, c.payload);
        for (long k = 0; k < steps; k++) {
            long chunk = c.chunkBytes(partBytes, k);
            for (int j = 0; j < n; j++) {
                if (m[j] != c.rank) c.sendChunk(m[j], in, m[j] * partBytes, partBytes, k);
            }
            for (int i = 0; i < n; i++) {
                if (m[i] == c.rank) {
                    c.redSrc[i] = in;
                    c.redOff[i] = c.rank * partBytes + k * c.payload;
                } else {
                    c.redSrc[i] = c.recvChunk(m[i], chunk);
                    c.redOff[i] = 0;
                }
            }
            Reduction.reduce(dtype, op, c.redSrc, c.redOff, n, out, k * c.payload, chunk / es);
            for (int p : m) if (p != c.rank) c.done(p);
        }
    }
}
