package org.mooncake4j.pg.collective;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A copy of an in-place operation's input, taken before the operation overwrites it, so that a
 * redo after a membership change starts from the caller's original data. Owned by one group's
 * operation thread; the buffer grows to the largest input seen and is reused.
 */
public final class Backup implements AutoCloseable {
    private Arena arena;
    private MemorySegment buffer = MemorySegment.NULL;
    private MemorySegment target;
    private long bytes;

    /** Remembers {@code data[0..bytes)}. */
    public void save(MemorySegment data, long bytes) {
        if (buffer.byteSize() < bytes) {
            if (arena != null) arena.close();
            arena = Arena.ofShared();
            buffer = arena.allocate(bytes, 64);
        }
        MemorySegment.copy(data, 0, buffer, 0, bytes);
        this.target = data;
        this.bytes = bytes;
    }

    /** Puts the saved input back, if this operation saved one. */
    public void restore() {
        if (target != null) MemorySegment.copy(buffer, 0, target, 0, bytes);
    }

    public void clear() { target = null; }

    @Override
    public void close() {
        target = null;
        if (arena != null) arena.close();
        arena = null;
        buffer = MemorySegment.NULL;
    }
}
