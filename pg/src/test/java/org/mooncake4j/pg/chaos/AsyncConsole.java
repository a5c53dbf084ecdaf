package org.mooncake4j.pg.chaos;

import java.io.ByteArrayOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A worker's standard output and error, written by a thread of their own, so that a worker never
 * blocks on a full pipe when the test JVM reads its lines late (a loaded machine): a blocked
 * {@code println} or log call would otherwise delay the worker's operations and inflate the measured
 * fault latencies with time the library does not spend. Lines keep their order (out and err share
 * one queue, as they share one pipe).
 */
final class AsyncConsole extends OutputStream {
    private static final byte[] END = new byte[0];
    private final LinkedBlockingQueue<byte[]> queue = new LinkedBlockingQueue<>();
    private final ByteArrayOutputStream pending = new ByteArrayOutputStream(256);
    private final FileOutputStream sink = new FileOutputStream(FileDescriptor.out);
    private final Thread writer;

    private AsyncConsole() {
        writer = Thread.ofPlatform().daemon().name("chaos-console").start(() -> {
            try {
                for (byte[] b = queue.take(); b != END; b = queue.take()) sink.write(b);
            } catch (InterruptedException | IOException e) {
                // the pipe is gone: nobody reads this worker any more
            }
        });
    }

    /** Replaces System.out and System.err; call first thing in main. */
    static AsyncConsole install() {
        AsyncConsole c = new AsyncConsole();
        PrintStream ps = new PrintStream(c, true);
        System.setOut(ps);
        System.setErr(ps);
        Runtime.getRuntime().addShutdownHook(new Thread(c::drain)); // an uncaught exception ends main too
        return c;
    }

    @Override
    public synchronized void write(int b) { pending.write(b); }

    @Override
    public synchronized void write(byte[] b, int off, int len) { pending.write(b, off, len); }

    @Override
    public synchronized void flush() {
        if (pending.size() == 0) return;
        queue.add(pending.toByteArray());
        pending.reset();
    }

    /** Writes out everything printed so far (waits up to 10 s for a slow reader), before System.exit. */
    synchronized void drain() {
        flush();
        queue.add(END);
        try {
            writer.join(TimeUnit.SECONDS.toMillis(10));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
