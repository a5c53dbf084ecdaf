package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.mooncake4j.core.internal.CompilerQueue;
import org.junit.jupiter.api.Test;

class CompilerQueueTest {
    private static final String IDLE = """
            Current compiles:\s

            C1 compile queue:
            Empty

            C2 compile queue:
            Empty

            """;

    @Test
    void aReportWithNoMethodIsIdle() {
        assertThat(CompilerQueue.idle(IDLE)).isTrue();
        assertThat(CompilerQueue.idle((String) null)).as("a JVM without the command is never waited for").isTrue();
    }

    @Test
    void aCompileInFlightOrQueuedIsNotIdle() {
        String compiling = IDLE.replace("Current compiles:\s\n",
                "Current compiles:\s\nC2 CompilerThread0  1407   !   4       org.example.Hot::loop (530 bytes)\n");
        String queued = IDLE.replace("C1 compile queue:\nEmpty",
                "C1 compile queue:\n1664       2       java.lang.invoke.MethodHandle::maybeCustomize (38 bytes)");
        assertThat(CompilerQueue.idle(compiling)).isFalse();
        assertThat(CompilerQueue.idle(queued)).isFalse();
    }

    @Test
    void thisJvmReportsItsQueueAndGoesIdle() {
        String report = CompilerQueue.report();
        assertThat(report).as("HotSpot offers the Compiler.queue diagnostic command").isNotNull().contains("C2 compile queue:");
        assertThat(CompilerQueue.awaitIdle(60_000)).as("a JVM whose threads only wait stops compiling").isTrue();
        assertThat(CompilerQueue.idle()).isTrue();
    }
}
