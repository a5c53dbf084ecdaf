package org.mooncake4j.transfer;

import java.lang.foreign.MemorySegment;

/**
 * Memory this engine registered and published: peers on the same host map it (shm); remote peers
 * reach it through this engine's TCP server. Owned by the engine; {@link #close()} unregisters it
 * (removes its descriptor and unmaps it). Peers' writes land in {@link #memory()} concurrently with
 * local access: read flags with acquire semantics ({@link org.mooncake4j.core.internal.Waiter}).
 */
public interface LocalSegment extends AutoCloseable {
    String name();

    MemorySegment memory();

    default long size() { return memory().byteSize(); }

    /**
     * Removes the segment's backing file (if it has one) while the memory stays mapped and registered:
     * peers that have mapped it keep working, a peer that opens it later reaches it over tcp, and a
     * process killed afterwards leaves nothing in /dev/shm. Call it once every same-host peer that
     * needs shm access has opened the segment.
     */
    void unlinkFile();

    @Override
    void close();
}
