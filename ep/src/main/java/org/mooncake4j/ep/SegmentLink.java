package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.RemoteSegment;

/**
 * One rank's EP segment as the data path sees it: the peers' through the transfer engine, this rank's
 * own as plain memory, so the algorithm sends to itself exactly as it sends to a peer. Writes from one
 * thread take effect in issue order, and a {@link #publish} after every earlier write.
 */
interface SegmentLink {
    void write(long offset, MemorySegment src, long srcOffset, long length, Deadline deadline);

    void publish(long offset, long value, Deadline deadline);

    boolean alive();

    static SegmentLink of(RemoteSegment peer) {
        return new SegmentLink() {
            @Override
            public void write(long offset, MemorySegment src, long srcOffset, long length, Deadline deadline) {
                peer.write(offset, src, srcOffset, length, deadline);
            }

            @Override
            public void publish(long offset, long value, Deadline deadline) { peer.publish(offset, value, deadline); }

            @Override
            public boolean alive() { return peer.alive(); }
        };
    }

    static SegmentLink local(MemorySegment memory) {
        return new SegmentLink() {
            @Override
            public void write(long offset, MemorySegment src, long srcOffset, long length, Deadline deadline) {
                MemorySegment.copy(src, srcOffset, memory, offset, length);
            }

            @Override
            public void publish(long offset, long value, Deadline deadline) { Waiter.publish(memory, offset, value); }

            @Override
            public boolean alive() { return true; }
        };
    }
}
