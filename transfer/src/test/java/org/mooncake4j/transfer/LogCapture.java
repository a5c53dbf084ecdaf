package org.mooncake4j.transfer;

import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Captures what slf4j-simple logs (it writes to whatever {@code System.err} is at each call) for
 * tests that check a message was logged. Optionally still echoes to the original stream. Not for
 * parallel tests: {@code System.err} is global. Thread-safe.
 */
public final class LogCapture implements AutoCloseable {
    private final PrintStream original = System.err;
    private byte[] bytes = new byte[1 << 16];
    private int size;

    private LogCapture(boolean echo) {
        OutputStream sink = new OutputStream() {
            @Override
            public void write(int b) { write(new byte[] {(byte) b}, 0, 1); }

            @Override
            public void write(byte[] b, int off, int len) {
                append(b, off, len);
                if (echo) original.write(b, off, len);
            }
        };
        System.setErr(new PrintStream(sink, true, StandardCharsets.UTF_8));
    }

    private synchronized void append(byte[] b, int off, int len) {
        if (size + len > bytes.length) bytes = Arrays.copyOf(bytes, Math.max(bytes.length * 2, size + len));
        System.arraycopy(b, off, bytes, size, len);
        size += len;
    }

    /** Starts capturing; {@code echo} also writes everything to the original stream. */
    public static LogCapture start(boolean echo) { return new LogCapture(echo); }

    /** Everything logged since {@link #start}. */
    public String text() { return since(0); }

    /** A position in the log: {@link #since} it is what was logged after it. */
    public synchronized int mark() { return size; }

    /** What was logged after {@code mark}. */
    public synchronized String since(int mark) { return new String(bytes, mark, size - mark, StandardCharsets.UTF_8); }

    @Override
    public void close() {
        System.err.flush();
        System.setErr(original);
    }
}
