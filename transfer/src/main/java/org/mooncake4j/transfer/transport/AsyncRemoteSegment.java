package org.mooncake4j.transfer.transport;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.RemoteSegment;

/**
 * A remote segment whose transport can run a transfer without blocking the caller until it
 * completes: the engine's batch API starts requests through these methods and collects the
 * outcomes through {@link TransferCompletion}. Unlike {@link RemoteSegment#write}, a write started
 * here completes only when the peer has the bytes (acknowledged over tcp).
 *
 * <p>The caller has already checked both ranges. {@code sendDeadline} bounds only the handing-off
 * of the request (it may wait for room on a connection); the completion may come later.
 */
public interface AsyncRemoteSegment extends RemoteSegment {
    TransferHandle startWrite(long remoteOffset, MemorySegment src, long srcOffset, long length,
                              Deadline sendDeadline, TransferCompletion completion);

    TransferHandle startRead(long remoteOffset, MemorySegment dst, long dstOffset, long length,
                             Deadline sendDeadline, TransferCompletion completion);
}
