package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinTask;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.Test;

class WorkerLauncherTest {
    /** A sink that keeps every line, tagged as the console sink would print it. */
    private static final class Recorder implements WorkerLauncher.LineSink {
        final List<String> lines = new CopyOnWriteArrayList<>();

        @Override
        public void workerLine(int rank, boolean stderr, String line) { lines.add((stderr ? "err " : "out ") + rank + " " + line); }

        @Override
        public void launcherLine(String line) { lines.add("launcher " + line); }
    }

    @Test
    void everyWorkerGetsTorchrunsEnvironmentAndTheJobSucceedsWhenAllExitWithZero() {
        Recorder rec = new Recorder();
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            var outcome = WorkerLauncher.builder(EchoAndExit.class.getName()).args(List.of("-1", "0")).nprocPerNode(3)
                    .rendezvous(rdzv).jobTimeout(Duration.ofSeconds(60)).sink(rec).build().run();
            assertThat(outcome.succeeded()).as(outcome.message()).isTrue();
            assertThat(outcome.failedRank()).isEqualTo(-1);
            for (int r = 0; r < 3; r++) {
                assertThat(rec.lines).contains("out " + r + " hello from rank " + r + " local " + r + " of 3 local_world 3 hosted 1 store "
                        + rdzv.storeUri() + " master 127.0.0.1:" + rdzv.masterPort(), "err " + r + " stderr of rank " + r);
            }
        }
    }

    @Test
    void ranksOfLaterNodesAreOffsetByTheNodeRank() {
        Recorder rec = new Recorder();
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            var outcome = WorkerLauncher.builder(EchoAndExit.class.getName()).args(List.of("-1", "0")).nprocPerNode(2).node(1, 2)
                    .rendezvous(rdzv).jobTimeout(Duration.ofSeconds(60)).sink(rec).build().run();
            assertThat(outcome.succeeded()).isTrue();
            assertThat(rec.lines).anyMatch(l -> l.startsWith("out 2 hello from rank 2 local 0 of 4 local_world 2"))
                    .anyMatch(l -> l.startsWith("out 3 hello from rank 3 local 1 of 4"));
        }
    }

    /** Through the real command: its exit code is the failing worker's, lines carry [rank]: , and the hanging worker is stopped. */
    @Test
    void runPropagatesAFailingWorkersExitCodeAndStopsTheOthers() {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream oldOut = System.out;
        PrintStream oldErr = System.err;
        int code;
        long start = System.nanoTime();
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
        try {
            code = Main.commandLine().execute("run", "--nproc-per-node", "3", "--stop-grace-s", "5", "--timeout-s", "60",
                    EchoAndExit.class.getName(), "1", "3", "hang");
        } finally {
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
        Duration took = Duration.ofNanos(System.nanoTime() - start);
        String stdout = out.toString(StandardCharsets.UTF_8);
        String stderr = err.toString(StandardCharsets.UTF_8);
        assertThat(code).as(stdout + stderr).isEqualTo(3);
        assertThat(stdout).contains("[0]: hello from rank 0 local 0 of 3", "[1]: hello from rank 1", "[2]: hello from rank 2");
        assertThat(stderr).contains("[1]: stderr of rank 1").containsPattern("\\[mooncake4j\\]: rank 1 \\(local rank 1, pid \\d+\\) exited with code 3; stopping the other 2 workers");
        assertThat(took).as("the hanging workers were stopped, not waited for").isLessThan(Duration.ofSeconds(30));
    }

    @Test
    void aJobPastItsTimeLimitIsStoppedWithCode124() {
        Recorder rec = new Recorder();
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            var outcome = WorkerLauncher.builder(EchoAndExit.class.getName()).args(List.of("-1", "0", "hang")).nprocPerNode(2)
                    .rendezvous(rdzv).jobTimeout(Duration.ofSeconds(3)).stopGrace(Duration.ofSeconds(2)).sink(rec).build().run();
            assertThat(outcome.exitCode()).isEqualTo(124);
            assertThat(outcome.message()).contains("time limit of 3 s", "[0, 1]");
        }
    }

    /**
     * The launcher must see its workers exit, and stop the others, without help from the common
     * fork-join pool: a caller may run it from that pool (CompletableFuture.supplyAsync does), whose
     * only thread it then blocks on a machine with two cores.
     */
    @Test
    void exitsAreSeenWhileTheCommonPoolIsBusy() throws InterruptedException {
        int threads = ForkJoinPool.getCommonPoolParallelism();
        AtomicBoolean release = new AtomicBoolean();
        CountDownLatch busy = new CountDownLatch(threads);
        List<ForkJoinTask<?>> hogs = new ArrayList<>();
        for (int i = 0; i < threads; i++) {
            hogs.add(ForkJoinPool.commonPool().submit(() -> {
                busy.countDown();
                long end = System.nanoTime() + 60_000_000_000L;
                while (!release.get() && System.nanoTime() - end < 0) {
                    try {
                        Thread.sleep(10);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }));
        }
        try {
            assertThat(busy.await(10, TimeUnit.SECONDS)).as("every common-pool thread is busy").isTrue();
            Recorder rec = new Recorder();
            long start = System.nanoTime();
            try (Rendezvous rdzv = Rendezvous.hostLocal()) {
                var outcome = WorkerLauncher.builder(EchoAndExit.class.getName()).args(List.of("1", "5", "hang")).nprocPerNode(2)
                        .rendezvous(rdzv).jobTimeout(Duration.ofSeconds(20)).stopGrace(Duration.ofSeconds(5)).sink(rec).build().run();
                assertThat(outcome.exitCode()).as(outcome.message()).isEqualTo(5);
            }
            // rank 0 ends at SIGTERM: the stop must notice at once, not after the grace period and the reaping bound
            assertThat(Duration.ofNanos(System.nanoTime() - start)).isLessThan(Duration.ofSeconds(4));
        } finally {
            release.set(true);
            hogs.forEach(h -> h.cancel(true));
        }
    }

    @Test
    void badSettingsAreRejectedBeforeAnythingStarts() {
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            assertThatThrownBy(() -> WorkerLauncher.builder("x").nprocPerNode(0).rendezvous(rdzv).build()).hasMessageContaining("--nproc-per-node");
            assertThatThrownBy(() -> WorkerLauncher.builder("x").node(2, 2).rendezvous(rdzv).build()).hasMessageContaining("--node-rank 2");
        }
        assertThat(Main.commandLine().execute("run", "--nproc-per-node", "1", "no.such.MainClass")).isEqualTo(1);
    }
}
