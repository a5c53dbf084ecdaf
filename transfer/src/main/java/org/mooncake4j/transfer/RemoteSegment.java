package org.mooncake4j.transfer;

import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;

/**
 * A peer's registered segment, opened through {@link TransferEngine#openSegment}. The transport
 * (shm or tcp) is chosen when it is opened.
 *
 * <p>Ordering: operations issued by one thread on one remote segment take effect in issue order;
 * in particular a {@link #publish} is visible only after every earlier {@link #write} from that
 * thread. Thread-safe: several threads may write to one segment (each call is atomic with respect
 * to others on the same connection).
 *
 * <p>Every call checks {@code [offset, offset + length)} against the segment and throws
 * {@link TransferException} naming the segment and range when it falls outside; a call to a dead
 * peer throws {@link TransferException} within its deadline.
 */
public interface RemoteSegment {
    /** The segment's registered name. */
    String name();

    long size();

    /** The name of the engine that registered it. */
    String engineName();

    /** {@code shm} or {@code tcp}. */
    String transport();

    /**
     * Copies {@code length} bytes from {@code src[srcOffset..]} to the segment at {@code remoteOffset}.
     * Posted: returns once the bytes are written (shm) or handed to the connection (tcp); it does not
     * wait for the peer to acknowledge. A failure the peer detects closes the connection.
     */
    void write(long remoteOffset, MemorySegment src, long srcOffset, long length, Deadline deadline);

    /** Copies {@code length} bytes from the segment at {@code remoteOffset} to {@code dst[dstOffset..]}; waits for the data. */
    void read(long remoteOffset, MemorySegment dst, long dstOffset, long length, Deadline deadline);

    /**
     * Stores the 64-bit {@code value} at {@code remoteOffset} (8-byte aligned) with release semantics,
     * after every earlier write from this thread, and wakes waiters sleeping on it
     * ({@link org.mooncake4j.core.internal.Waiter#awaitAtLeast}).
     */
    void publish(long remoteOffset, long value, Deadline deadline);

    /** False once the peer's engine is known to be gone (its connection closed, or a transfer failed). */
    boolean alive();

    /**
     * The peer's memory mapped into this process, for loads and stores in place (shm), or null when
     * the segment is reached over the network (tcp). The view stays valid until the engine unmaps the
     * segment ({@link TransferEngine#closeSegment}, engine close, or a re-open after the peer failed);
     * access after that throws {@link IllegalStateException}. Accesses through it carry no ordering:
     * pair them with {@link #publish} and flag waits, as the writes do.
     */
    default MemorySegment mapping() { return null; }
}
