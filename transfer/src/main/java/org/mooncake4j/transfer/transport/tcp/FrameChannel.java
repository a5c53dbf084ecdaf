package org.mooncake4j.transfer.transport.tcp;

import java.io.EOFException;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.ClosedSelectorException;
import java.nio.channels.NetworkChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;
import jdk.net.ExtendedSocketOptions;
import org.mooncake4j.core.Deadline;

/**
 * One TCP connection carrying frames. The socket is non-blocking so that every write honours a
 * deadline (a peer that stops reading cannot hold a caller forever); each direction waits on its own
 * selector.
 *
 * <p>Threading: one reader thread owns the read side ({@code read*} methods). Writers take the write
 * lock ({@link #lockWriter}) for a whole frame, so frames from concurrent threads never interleave;
 * {@code writeFrame} must be called with it held. {@link #close()} may be called from any thread and
 * wakes both sides, which then fail with {@link ClosedChannelException}.
 */
final class FrameChannel implements AutoCloseable {
    /** The payload chunk for memory that cannot be handed to the socket directly (heap, or beyond 2 GiB). */
    private static final int CHUNK = 1 << 20;
    private static final int SOCKET_BUFFER = socketBufferBytes();

    private final SocketChannel ch;
    private final String remote;
    private final Selector readSelector;
    private final Selector writeSelector;
    private final ReentrantLock writeLock = new ReentrantLock();
    private final ByteBuffer[] gather = new ByteBuffer[2];
    private final SegmentViews writeViews = new SegmentViews();
    private final SegmentViews readViews = new SegmentViews();
    private ByteBuffer writeStaging;
    private ByteBuffer readStaging;
    /** Bytes of the frame being written so far; guarded by the write lock. */
    private long frameSent;
    private volatile boolean closed;

    private FrameChannel(SocketChannel ch, String remote) throws IOException {
        this.ch = ch;
        this.remote = remote;
        ch.configureBlocking(false);
        this.readSelector = Selector.open();
        this.writeSelector = Selector.open();
        ch.register(readSelector, SelectionKey.OP_READ);
        ch.register(writeSelector, SelectionKey.OP_WRITE);
    }

    /**
     * Large buffers keep a 64 MiB transfer streaming. Setting them explicitly turns off the kernel's
     * autotuning (which grows up to the last field of net.ipv4.tcp_[rw]mem) and is capped at
     * net.core.[rw]mem_max: set them (up to 16 MiB) only when that cap is the larger one. Without
     * those files (not Linux) ask for 4 MiB and let the system clamp it. 0 = leave autotuning on.
     */
    private static int socketBufferBytes() {
        long explicitCap = Math.min(sysctl("/proc/sys/net/core/rmem_max", 0), sysctl("/proc/sys/net/core/wmem_max", 0));
        long autoCap = Math.min(sysctl("/proc/sys/net/ipv4/tcp_rmem", 2), sysctl("/proc/sys/net/ipv4/tcp_wmem", 2));
        if (explicitCap <= 0 && autoCap <= 0) return 4 << 20;
        return explicitCap > autoCap ? (int) Math.min(explicitCap, 16 << 20) : 0;
    }

    /**
     * Field {@code field} (0-based, whitespace-separated) of a sysctl file, 0 when unreadable. Read by
     * lines: {@code Files.readString} returns only the first byte of some /proc/sys files.
     */
    private static long sysctl(String file, int field) {
        try {
            String[] f = String.join(" ", Files.readAllLines(Path.of(file))).trim().split("\\s+");
            return Long.parseLong(f[field]);
        } catch (IOException | RuntimeException e) {
            return 0;
        }
    }

    /** Applies this project's socket options: no Nagle delay, large buffers, keepalive that notices a vanished host in seconds. */
    static void configure(NetworkChannel s, boolean listening) throws IOException {
        if (SOCKET_BUFFER > 0) s.setOption(StandardSocketOptions.SO_RCVBUF, SOCKET_BUFFER);
        if (listening) return;
        s.setOption(StandardSocketOptions.TCP_NODELAY, true);
        if (SOCKET_BUFFER > 0) s.setOption(StandardSocketOptions.SO_SNDBUF, SOCKET_BUFFER);
        s.setOption(StandardSocketOptions.SO_KEEPALIVE, true);
        try {
            s.setOption(ExtendedSocketOptions.TCP_KEEPIDLE, 5);
            s.setOption(ExtendedSocketOptions.TCP_KEEPINTERVAL, 1);
            s.setOption(ExtendedSocketOptions.TCP_KEEPCOUNT, 3);
        } catch (UnsupportedOperationException e) {
            // platform keepalive defaults apply; a dead host is then noticed by a failing write
        }
    }

    /** Wraps an accepted connection. */
    static FrameChannel accepted(SocketChannel ch) throws IOException {
        configure(ch, false);
        InetSocketAddress a = (InetSocketAddress) ch.getRemoteAddress();
        return new FrameChannel(ch, a.getAddress().getHostAddress() + ":" + a.getPort());
    }

    /**
     * Connects to {@code to} by the deadline, from {@code bind} when not null (so traffic leaves through
     * the interface the engine was configured with).
     */
    static FrameChannel connect(InetSocketAddress to, InetAddress bind, Deadline deadline) throws IOException {
        SocketChannel ch = SocketChannel.open();
        boolean ok = false;
        try {
            configure(ch, false);
            if (bind != null) ch.bind(new InetSocketAddress(bind, 0));
            ch.configureBlocking(false);
            if (!ch.connect(to)) {
                try (Selector s = Selector.open()) {
                    ch.register(s, SelectionKey.OP_CONNECT);
                    while (!ch.finishConnect()) {
                        if (deadline.expired()) throw new SocketTimeoutException("connect timed out");
                        s.select(selectMillis(deadline));
                        s.selectedKeys().clear();
                    }
                }
            }
            FrameChannel f = new FrameChannel(ch, to.getAddress().getHostAddress() + ":" + to.getPort());
            ok = true;
            return f;
        } finally {
            if (!ok) ch.close();
        }
    }

    private static long selectMillis(Deadline d) {
        return d.isNever() ? 0 : Math.max(1, d.remainingMillis());
    }

    /** host:port of the other end. */
    String remote() { return remote; }

    boolean isOpen() { return !closed; }

    /** Takes the write lock; false when the deadline passed first. */
    boolean lockWriter(Deadline deadline) {
        try {
            if (deadline.isNever()) {
                writeLock.lockInterruptibly();
                return true;
            }
            return writeLock.tryLock(deadline.remainingNanos(), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    void unlockWriter() { writeLock.unlock(); }

    /** Whether part of the frame being written went out; caller holds the write lock. */
    boolean frameStarted() { return frameSent > 0; }

    /**
     * Writes a header and {@code length} bytes of {@code payload} from {@code offset} (none when
     * {@code payload} is null). Caller holds the write lock. A {@link WriteTimeoutException} says
     * whether part of the frame went out.
     */
    void writeFrame(ByteBuffer header, MemorySegment payload, long offset, long length, Deadline deadline) throws IOException {
        frameSent = 0;
        ByteBuffer view = payload == null || length == 0 ? null : writeViews.view(payload);
        if (payload == null || length == 0) {
            writeFully(header, deadline);
        } else if (view != null) {
            gather[0] = header;
            gather[1] = SegmentViews.range(view, offset, length);
            while (gather[1].hasRemaining()) {
                long n = ch.write(gather);
                if (n > 0) frameSent += n; else awaitWritable(deadline);
            }
        } else {
            writeFully(header, deadline);
            for (long pos = 0; pos < length; ) {
                int n = (int) Math.min(CHUNK, length - pos);
                writeFully(chunk(payload, offset + pos, n), deadline);
                pos += n;
            }
        }
    }

    /** A native chunk is sliced (no copy); a heap chunk is copied into a staging buffer. */
    private ByteBuffer chunk(MemorySegment payload, long offset, int n) {
        if (payload.isNative()) return payload.asSlice(offset, n).asByteBuffer();
        if (writeStaging == null) writeStaging = ByteBuffer.allocateDirect(CHUNK);
        // clear first: the previous chunk's write left position == limit, and ofBuffer views only [position, limit)
        writeStaging.clear();
        MemorySegment.copy(payload, offset, MemorySegment.ofBuffer(writeStaging), 0, n);
        return writeStaging.limit(n);
    }

    private void writeFully(ByteBuffer b, Deadline deadline) throws IOException {
        while (b.hasRemaining()) {
            int n = ch.write(b);
            if (n > 0) frameSent += n; else awaitWritable(deadline);
        }
    }

    private void awaitWritable(Deadline deadline) throws IOException {
        if (closed) throw new ClosedChannelException();
        if (deadline.expired()) throw new WriteTimeoutException(frameSent > 0);
        try {
            writeSelector.select(selectMillis(deadline));
            writeSelector.selectedKeys().clear();
        } catch (ClosedSelectorException e) {
            throw new ClosedChannelException();
        }
    }

    /** Reads until {@code b} is full; waits as long as it takes (reader thread). */
    void readFully(ByteBuffer b) throws IOException {
        readFully(b, Deadline.NEVER);
    }

    /** Reads until {@code b} is full or the deadline passes ({@link SocketTimeoutException}). */
    void readFully(ByteBuffer b, Deadline deadline) throws IOException {
        while (b.hasRemaining()) {
            int n = ch.read(b);
            if (n < 0) throw new EOFException("connection closed by " + remote);
            if (n == 0) awaitReadable(deadline);
        }
    }

    /** Reads {@code length} bytes straight into {@code dst} at {@code offset} (the caller checked the range). */
    void readInto(MemorySegment dst, long offset, long length) throws IOException {
        ByteBuffer view = readViews.view(dst);
        if (view != null) {
            readFully(SegmentViews.range(view, offset, length));
            return;
        }
        for (long pos = 0; pos < length; ) {
            int n = (int) Math.min(CHUNK, length - pos);
            if (dst.isNative()) {
                readFully(dst.asSlice(offset + pos, n).asByteBuffer());
            } else {
                ByteBuffer s = readStaging().clear().limit(n);
                readFully(s);
                MemorySegment.copy(MemorySegment.ofBuffer(s.flip()), 0, dst, offset + pos, n);
            }
            pos += n;
        }
    }

    /** Reads and drops {@code length} bytes (the answer to a request nobody waits for any more). */
    void discard(long length) throws IOException {
        for (long pos = 0; pos < length; ) {
            int n = (int) Math.min(CHUNK, length - pos);
            readFully(readStaging().clear().limit(n));
            pos += n;
        }
    }

    private ByteBuffer readStaging() {
        if (readStaging == null) readStaging = ByteBuffer.allocateDirect(CHUNK);
        return readStaging;
    }

    private void awaitReadable(Deadline deadline) throws IOException {
        if (closed) throw new ClosedChannelException();
        if (deadline.expired()) throw new SocketTimeoutException("no data from " + remote + " by the deadline");
        try {
            readSelector.select(selectMillis(deadline));
            readSelector.selectedKeys().clear();
        } catch (ClosedSelectorException e) {
            throw new ClosedChannelException();
        }
    }

    /** Closes the socket and wakes the reader and any writer. Idempotent. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        try {
            ch.close();
        } catch (IOException ignored) {
            // the socket is unusable either way
        }
        try {
            readSelector.close();
        } catch (IOException ignored) {
            // only releases the epoll descriptor
        }
        try {
            writeSelector.close();
        } catch (IOException ignored) {
            // only releases the epoll descriptor
        }
    }
}
