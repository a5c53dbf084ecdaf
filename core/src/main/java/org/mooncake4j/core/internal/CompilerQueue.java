package org.mooncake4j.core.internal;

import java.lang.management.ManagementFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import javax.management.JMException;
import javax.management.MBeanServer;
import javax.management.ObjectName;

/**
 * The JIT compiler's work in flight in this JVM, read through HotSpot's {@code Compiler.queue}
 * diagnostic command (what {@code jcmd PID Compiler.queue} prints). A benchmark waits here until
 * no method is being compiled or queued before it times a row: on a host with as many busy
 * processes as cores, a compiler thread still working (on code that the row's check or warm-up made
 * hot) takes a core from a rank, and every rank of the collective then waits for that one. On a
 * JVM without the command, {@link #idle()} reports idle and nothing is waited for.
 */
public final class CompilerQueue {
    private static final String OPERATION = "compilerQueue";
    private static final ObjectName DIAGNOSTIC_COMMAND = diagnosticCommand();

    private CompilerQueue() {}

    private static ObjectName diagnosticCommand() {
        try {
            ObjectName name = new ObjectName("com.sun.management:type=DiagnosticCommand");
            return ManagementFactory.getPlatformMBeanServer().isRegistered(name) ? name : null;
        } catch (JMException | RuntimeException e) {
            return null;
        }
    }

    /** The command's report, or null when this JVM does not offer it. */
    public static String report() {
        if (DIAGNOSTIC_COMMAND == null) return null;
        MBeanServer server = ManagementFactory.getPlatformMBeanServer();
        try {
            return (String) server.invoke(DIAGNOSTIC_COMMAND, OPERATION, new Object[] {new String[0]},
                    new String[] {String[].class.getName()});
        } catch (JMException | RuntimeException e) {
            return null;
        }
    }

    /**
     * Whether a report lists no compilation: every entry of it (current compiles and the C1 and C2
     * queues) names a method as {@code Class::method}; the section headers and {@code Empty} do not.
     */
    public static boolean idle(String report) {
        return report == null || !report.contains("::");
    }

    /** Whether the JIT has nothing in flight or queued now (true where that cannot be read). */
    public static boolean idle() {
        return idle(report());
    }

    /** Consecutive idle looks that {@link #awaitIdle} takes as the compiler being done. */
    public static final int IDLE_LOOKS = 3;

    /**
     * Waits, sleeping 1 ms between looks, until {@link #IDLE_LOOKS} looks in a row find the JIT idle,
     * or {@code timeoutMillis} passed. One idle look is not enough: looking runs code of its own (the
     * MBean call, the report's parsing), which can itself become hot and be queued for compilation
     * right after the look that found the queue empty. Returns whether the compiler went idle in time.
     */
    public static boolean awaitIdle(long timeoutMillis) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        for (int idleLooks = 0; ; ) {
            idleLooks = idle() ? idleLooks + 1 : 0;
            if (idleLooks == IDLE_LOOKS) return true;
            if (System.nanoTime() - deadline >= 0) return false;
            LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(1));
        }
    }

    /** How long a benchmark waits for the JIT to go idle before a timed part. */
    public static final long BENCH_WAIT_MS = 5000;

    /**
     * A benchmark's wait before timing {@code what}: {@link #awaitIdle} for at most
     * {@link #BENCH_WAIT_MS}; when the JIT is still busy it says so on stderr, as {@code who: ... what
     * is timed anyway and may include compilation} followed by {@code remedy}, and times it anyway.
     */
    public static void awaitIdleBeforeTiming(String who, String what, String remedy) {
        if (awaitIdle(BENCH_WAIT_MS)) return;
        System.err.println(who + ": the JIT was still compiling after " + BENCH_WAIT_MS + " ms; " + what
                + " is timed anyway and may include compilation" + (remedy.isEmpty() ? "" : " (" + remedy + ")"));
    }
}
