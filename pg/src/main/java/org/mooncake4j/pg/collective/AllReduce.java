package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

/**
 * All-reduce in place. Small messages: one-shot (every rank sends its whole buffer to every peer and
 * reduces all of them itself, one round trip). Large messages: reduce-scatter then all-gather in
 * blocks of one chunk per peer, so each rank reduces only its 1/n share and the staging banks bound
 * memory, not the message size. Either way each element is combined in rank order by exactly one
 * code path, so every rank ends with bitwise-identical bytes. Large messages in registered memory
 * between processes of one host are reduced in place instead ({@link RegisteredAllReduce}).
 */
public final class AllReduce {
    /** Messages up to this many bytes (and one chunk) use the one-shot algorithm. */
    public static final long ONE_SHOT_MAX = Long.getLong("mooncake4j.allreduce.oneShotMax", 64 * 1024);

    private static final java.util.concurrent.atomic.AtomicLong IN_PLACE = new java.util.concurrent.atomic.AtomicLong();

    private AllReduce() {}

    /** All-reduces this process ran over registered memory read in place (for tests and diagnostics). */
    public static long inPlaceRuns() { return IN_PLACE.get(); }

    public static void run(CollectiveContext c, DType dtype, ReduceOp op, MemorySegment data, long count) {
        int n = c.size();
        if (n == 1) return; // reducing one contribution (AVG divides by 1) leaves it unchanged
        long bytes = count * dtype.byteSize();
        if (bytes <= Math.min(ONE_SHOT_MAX, c.payload)) oneShot(c, dtype, op, data, count);
        else if (c.registered != null && c.registered.applicable() && c.registered.run(dtype, op, data, count)) IN_PLACE.incrementAndGet();
        else reduceScatterAllGather(c, dtype, op, data, count);
    }

    static void oneShot(CollectiveContext c, DType dtype, ReduceOp op, MemorySegment data, long count) {
        long bytes = count * dtype.byteSize();
        int[] m = c.members;
        for (int p : m) if (p != c.rank) c.sendChunk(p, data, 0, bytes, 0);
        for (int i = 0; i < m.length; i++) {
            c.redSrc[i] = m[i] == c.rank ? data : c.recvChunk(m[i], bytes);
            c.redOff[i] = 0;
        }
        Reduction.reduce(dtype, op, c.redSrc, c.redOff, m.length, c.scratch, 0, count);
        for (int p : m) if (p != c.rank) c.done(p);
        c.sync(); // the input stays intact until every member holds the result: a redo needs no backup
        MemorySegment.copy(c.scratch, 0, data, 0, bytes);
    }

    static void reduceScatterAllGather(CollectiveContext c, DType dtype, ReduceOp op, MemorySegment data, long count) {
        int[] m = c.members;
        int n = m.length;
        int es = dtype.byteSize();
        int me = c.position();
        long perRank = c.payload / es;           // elements one rank reduces per block
        long block = perRank * n;
        c.backup.saveAsync(data, count * es);   // copied alongside the first steps; overwriting waits for it
        for (long b0 = 0; b0 < count; b0 += block) {
            long bl = Math.min(block, count - b0);
            // reduce-scatter step: part j of the block goes to member j
            for (int j = 0; j < n; j++) {
                if (m[j] == c.rank) continue;
                c.sendChunk(m[j], data, (b0 + partStart(bl, n, j)) * es, partLen(bl, n, j) * es, 0);
            }
            long myStart = (b0 + partStart(bl, n, me)) * es;
            long myLen = partLen(bl, n, me);
            for (int i = 0; i < n; i++) {
                if (m[i] == c.rank) {
                    c.redSrc[i] = data;
                    c.redOff[i] = myStart;
                } else {
                    c.redSrc[i] = c.recvChunk(m[i], myLen * es);
                    c.redOff[i] = 0;
                }
            }
            // reduced in place: my part of the input is read block by block before it is overwritten
            c.backup.awaitSaved((b0 + bl) * es);
            Reduction.reduce(dtype, op, c.redSrc, c.redOff, n, data, myStart, myLen);
            for (int p : m) if (p != c.rank) c.done(p);
            // all-gather step: my reduced part goes to everyone
            for (int p : m) if (p != c.rank) c.sendChunk(p, data, myStart, myLen * es, 0);
            for (int j = 0; j < n; j++) {
                if (m[j] == c.rank) continue;
                long len = partLen(bl, n, j) * es;
                MemorySegment part = c.recvChunk(m[j], len);
                MemorySegment.copy(part, 0, data, (b0 + partStart(bl, n, j)) * es, len);
                c.done(m[j]);
            }
        }
    }

    /** Start of part j when {@code len} elements are split as evenly as possible into n parts. */
    static long partStart(long len, int n, int j) {
        long q = len / n, r = len % n;
        return j * q + Math.min(j, r);
    }

    static long partLen(long len, int n, int j) {
        long q = len / n, r = len % n;
        return q + (j < r ? 1 : 0);
    }
}
