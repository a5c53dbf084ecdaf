package org.mooncake4j.cuda;

import java.util.Arrays;
import java.util.HexFormat;
import org.mooncake4j.cuda.internal.CuStructs;

/**
 * A legacy CUDA IPC handle ({@code CUipcMemHandle}, 64 opaque bytes) of a {@code cuMemAlloc}
 * allocation: publish {@link #bytes()} (e.g. in the metadata store) and open it in another process on
 * the same host with {@link DeviceBuffer#openIpc}. Immutable.
 */
public final class IpcMemHandle {
    /** The size of the handle. */
    public static final int BYTES = CuStructs.HANDLE_SIZE;

    private final byte[] bytes;

    private IpcMemHandle(byte[] bytes) { this.bytes = bytes; }

    /** The handle from its 64 bytes, as {@link #bytes()} gave them. */
    public static IpcMemHandle of(byte[] bytes) {
        if (bytes.length != BYTES) {
            throw new IllegalArgumentException("a CUDA IPC handle has " + BYTES + " bytes, got " + bytes.length);
        }
        return new IpcMemHandle(bytes.clone());
    }

    /** A copy of the 64 bytes. */
    public byte[] bytes() { return bytes.clone(); }

    @Override
    public boolean equals(Object o) { return o instanceof IpcMemHandle h && Arrays.equals(bytes, h.bytes); }

    @Override
    public int hashCode() { return Arrays.hashCode(bytes); }

    @Override
    public String toString() { return "IpcMemHandle(" + HexFormat.of().formatHex(bytes, 0, 16) + "...)"; }
}
