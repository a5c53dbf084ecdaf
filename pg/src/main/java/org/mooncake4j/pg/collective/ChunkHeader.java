package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Flyweight over the 64-byte header at the start of an inbox slot. It lets the receiver check that
 * the chunk belongs to the operation it is running (same epoch, sequence number and kind) and how
 * many payload bytes it carries.
 *
 * <pre>
 *  0  long  epoch         membership epoch of the sender
 *  8  long  opSeq         the group's operation counter (collectives) or message number (P2P)
 * 16  int   opcode        {@link OpCode} ordinal, or the tag for P2P
 * 20  int   payloadBytes  bytes in this chunk
 * 24  long  totalBytes    bytes of the whole message (P2P) or of this pair's piece (collectives)
 * 32  long  offset        offset of this chunk within the message
 * </pre>
 */
final class ChunkHeader {
    static final int EPOCH = 0, OP_SEQ = 8, OPCODE = 16, PAYLOAD = 20, TOTAL = 24, OFFSET = 32;

    private ChunkHeader() {}

    static void write(MemorySegment h, long epoch, long opSeq, int opcode, int payload, long total, long offset) {
        h.set(ValueLayout.JAVA_LONG, EPOCH, epoch);
        h.set(ValueLayout.JAVA_LONG, OP_SEQ, opSeq);
        h.set(ValueLayout.JAVA_INT, OPCODE, opcode);
        h.set(ValueLayout.JAVA_INT, PAYLOAD, payload);
        h.set(ValueLayout.JAVA_LONG, TOTAL, total);
        h.set(ValueLayout.JAVA_LONG, OFFSET, offset);
    }

    static long epoch(MemorySegment h) { return h.get(ValueLayout.JAVA_LONG, EPOCH); }

    static long opSeq(MemorySegment h) { return h.get(ValueLayout.JAVA_LONG, OP_SEQ); }

    static int opcode(MemorySegment h) { return h.get(ValueLayout.JAVA_INT, OPCODE); }

    static int payload(MemorySegment h) { return h.get(ValueLayout.JAVA_INT, PAYLOAD); }

    static long total(MemorySegment h) { return h.get(ValueLayout.JAVA_LONG, TOTAL); }

    static long offset(MemorySegment h) { return h.get(ValueLayout.JAVA_LONG, OFFSET); }
}
