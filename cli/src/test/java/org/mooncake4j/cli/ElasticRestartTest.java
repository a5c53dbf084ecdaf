package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.mooncake4j.transfer.etcd.EtcdTestServer;

/** The launcher's elastic restarts ({@code --max-restarts}) and {@link Elastic}, with real worker processes. */
class ElasticRestartTest {
    private static final Pattern PROBE = Pattern.compile("out (\\d+) probe rank (\\d+) pid (\\d+) restart (\\d+) extension (\\d+) world 3 local (\\d+)");

    @TempDir
    Path dir;

    /** Keeps every line as {@code out|err <rank> <line>} or {@code launcher <line>}, and every start. */
    private static final class Recorder implements WorkerLauncher.LineSink, WorkerLauncher.Events {
        final List<String> lines = new CopyOnWriteArrayList<>();
        final List<String> starts = new CopyOnWriteArrayList<>();

        @Override
        public void workerLine(int rank, boolean stderr, String line) { lines.add((stderr ? "err " : "out ") + rank + " " + line); }

        @Override
        public void launcherLine(String line) { lines.add("launcher " + line); }

        @Override
        public void workerStarted(int rank, long pid, int restartCount, java.time.Instant at) { starts.add(rank + " " + pid + " " + restartCount); }

        /** The probe lines of {@code rank}, as [pid, restart, extension]. */
        List<long[]> probes(int rank) {
            List<long[]> out = new ArrayList<>();
            for (String l : lines) {
                Matcher m = PROBE.matcher(l);
                if (m.matches() && Integer.parseInt(m.group(1)) == rank) {
                    out.add(new long[] {Long.parseLong(m.group(3)), Long.parseLong(m.group(4)), Long.parseLong(m.group(5))});
                }
            }
            return out;
        }

        String text() { return String.join("\n", lines); }
    }

    @Test
    void onlyTheDeadWorkerIsRestartedAsAnExtensionRankAndTheJobSucceeds() {
        Recorder rec = new Recorder();
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            var outcome = WorkerLauncher.builder(RestartProbe.class.getName()).args(List.of("1", "once", dir.toString())).nprocPerNode(3)
                    .rendezvous(rdzv).maxRestarts(1).jobTimeout(Duration.ofSeconds(60)).sink(rec).events(rec)
                    // an inherited MOONCAKE_EXTENSION=1 must not turn first processes into extension ranks
                    .environment(Map.of(WorkerLauncher.EXTENSION_ENV, "1"))
                    .build().run();
            assertThat(outcome.exitCode()).as(rec.text()).isZero();
        }
        // ranks 0 and 2: one process each, the first one, which ran to the end
        for (int r : new int[] {0, 2}) {
            List<long[]> p = rec.probes(r);
            assertThat(p).as(rec.text()).hasSize(1);
            assertThat(p.getFirst()[1]).as("restart count of rank " + r).isZero();
            assertThat(p.getFirst()[2]).as("extension flag of rank " + r).isZero();
            assertThat(rec.lines).contains("out " + r + " probe rank " + r + " pid " + p.getFirst()[0] + " done");
        }
        // rank 1: its first process (exit 3), then a replacement with the same rank as an extension rank
        List<long[]> p1 = rec.probes(1);
        assertThat(p1).as(rec.text()).hasSize(2);
        assertThat(p1.get(0)[1]).isZero();
        assertThat(p1.get(0)[2]).isZero();
        assertThat(p1.get(1)[1]).isEqualTo(1);
        assertThat(p1.get(1)[2]).isEqualTo(1);
        assertThat(p1.get(1)[0]).isNotEqualTo(p1.get(0)[0]);
        assertThat(rec.lines).anyMatch(l -> l.matches("launcher rank 1 \\(local rank 1, pid " + p1.get(0)[0] + "\\) exited with code 3; restarting it alone as an"
                + " extension rank \\(MOONCAKE_EXTENSION=1, MOONCAKE_RESTART_COUNT=1\\), restart 1 of 1 on this node; the other workers keep running"));
        assertThat(rec.starts).containsExactlyInAnyOrder("0 " + rec.probes(0).getFirst()[0] + " 0", "1 " + p1.get(0)[0] + " 0",
                "2 " + rec.probes(2).getFirst()[0] + " 0", "1 " + p1.get(1)[0] + " 1");
    }

    /** Through the real command: the second failure finds no restart left, so the others are stopped and its code is the job's. */
    @Test
    void withNoRestartLeftTheLauncherStopsEveryWorkerAndExitsWithTheCode() {
        long start = System.nanoTime();
        Object[] r = PgBenchCommandTest.execute("run", "--nproc-per-node", "3", "--max-restarts", "1", "--stop-grace-s", "2", "--timeout-s", "60",
                RestartProbe.class.getName(), "1", "always", dir.toString());
        Duration took = Duration.ofNanos(System.nanoTime() - start);
        String out = (String) r[1];
        String err = (String) r[2];
        assertThat((int) r[0]).as(out + err).isEqualTo(3);
        assertThat(err).contains("up to 1 restart(s) of dead workers")
                .containsPattern("\\[mooncake4j\\]: rank 1 \\(local rank 1, pid \\d+\\) exited with code 3; restarting it alone as an extension rank")
                .containsPattern("\\[mooncake4j\\]: rank 1 \\(local rank 1, pid \\d+\\) exited with code 3 and no restart is left \\(1 of --max-restarts 1 used\\);"
                        + " stopping the other 2 workers");
        assertThat(out).contains("probe rank 1 pid").contains("restart 1 extension 1").doesNotContain("done");
        assertThat(Pattern.compile("\\[0\\]: probe rank 0 pid").matcher(out).results().count()).as(out).isEqualTo(1);
        assertThat(took).as("the waiting workers were stopped, not waited for").isLessThan(Duration.ofSeconds(40));
    }

    /** {@code run --max-restarts 1} of a process-group job: rank 1 crashes, is restarted, rejoins through {@link Elastic}, and every sum is right. */
    @Test
    void aCrashedRankIsRestartedAndRejoinsTheRunningGroup() {
        Object[] r = PgBenchCommandTest.execute("run", "--nproc-per-node", "3", "--max-restarts", "1", "--timeout-s", "80",
                "--jvm-arg=-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", ElasticProbe.class.getName(), "15", "1");
        String out = (String) r[1];
        String err = (String) r[2];
        assertThat((int) r[0]).as(out + err).isZero();
        assertThat(out).contains("[1]: CRASH rank 1 at iter 15").containsPattern("\\[1\\]: START rank 1 pid \\d+ restart 1 extension true")
                .doesNotContain("WRONG");
        assertThat(err).contains("exited with code 3; restarting it alone as an extension rank");
        // killed once, recovered once: epochs 0 -> 1 (drop) -> 2 (rejoin); the joiner reports the same
        for (int rank = 0; rank < 3; rank++) {
            assertThat(out).contains("[" + rank + "]: RESULT rank " + rank + " restart " + (rank == 1 ? 1 : 0) + " epoch 2 mask 111 wrong 0 rejoined true");
        }
    }

    /**
     * Two launchers (nodes 0 and 1 of 2) sharing one etcd store, no store hosted by either: rank 3,
     * on node 1, crashes; node 1's launcher restarts it, node 0's launcher restarts nothing, and the
     * group heals across both.
     */
    @Test
    void launchersSharingAnEtcdStoreEachRestartTheirOwnWorkers() throws Exception {
        try (EtcdTestServer etcd = EtcdTestServer.start()) {
            String uri = etcd.storeUri("restart-" + UUID.randomUUID()).toString();
            Recorder[] recs = {new Recorder(), new Recorder()};
            List<CompletableFuture<WorkerLauncher.Outcome>> runs = new ArrayList<>();
            // one thread per launcher: the common pool may have a single thread on a small machine
            ExecutorService threads = Executors.newFixedThreadPool(2);
            for (int node = 0; node < 2; node++) {
                int n = node;
                runs.add(CompletableFuture.supplyAsync(() -> {
                    try (Rendezvous rdzv = Rendezvous.resolve(null, uri, n, 2)) {
                        return WorkerLauncher.builder(ElasticProbe.class.getName()).args(List.of("15", "3")).nprocPerNode(2).node(n, 2)
                                .jvmOptions(List.of("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"))
                                .environment(Map.of("MOONCAKE_TIMEOUT_MS", "10000"))
                                .rendezvous(rdzv).maxRestarts(1).jobTimeout(Duration.ofSeconds(80)).sink(recs[n]).events(recs[n]).build().run();
                    }
                }, threads));
            }
            threads.shutdown();
            WorkerLauncher.Outcome node0 = runs.get(0).get(100, TimeUnit.SECONDS);
            WorkerLauncher.Outcome node1 = runs.get(1).get(100, TimeUnit.SECONDS);
            String all = recs[0].text() + "\n----\n" + recs[1].text();
            assertThat(node0.exitCode()).as(all).isZero();
            assertThat(node1.exitCode()).as(all).isZero();
            assertThat(recs[0].starts).as("node 0 restarts nothing").allMatch(s -> s.endsWith(" 0")).hasSize(2);
            assertThat(recs[1].starts).as("node 1 restarts rank 3 once").hasSize(3).anyMatch(s -> s.startsWith("3 ") && s.endsWith(" 1"));
            assertThat(recs[0].lines).noneMatch(l -> l.contains("restarting"));
            assertThat(recs[1].lines).anyMatch(l -> l.startsWith("launcher rank 3 (local rank 1, pid ") && l.contains("restarting it alone"));
            for (int rank = 0; rank < 4; rank++) {
                Recorder rec = recs[rank / 2];
                String want = "out " + rank + " RESULT rank " + rank + " restart " + (rank == 3 ? 1 : 0) + " epoch 2 mask 1111 wrong 0 rejoined true";
                assertThat(rec.lines).as(all).contains(want);
            }
        }
    }
}
