package org.mooncake4j.pg.collective;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.locks.LockSupport;

/**
 * A copy of an in-place operation's input, taken before the operation overwrites it, so that a
 * redo after a membership change starts from the caller's original data.
 *
 * <p>Large inputs are copied by a background thread while the operation's first steps run
 * ({@link #saveAsync}); the operation calls {@link #awaitSaved} before it overwrites a range, so the
 * copy costs no time on a host with a spare core. Owned by one group's operation thread; the copy
 * thread only touches the buffer and the progress counter.
 */
public final class Backup implements AutoCloseable {
    private static final long STEP = 1 << 20;
    private Arena arena;
    private MemorySegment buffer = MemorySegment.NULL;
    private MemorySegment target;
    private long bytes;
    /** Bytes of the current input already copied; -1 when the copy failed. */
    private volatile long saved;
    private ExecutorService copier;
    private Restorer restorer;

    /** Puts back an input that lives outside host memory (a device copy taken by the operation). */
    public interface Restorer {
        void restore();
    }

    private void ensureCapacity(long n) {
        if (buffer.byteSize() >= n) return;
        if (arena != null) arena.close();
        arena = Arena.ofShared();
        buffer = arena.allocate(n, 64);
    }

    /** Remembers {@code data[0..bytes)} now. */
    public void save(MemorySegment data, long n) {
        ensureCapacity(n);
        MemorySegment.copy(data, 0, buffer, 0, n);
        target = data;
        bytes = n;
        saved = n;
    }

    /** Starts remembering {@code data[0..bytes)} on the copy thread; {@link #awaitSaved} before overwriting. */
    public void saveAsync(MemorySegment data, long n) {
        ensureCapacity(n);
        target = data;
        bytes = n;
        saved = 0;
        if (copier == null) {
            copier = Executors.newSingleThreadExecutor(Thread.ofPlatform().daemon().name("mooncake-pg-backup").factory());
        }
        MemorySegment dst = buffer;
        copier.execute(() -> {
            try {
                for (long off = 0; off < n; off += STEP) {
                    long len = Math.min(STEP, n - off);
                    MemorySegment.copy(data, off, dst, off, len);
                    saved = off + len;
                }
            } catch (RuntimeException e) {
                saved = -1;
            }
        });
    }

    /** Waits until the first {@code upTo} bytes are saved (the copy runs at memory speed: no deadline needed beyond its length). */
    public void awaitSaved(long upTo) {
        long s;
        int spins = 0;
        while ((s = saved) < Math.min(upTo, bytes)) {
            if (s < 0) throw new IllegalStateException("the backup copy of the operation's input failed");
            if (++spins < 100) Thread.onSpinWait();
            else LockSupport.parkNanos(20_000);
        }
    }

    /**
     * Remembers that this attempt saved its input elsewhere (e.g. in device memory): {@link #restore}
     * calls {@code r} instead of copying host memory. Cleared, like a host save, when the next attempt begins.
     */
    public void saveWith(Restorer r) {
        restorer = r;
    }

    /** Puts the saved input back, if this operation saved one. */
    public void restore() {
        if (restorer != null) {
            restorer.restore();
            return;
        }
        if (target == null) return;
        awaitSaved(bytes);
        MemorySegment.copy(buffer, 0, target, 0, bytes);
    }

    public void clear() {
        restorer = null;
        if (target != null) awaitSaved(bytes); // never leave the copy thread reading a buffer the caller may free
        target = null;
    }

    @Override
    public void close() {
        target = null;
        if (copier != null) {
            copier.shutdownNow();
            copier = null;
        }
        if (arena != null) arena.close();
        arena = null;
        buffer = MemorySegment.NULL;
    }
}
