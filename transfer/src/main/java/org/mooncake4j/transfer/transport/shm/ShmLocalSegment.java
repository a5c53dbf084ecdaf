package org.mooncake4j.transfer.transport.shm;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.concurrent.atomic.AtomicBoolean;
import org.mooncake4j.transfer.LocalSegment;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A local segment backed by a file that same-host peers map. Owned by the engine that registered it;
 * the memory is valid until {@link #close()}, which unregisters the segment (through the engine's
 * callback), unmaps it and deletes its file. Peers that still map the file keep their pages until
 * they unmap them; their later writes reach nobody.
 *
 * <p>Thread-safe; {@link #close()} is idempotent.
 */
public final class ShmLocalSegment implements LocalSegment {
    private static final Logger log = LoggerFactory.getLogger(ShmLocalSegment.class);

    private final String name;
    private final Path file;
    private final Arena arena;
    private final MemorySegment memory;
    private final Runnable unregister;
    private final AtomicBoolean closed = new AtomicBoolean();

    ShmLocalSegment(String name, Path file, Arena arena, MemorySegment memory, Runnable unregister) {
        this.name = name;
        this.file = file;
        this.arena = arena;
        this.memory = memory;
        this.unregister = unregister;
    }

    @Override public String name() { return name; }

    @Override public MemorySegment memory() { return memory; }

    /** The file peers map. */
    public Path file() { return file; }

    public boolean isOpen() { return !closed.get(); }

    @Override
    public void unlinkFile() {
        ShmFiles.deleteQuietly(file);
        log.debug("Unlinked {} of segment {}: peers keep their mappings, later ones connect over tcp", file, name);
    }

    @Override
    public void close() {
        if (!closed.compareAndSet(false, true)) return;
        try {
            unregister.run();
        } catch (RuntimeException e) {
            log.warn("Unregistering segment {} failed: {}; its descriptor may remain in the store until a process of the same engine registers it again.",
                    name, e.toString());
        }
        Mappings.close(arena, "segment " + name + " (" + file + ")");
        ShmFiles.deleteQuietly(file);
        log.info("Closed segment {} and deleted {}", name, file);
    }

    @Override
    public String toString() { return "LocalSegment[" + name + ", " + memory.byteSize() + " bytes, " + file + "]"; }
}
