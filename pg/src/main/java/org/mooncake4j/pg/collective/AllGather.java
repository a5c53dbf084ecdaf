package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;

/** All-gather: every member streams its buffer to every other; {@code outs[i]} receives member i's (rank order). */
public final class AllGather {
    private AllGather() {}

    public static void run(CollectiveContext c, MemorySegment in, long bytes, MemorySegment[] outs, long[] outOffsets) {
        int[] m = c.members;
        for (int i = 0; i < m.length; i++) {
            int p = m[i];
            if (p == c.rank) {
                if (outs[i].address() + outOffsets[i] != in.address()) MemorySegment.copy(in, 0, outs[i], outOffsets[i], bytes);
                continue;
            }
            c.sendPiece(p, in, 0, bytes);
            c.recvPiece(p, outs[i], outOffsets[i], bytes);
        }
        c.exchange();
    }
}
