package org.mooncake4j.transfer.transport;

import java.util.Arrays;
import org.mooncake4j.transfer.LocalSegment;

/**
 * The segments an engine registered, by the numeric id that tcp frames carry. An id is a slot index
 * (low 16 bits) plus a generation (high bits), so a stale id held by a peer after a segment was
 * closed never reaches a segment registered later in the same slot.
 *
 * <p>Lookups are lock-free and allocate nothing (reader threads do one per frame); changes are rare
 * and copy the slot array under the table's monitor.
 */
public final class LocalSegmentTable {
    private static final int SLOT_BITS = 16;
    private static final int SLOT_MASK = (1 << SLOT_BITS) - 1;

    private record Entry(int id, LocalSegment segment) {}

    private volatile Entry[] slots = new Entry[16];
    private int[] generations = new int[16];

    /** Adds a segment and returns its id. */
    public synchronized int add(LocalSegment segment) {
        Entry[] cur = slots;
        int slot = 0;
        while (slot < cur.length && cur[slot] != null) slot++;
        if (slot > SLOT_MASK) {
            throw new IllegalStateException("too many registered segments (" + (SLOT_MASK + 1) + "): close unused ones");
        }
        Entry[] next = slot < cur.length ? cur.clone() : Arrays.copyOf(cur, cur.length * 2);
        if (generations.length < next.length) generations = Arrays.copyOf(generations, next.length);
        int gen = (generations[slot] + 1) & 0x7FFF;
        generations[slot] = gen == 0 ? 1 : gen;
        int id = (generations[slot] << SLOT_BITS) | slot;
        next[slot] = new Entry(id, segment);
        slots = next;
        return id;
    }

    /** Removes the segment with this id; a no-op when it is not there. */
    public synchronized void remove(int id) {
        Entry[] cur = slots;
        int slot = id & SLOT_MASK;
        if (slot < cur.length && cur[slot] != null && cur[slot].id == id) {
            Entry[] next = cur.clone();
            next[slot] = null;
            slots = next;
        }
    }

    /** The segment registered under {@code id}, or null. */
    public LocalSegment get(int id) {
        Entry[] a = slots;
        int slot = id & SLOT_MASK;
        if (slot >= a.length) return null;
        Entry e = a[slot];
        return e != null && e.id == id ? e.segment : null;
    }
}
