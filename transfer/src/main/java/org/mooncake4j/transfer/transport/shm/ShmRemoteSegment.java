package org.mooncake4j.transfer.transport.shm;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.TransferException;
import org.mooncake4j.transfer.transport.AsyncRemoteSegment;
import org.mooncake4j.transfer.transport.PeerLink;
import org.mooncake4j.transfer.transport.SegmentRanges;
import org.mooncake4j.transfer.transport.TransferCompletion;
import org.mooncake4j.transfer.transport.TransferHandle;

/**
 * A same-host peer's segment, mapped from its file: a write is one memcpy into the peer's pages, a
 * publish a release store plus a futex wake. Nothing here blocks, so deadlines only matter to the
 * caller's own waits. Liveness comes from the peer's {@link PeerLink} (its TCP connection): once the
 * peer is gone every call fails, although the mapping itself stays valid.
 *
 * <p>Thread-safe. Owned by the engine, which unmaps it when the engine closes or the segment is
 * re-opened after its peer failed; calls after that fail with {@link TransferException}.
 */
public final class ShmRemoteSegment implements AsyncRemoteSegment, AutoCloseable {
    private final String name;
    private final String engineName;
    private final Path file;
    private final long size;
    private final Arena arena;
    private final MemorySegment memory;
    private final PeerLink link;

    private ShmRemoteSegment(String name, String engineName, Path file, long size, Arena arena, MemorySegment memory, PeerLink link) {
        this.name = name;
        this.engineName = engineName;
        this.file = file;
        this.size = size;
        this.arena = arena;
        this.memory = memory;
        this.link = link;
    }

    /** Maps a peer's segment file of {@code size} bytes. */
    public static ShmRemoteSegment map(String name, String engineName, Path file, long size, PeerLink link) {
        Arena arena = Arena.ofShared();
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            long actual = ch.size();
            if (actual < size) {
                throw new TransferException("The file " + file + " of segment " + name + " (engine " + engineName + ") has " + actual
                        + " bytes but its descriptor says " + size + ": the descriptor is stale or the file was replaced. Re-register the segment on the peer.");
            }
            MemorySegment memory = ch.map(FileChannel.MapMode.READ_WRITE, 0, size, arena);
            return new ShmRemoteSegment(name, engineName, file, size, arena, memory, link);
        } catch (IOException e) {
            arena.close();
            throw new TransferException("Cannot map " + file + " of segment " + name + " (engine " + engineName + "): " + e
                    + ". The peer may have closed the segment; both processes must see the same /dev/shm (same host, same IPC namespace).", e);
        } catch (RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    @Override public String name() { return name; }

    @Override public long size() { return size; }

    @Override public String engineName() { return engineName; }

    @Override public String transport() { return "shm"; }

    @Override public boolean alive() { return link.alive(); }

    @Override public MemorySegment mapping() { return memory; }

    /** The mapped file. */
    public Path file() { return file; }

    @Override
    public void write(long remoteOffset, MemorySegment src, long srcOffset, long length, Deadline deadline) {
        SegmentRanges.check(name, size, remoteOffset, length);
        SegmentRanges.checkLocal(name, src.byteSize(), srcOffset, length);
        if (!link.alive()) throw link.unreachable(name);
        try {
            MemorySegment.copy(src, srcOffset, memory, remoteOffset, length);
        } catch (IllegalStateException e) {
            throw unmapped(e);
        }
    }

    @Override
    public void read(long remoteOffset, MemorySegment dst, long dstOffset, long length, Deadline deadline) {
        SegmentRanges.check(name, size, remoteOffset, length);
        SegmentRanges.checkLocal(name, dst.byteSize(), dstOffset, length);
        if (!link.alive()) throw link.unreachable(name);
        try {
            MemorySegment.copy(memory, remoteOffset, dst, dstOffset, length);
        } catch (IllegalStateException e) {
            throw unmapped(e);
        }
    }

    @Override
    public void publish(long remoteOffset, long value, Deadline deadline) {
        SegmentRanges.checkWord(name, size, remoteOffset);
        if (!link.alive()) throw link.unreachable(name);
        try {
            Waiter.publish(memory, remoteOffset, value);
        } catch (IllegalStateException e) {
            throw unmapped(e);
        }
    }

    @Override
    public TransferHandle startWrite(long remoteOffset, MemorySegment src, long srcOffset, long length,
                                     Deadline sendDeadline, TransferCompletion completion) {
        try {
            write(remoteOffset, src, srcOffset, length, sendDeadline);
            completion.completed(length);
        } catch (TransferException e) {
            completion.failed(e.getMessage());
        }
        return TransferHandle.DONE;
    }

    @Override
    public TransferHandle startRead(long remoteOffset, MemorySegment dst, long dstOffset, long length,
                                    Deadline sendDeadline, TransferCompletion completion) {
        try {
            read(remoteOffset, dst, dstOffset, length, sendDeadline);
            completion.completed(length);
        } catch (TransferException e) {
            completion.failed(e.getMessage());
        }
        return TransferHandle.DONE;
    }

    private TransferException unmapped(IllegalStateException e) {
        return new TransferException("Segment " + name + " of engine " + engineName + " is no longer mapped (" + e.getMessage()
                + "): this engine closed it, or re-opened it after the peer failed. Use the RemoteSegment that openSegment returns now.", e);
    }

    /** Unmaps the peer's memory. */
    @Override
    public void close() {
        Mappings.close(arena, "peer segment " + name + " (" + file + ")");
    }

    @Override
    public String toString() { return "RemoteSegment[" + name + "@" + engineName + ", shm, " + size + " bytes]"; }
}
