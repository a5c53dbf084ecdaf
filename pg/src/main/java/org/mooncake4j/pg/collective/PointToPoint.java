package org.mooncake4j.pg.collective;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import org.mooncake4j.core.Deadline;

/**
 * Point-to-point messages on the P2P lane. Messages to one peer leave in the order they were posted
 * and are chunked through the peer's two P2P banks; the receiver matches them to posted receives by
 * tag. A message whose tag nobody is waiting for yet is copied aside ("unexpected" messages, the only
 * allocation here) so a receive for another tag can make progress behind it — tags never deadlock,
 * and per (peer, tag) order is kept.
 *
 * <p>Threading: {@link #send} for one destination and {@link #recv} for one source must each be
 * called by one thread at a time (the group uses one thread per peer and direction).
 */
public final class PointToPoint {
    private final Channels ch;
    private final long payload;
    private final long[] sentMessages;
    private final Incoming[] incoming;

    /** Receive-side state of one source: its unexpected messages and the message being assembled. */
    private static final class Incoming {
        final Map<Integer, ArrayDeque<MemorySegment>> stashed = new HashMap<>();
        MemorySegment assembling;
        int assemblingTag;
        boolean assemblingIsUser;
    }

    public PointToPoint(Channels ch) {
        this.ch = ch;
        this.payload = ch.layout().payloadBytes();
        int n = ch.layout().slots();
        sentMessages = new long[n];
        incoming = new Incoming[n];
        for (int i = 0; i < n; i++) incoming[i] = new Incoming();
    }

    /** Sends {@code bytes} of {@code data} to {@code dst} under {@code tag}; returns when the last chunk is written. */
    public void send(int dst, int tag, long epoch, MemorySegment data, long bytes, Deadline deadline) {
        long msg = ++sentMessages[dst];
        long steps = CollectiveContext.chunks(bytes, payload);
        for (long k = 0; k < steps; k++) {
            long start = k * payload;
            int n = (int) Math.max(0, Math.min(payload, bytes - start));
            ch.put(GroupLayout.LANE_P2P, dst, epoch, msg, tag, data, start, n, bytes, start, deadline);
        }
    }

    /**
     * Receives the next message from {@code src} with {@code tag} into {@code data}, which must be
     * exactly the message's size.
     */
    public void recv(int src, int tag, MemorySegment data, long bytes, Deadline deadline) {
        Incoming in = incoming[src];
        ArrayDeque<MemorySegment> q = in.stashed.get(tag);
        if (q != null && !q.isEmpty()) {
            MemorySegment m = q.poll();
            checkSize(src, tag, m.byteSize(), bytes);
            MemorySegment.copy(m, 0, data, 0, bytes);
            return;
        }
        while (true) {
            MemorySegment slot = ch.take(GroupLayout.LANE_P2P, src, deadline);
            int t = ChunkHeader.opcode(slot);
            int n = ChunkHeader.payload(slot);
            long total = ChunkHeader.total(slot), offset = ChunkHeader.offset(slot);
            if (in.assembling == null) {
                if (t == tag) {
                    try {
                        checkSize(src, tag, total, bytes);
                    } catch (IllegalArgumentException e) {
                        ch.release(GroupLayout.LANE_P2P, src, deadline);
                        throw e;
                    }
                    in.assembling = data;
                    in.assemblingIsUser = true;
                } else {
                    in.assembling = Arena.ofAuto().allocate(Math.max(1, total)).asSlice(0, total);
                    in.assemblingIsUser = false;
                }
                in.assemblingTag = t;
            }
            if (n > 0) MemorySegment.copy(slot, GroupLayout.HEADER_BYTES, in.assembling, offset, n);
            ch.release(GroupLayout.LANE_P2P, src, deadline);
            if (offset + n >= total) {
                MemorySegment done = in.assembling;
                boolean mine = in.assemblingIsUser;
                in.assembling = null;
                if (mine) return;
                in.stashed.computeIfAbsent(in.assemblingTag, k -> new ArrayDeque<>()).add(done);
            }
        }
    }

    private static void checkSize(int src, int tag, long sent, long expected) {
        if (sent != expected) {
            throw new IllegalArgumentException("recv from rank " + src + " with tag " + tag + ": the message has " + sent
                    + " bytes but the receive tensor has " + expected + ". Sender and receiver must use tensors of the same size and dtype.");
        }
    }
}
