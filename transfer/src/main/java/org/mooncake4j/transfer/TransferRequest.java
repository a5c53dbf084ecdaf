package org.mooncake4j.transfer;

import java.lang.foreign.MemorySegment;

/**
 * One element of a batch: move {@code length} bytes between {@code local[localOffset..]} and
 * {@code target[targetOffset..]}.
 */
public record TransferRequest(Opcode opcode, MemorySegment local, long localOffset,
                              RemoteSegment target, long targetOffset, long length) {
    public enum Opcode { READ, WRITE }

    public static TransferRequest write(MemorySegment local, long localOffset, RemoteSegment target, long targetOffset, long length) {
        return new TransferRequest(Opcode.WRITE, local, localOffset, target, targetOffset, length);
    }

    public static TransferRequest read(MemorySegment local, long localOffset, RemoteSegment target, long targetOffset, long length) {
        return new TransferRequest(Opcode.READ, local, localOffset, target, targetOffset, length);
    }
}
