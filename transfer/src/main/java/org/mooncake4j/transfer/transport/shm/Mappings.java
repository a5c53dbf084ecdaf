package org.mooncake4j.transfer.transport.shm;

import java.lang.foreign.Arena;
import java.util.concurrent.locks.LockSupport;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Unmapping shared memory that other threads may still be using. */
final class Mappings {
    private static final Logger log = LoggerFactory.getLogger(Mappings.class);
    private static final long RETRY_NANOS = 2_000_000_000L;

    private Mappings() {}

    /**
     * Closes a shared arena (unmapping its memory). An NIO transfer in progress on a view of the memory
     * keeps the arena acquired for the duration of one system call, and close fails meanwhile; retry
     * briefly rather than leave the mapping behind. Threads that touch the memory after this get
     * {@link IllegalStateException}, never a crash.
     */
    static void close(Arena arena, String what) {
        long end = System.nanoTime() + RETRY_NANOS;
        while (true) {
            try {
                arena.close();
                return;
            } catch (IllegalStateException e) {
                if (!arena.scope().isAlive()) return;
                if (System.nanoTime() - end > 0) {
                    log.warn("Could not unmap {}: it is still in use by an I/O operation ({}); the mapping stays until the process exits.",
                            what, e.getMessage());
                    return;
                }
                LockSupport.parkNanos(100_000);
            }
        }
    }
}
