package org.mooncake4j.pg.collective;

/**
 * The layout of each rank's registered segment for one group. Every rank has the same layout, so a
 * peer computes where to write in this rank's segment without asking.
 *
 * <pre>
 * flags (one 64-byte line per sequence word, so writers from different processes never share a line):
 *   COLL_DATA[s]  chunks rank s has put into my collective inbox        (written by s)
 *   COLL_ACK[d]   chunks rank d has consumed from its inbox-from-me     (written by d)
 *   P2P_DATA[s], P2P_ACK[d]: the same for the point-to-point lane
 *   SYNC[s]       the last operation rank s holds the complete result of  (written by s)
 *   DESC[s]       the last operation rank s described its registered buffers for (written by s)
 *   DESC_BODY[s]  that description: {@link RegisteredAllReduce} words          (written by s)
 * inboxes: for each source s, two banks of {@code slotBytes} per lane (double buffering)
 * slot: a 64-byte {@link ChunkHeader} then payload
 * </pre>
 *
 * @param slots     rank slots (max world size)
 * @param slotBytes bytes of one inbox bank, header included
 */
public record GroupLayout(int slots, long slotBytes) {
    static final long LINE = 64;
    public static final long HEADER_BYTES = 64;
    static final int LANE_COLL = 0;
    static final int LANE_P2P = 1;

    public GroupLayout {
        if (slotBytes % 4096 != 0 || slotBytes < 8192) throw new IllegalArgumentException("slot bytes must be a multiple of 4096 and >= 8192: " + slotBytes);
    }

    long dataFlag(int lane, int src) { return ((long) (2 * lane) * slots + src) * LINE; }

    long ackFlag(int lane, int dst) { return ((long) (2 * lane + 1) * slots + dst) * LINE; }

    long syncFlag(int src) { return (4L * slots + src) * LINE; }

    long descFlag(int src) { return (5L * slots + src) * LINE; }

    long descBody(int src) { return (6L * slots + src) * LINE; }

    long flagsEnd() { return align(7L * slots * LINE, 4096); }

    long inbox(int lane, int src, int bank) { return flagsEnd() + (((long) lane * slots + src) * 2 + bank) * slotBytes; }

    public long payloadBytes() { return slotBytes - HEADER_BYTES; }

    public long segmentBytes() { return flagsEnd() + 2L * slots * 2 * slotBytes; }

    private static long align(long v, long a) { return (v + a - 1) / a * a; }
}
