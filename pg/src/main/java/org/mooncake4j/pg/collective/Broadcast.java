package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;

/** Broadcast: the root streams its buffer to every member, one chunk per peer per step. */
public final class Broadcast {
    private Broadcast() {}

    public static void run(CollectiveContext c, MemorySegment data, long bytes, int root) {
        for (int p : c.members) {
            if (p == c.rank) continue;
            if (c.rank == root) c.sendPiece(p, data, 0, bytes);
            else if (p == root) c.recvPiece(p, data, 0, bytes);
        }
        c.exchange();
    }
}
