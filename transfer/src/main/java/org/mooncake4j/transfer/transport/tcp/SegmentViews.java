package org.mooncake4j.transfer.transport.tcp;

import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;

/**
 * A few {@link ByteBuffer} views of memory segments, kept so that moving a frame's payload between a
 * segment and a socket allocates nothing: callers set the view's position and limit and hand it to
 * the channel. Keyed by segment identity; the engine's segments and callers' long-lived buffers hit.
 *
 * <p>Not thread-safe: one instance per thread or per lock, because callers mutate the views.
 */
final class SegmentViews {
    private static final int SIZE = 8;
    private final MemorySegment[] keys = new MemorySegment[SIZE];
    private final ByteBuffer[] views = new ByteBuffer[SIZE];
    private int next;

    /**
     * A view of the whole of {@code s}, or null when none can be used directly: heap segments (the
     * JDK would stage them through a temporary direct buffer as large as the transfer) and segments
     * larger than a ByteBuffer can address.
     */
    ByteBuffer view(MemorySegment s) {
        if (!s.isNative() || s.byteSize() > Integer.MAX_VALUE) return null;
        for (int i = 0; i < SIZE; i++) {
            if (keys[i] == s) return views[i];
        }
        ByteBuffer v = s.asByteBuffer();
        keys[next] = s;
        views[next] = v;
        next = (next + 1) % SIZE;
        return v;
    }

    /** Positions {@code v} on {@code [offset, offset + length)} of its segment. */
    static ByteBuffer range(ByteBuffer v, long offset, long length) {
        v.clear();
        v.limit((int) (offset + length));
        v.position((int) offset);
        return v;
    }
}
