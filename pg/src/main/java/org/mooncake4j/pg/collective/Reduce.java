package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

/** Reduce to a root: every member streams its buffer to the root, which combines the chunks in rank order. */
public final class Reduce {
    private Reduce() {}

    public static void run(CollectiveContext c, DType dtype, ReduceOp op, MemorySegment data, long count, int root) {
        int[] m = c.members;
        int n = m.length;
        if (n == 1) return;
        int es = dtype.byteSize();
        long bytes = count * es;
        long steps = CollectiveContext.chunks(bytes, c.payload);
        if (c.rank == root) c.backup.save(data, bytes); // the root overwrites its input chunk by chunk
        for (long k = 0; k < steps; k++) {
            long chunk = c.chunkBytes(bytes, k);
            if (c.rank != root) {
                c.sendChunk(root, data, 0, bytes, k);
                continue;
            }
            for (int i = 0; i < n; i++) {
                if (m[i] == c.rank) {
                    c.redSrc[i] = data;
                    c.redOff[i] = k * c.payload;
                } else {
                    c.redSrc[i] = c.recvChunk(m[i], chunk);
                    c.redOff[i] = 0;
                }
            }
            Reduction.reduce(dtype, op, c.redSrc, c.redOff, n, c.scratch, 0, chunk / es);
            for (int p : m) if (p != c.rank) c.done(p);
            MemorySegment.copy(c.scratch, 0, data, k * c.payload, chunk);
        }
    }
}
