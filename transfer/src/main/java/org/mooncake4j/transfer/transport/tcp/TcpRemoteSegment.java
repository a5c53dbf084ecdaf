package org.mooncake4j.transfer.transport.tcp;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.transport.AsyncRemoteSegment;
import org.mooncake4j.transfer.transport.SegmentRanges;
import org.mooncake4j.transfer.transport.TransferCompletion;
import org.mooncake4j.transfer.transport.TransferHandle;

/**
 * A peer's segment reached through its engine's TCP server: writes and publishes are frames on the
 * peer's {@link TcpPeerLink}, applied by the peer in arrival order. Ranges are checked here first, so
 * a bad offset fails in the caller with the segment's name rather than closing the connection.
 *
 * <p>Thread-safe (see {@link TcpPeerLink}); owned by the engine, which closes the link.
 */
public final class TcpRemoteSegment implements AsyncRemoteSegment {
    private final String name;
    private final long size;
    private final int segmentId;
    private final TcpPeerLink link;

    /** @param segmentId the id the peer's engine published for this segment */
    public TcpRemoteSegment(String name, long size, int segmentId, TcpPeerLink link) {
        this.name = name;
        this.size = size;
        this.segmentId = segmentId;
        this.link = link;
    }

    @Override public String name() { return name; }

    @Override public long size() { return size; }

    @Override public String engineName() { return link.engineName(); }

    @Override public String transport() { return "tcp"; }

    @Override public boolean alive() { return link.alive(); }

    @Override
    public void write(long remoteOffset, MemorySegment src, long srcOffset, long length, Deadline deadline) {
        SegmentRanges.check(name, size, remoteOffset, length);
        SegmentRanges.checkLocal(name, src.byteSize(), srcOffset, length);
        link.write(name, segmentId, remoteOffset, src, srcOffset, length, deadline);
    }

    @Override
    public void read(long remoteOffset, MemorySegment dst, long dstOffset, long length, Deadline deadline) {
        SegmentRanges.check(name, size, remoteOffset, length);
        SegmentRanges.checkLocal(name, dst.byteSize(), dstOffset, length);
        link.read(name, segmentId, remoteOffset, dst, dstOffset, length, deadline);
    }

    @Override
    public void publish(long remoteOffset, long value, Deadline deadline) {
        SegmentRanges.checkWord(name, size, remoteOffset);
        link.publish(name, segmentId, remoteOffset, value, deadline);
    }

    @Override
    public TransferHandle startWrite(long remoteOffset, MemorySegment src, long srcOffset, long length,
                                     Deadline sendDeadline, TransferCompletion completion) {
        return link.startWrite(name, segmentId, remoteOffset, src, srcOffset, length, sendDeadline, completion);
    }

    @Override
    public TransferHandle startRead(long remoteOffset, MemorySegment dst, long dstOffset, long length,
                                    Deadline sendDeadline, TransferCompletion completion) {
        return link.startRead(name, segmentId, remoteOffset, dst, dstOffset, length, sendDeadline, completion);
    }

    @Override
    public String toString() { return "RemoteSegment[" + name + "@" + link.engineName() + ", tcp " + link.remote() + ", " + size + " bytes]"; }
}
