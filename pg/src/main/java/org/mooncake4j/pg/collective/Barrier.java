package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;

/** Barrier: an empty chunk to and from every member; returns once every member has entered. */
public final class Barrier {
    private Barrier() {}

    public static void run(CollectiveContext c) {
        for (int p : c.members) {
            if (p == c.rank) continue;
            c.sendPiece(p, MemorySegment.NULL, 0, 0);
            c.recvPiece(p, MemorySegment.NULL, 0, 0);
        }
        c.exchange();
    }
}
