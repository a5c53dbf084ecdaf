package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;

/** Gather to a root ({@code outs} used on the root only) and scatter from a root ({@code ins} on the root only). */
public final class Gather {
    private Gather() {}

    public static void gather(CollectiveContext c, MemorySegment in, long bytes, MemorySegment[] outs, int root) {
        int[] m = c.members;
        for (int i = 0; i < m.length; i++) {
            int p = m[i];
            if (c.rank == root) {
                if (p == c.rank) MemorySegment.copy(in, 0, outs[i], 0, bytes);
                else c.recvPiece(p, outs[i], 0, bytes);
            } else if (p == root) {
                c.sendPiece(p, in, 0, bytes);
            }
        }
        c.exchange();
    }

    public static void scatter(CollectiveContext c, MemorySegment[] ins, long bytes, MemorySegment out, int root) {
        int[] m = c.members;
        for (int i = 0; i < m.length; i++) {
            int p = m[i];
            if (c.rank == root) {
                if (p == c.rank) MemorySegment.copy(ins[i], 0, out, 0, bytes);
                else c.sendPiece(p, ins[i], 0, bytes);
            } else if (p == root) {
                c.recvPiece(p, out, 0, bytes);
            }
        }
        c.exchange();
    }
}
