package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;

/**
 * All-to-all with per-peer sizes: piece i of the input goes to member i, piece i of the output comes
 * from member i. Each pair streams independently in the shared step pipeline; the receiver checks
 * that the sizes it expects match what the sender sends.
 */
public final class AllToAll {
    private AllToAll() {}

    public static void run(CollectiveContext c, MemorySegment[] in, long[] inOff, long[] inLen,
                           MemorySegment[] out, long[] outOff, long[] outLen) {
        int[] m = c.members;
        for (int i = 0; i < m.length; i++) {
            int p = m[i];
            if (p == c.rank) {
                if (inLen[i] != outLen[i]) {
                    throw new IllegalArgumentException("all_to_all: this rank sends " + inLen[i] + " bytes to itself but expects "
                            + outLen[i] + "; input and output split sizes for rank " + p + " must match");
                }
                MemorySegment.copy(in[i], inOff[i], out[i], outOff[i], inLen[i]);
                continue;
            }
            c.sendPiece(p, in[i], inOff[i], inLen[i]);
            c.recvPiece(p, out[i], outOff[i], outLen[i]);
        }
        c.exchange();
    }
}
