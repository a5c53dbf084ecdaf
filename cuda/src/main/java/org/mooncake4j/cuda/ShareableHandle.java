package org.mooncake4j.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import org.mooncake4j.cuda.internal.CuStructs;

/**
 * What another process needs to map a {@code cuMemCreate} allocation (see
 * {@link DeviceBuffer#allocateShareable}): the handle type, the allocation's sizes, and either the
 * exporting process's id and file descriptor ({@link ShareableHandleType#POSIX_FILE_DESCRIPTOR}) or the
 * 64-byte fabric handle ({@link ShareableHandleType#FABRIC}). {@link #toBytes()} is a fixed
 * {@value #BYTES}-byte little-endian form for publishing. Immutable.
 *
 * <p>A file descriptor is only a number in the exporting process: the importer duplicates it with
 * {@code pidfd_getfd(2)}, so it needs ptrace permission over the exporter (same user and
 * {@code kernel.yama.ptrace_scope=0}, or CAP_SYS_PTRACE); the exporter keeps the descriptor open until
 * its buffer is closed.
 */
public final class ShareableHandle {
    /** The size of {@link #toBytes()}. */
    public static final int BYTES = 40 + CuStructs.HANDLE_SIZE;
    private static final int MAGIC = 0x4d43_5348; // "MCSH"

    private final ShareableHandleType type;
    private final long size;
    private final long mappedSize;
    private final long ownerPid;
    private final int fd;
    private final byte[] fabric;

    private ShareableHandle(ShareableHandleType type, long size, long mappedSize, long ownerPid, int fd, byte[] fabric) {
        if (size <= 0 || mappedSize < size) {
            throw new IllegalArgumentException("invalid sizes: " + size + " bytes in a mapping of " + mappedSize);
        }
        this.type = type;
        this.size = size;
        this.mappedSize = mappedSize;
        this.ownerPid = ownerPid;
        this.fd = fd;
        this.fabric = fabric;
    }

    /** A file-descriptor handle: descriptor {@code fd} of process {@code ownerPid}. */
    public static ShareableHandle posixFd(long size, long mappedSize, long ownerPid, int fd) {
        return new ShareableHandle(ShareableHandleType.POSIX_FILE_DESCRIPTOR, size, mappedSize, ownerPid, fd,
                new byte[CuStructs.HANDLE_SIZE]);
    }

    /** A fabric handle of 64 bytes. */
    public static ShareableHandle fabric(long size, long mappedSize, long ownerPid, byte[] fabricHandle) {
        if (fabricHandle.length != CuStructs.HANDLE_SIZE) {
            throw new IllegalArgumentException("a fabric handle has " + CuStructs.HANDLE_SIZE + " bytes, got " + fabricHandle.length);
        }
        return new ShareableHandle(ShareableHandleType.FABRIC, size, mappedSize, ownerPid, -1, fabricHandle.clone());
    }

    public ShareableHandleType type() { return type; }

    /** The bytes the owner asked for. */
    public long size() { return size; }

    /** The bytes actually mapped: {@link #size()} rounded up to the allocation granularity. */
    public long mappedSize() { return mappedSize; }

    /** The exporting process. */
    public long ownerPid() { return ownerPid; }

    /** The descriptor in the exporting process ({@code POSIX_FILE_DESCRIPTOR}); -1 for a fabric handle. */
    public int fd() { return fd; }

    /** A copy of the fabric handle ({@code FABRIC}); zeros for a file-descriptor handle. */
    public byte[] fabricHandle() { return fabric.clone(); }

    public byte[] toBytes() {
        ByteBuffer b = ByteBuffer.allocate(BYTES).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(MAGIC).putInt(type.cuValue()).putLong(size).putLong(mappedSize).putLong(ownerPid).putInt(fd).putInt(0);
        b.put(fabric);
        return b.array();
    }

    public static ShareableHandle fromBytes(byte[] bytes) {
        if (bytes.length != BYTES) throw new IllegalArgumentException("a shareable handle has " + BYTES + " bytes, got " + bytes.length);
        ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        if (b.getInt() != MAGIC) throw new IllegalArgumentException("not a mooncake4j shareable handle (bad magic)");
        int cuType = b.getInt();
        ShareableHandleType type = Arrays.stream(ShareableHandleType.values()).filter(t -> t.cuValue() == cuType)
                .findFirst().orElseThrow(() -> new IllegalArgumentException("unknown handle type " + cuType));
        long size = b.getLong();
        long mapped = b.getLong();
        long pid = b.getLong();
        int fd = b.getInt();
        b.getInt();
        byte[] fabric = new byte[CuStructs.HANDLE_SIZE];
        b.get(fabric);
        return new ShareableHandle(type, size, mapped, pid, fd, fabric);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof ShareableHandle h && type == h.type && size == h.size && mappedSize == h.mappedSize
                && ownerPid == h.ownerPid && fd == h.fd && Arrays.equals(fabric, h.fabric);
    }

    @Override
    public int hashCode() { return Long.hashCode(ownerPid) * 31 + fd + Arrays.hashCode(fabric); }

    @Override
    public String toString() {
        return "ShareableHandle(" + type + ", " + size + " bytes, pid " + ownerPid + (type == ShareableHandleType.FABRIC ? "" : ", fd " + fd) + ")";
    }
}
