package org.mooncake4j.pg.chaos;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Randomized fault injection into real multi-process groups (see {@link ChaosTrial} for what one
 * trial does and checks). Each trial: world size 3-4, shm or tcp, a victim rank that is killed
 * (SIGKILL), stopped past the group timeout then resumed (SIGSTOP/SIGCONT), or — over tcp — cut off
 * the network and reconnected, after 1-20 iterations of a random collective mix.
 *
 * <p>System properties: {@code chaos.trials} (total over both tests, default {@value #DEFAULT_TRIALS},
 * sized for about 20 minutes on a 2-core CI machine), {@code chaos.seed} (master seed; random and
 * printed when absent), {@code chaos.trial} (run only the trial with this seed, to reproduce a
 * failure), {@code chaos.maxMinutes} (stop starting trials after this long: a cap for long runs),
 * {@code chaos.keepLogs} (write every trial's worker logs, not only failed ones'). Worker logs of
 * failed trials and the summary table go to {@code target/chaos/}.
 */
class ChaosTest {
    static final int DEFAULT_TRIALS = 200;
    private static final Path OUT = Path.of("target", "chaos");
    private static final ChaosSummary SUMMARY = new ChaosSummary();
    private static long masterSeed;
    private static NetworkCut.Availability net;
    private static long started;

    @BeforeAll
    static void setUp() {
        masterSeed = Long.getLong("chaos.seed", System.nanoTime() ^ ProcessHandle.current().pid() << 32);
        started = System.nanoTime();
        net = NetworkCut.open();
        System.out.println("CHAOS master seed=" + masterSeed + " trials=" + trials() + "; network cut: "
                + (net.cut() != null ? net.cut().describe() : "unavailable: " + net.reason()));
    }

    @AfterAll
    static void tearDown() throws IOException {
        if (net.cut() != null) net.cut().close();
        String table = "chaos run: master seed " + masterSeed + ", " + (System.nanoTime() - started) / 1_000_000_000 + " s\n" + SUMMARY.table();
        System.out.println(table);
        Files.createDirectories(OUT);
        Files.writeString(OUT.resolve("summary.txt"), table);
    }

    @Test
    void survivorsFinishWithOneAgreedResultWhenARankIsKilledOrStopped() throws Exception {
        runTrials("survivorsFinishWithOneAgreedResultWhenARankIsKilledOrStopped", false, trials() - trials() / 3);
    }

    @Test
    void survivorsFinishWithOneAgreedResultWhenARankIsCutOffTheNetwork() throws Exception {
        if (net.cut() == null) SUMMARY.skip("NETCUT: " + net.reason());
        assumeTrue(net.cut() != null, () -> "NETCUT skipped: " + net.reason());
        runTrials("survivorsFinishWithOneAgreedResultWhenARankIsCutOffTheNetwork", true, trials() / 3);
    }

    /**
     * A deterministic case found by the random trials: a rank is killed while the others are between
     * collectives, and they enter the next one 100 ms apart (rank r pauses r x 100 ms). The first
     * survivor to enter detects the death inside the operation; the second joins the agreement from
     * between operations. Both must report the same drop and the same coverage for that operation.
     */
    @Test
    void survivorsBetweenOperationsReportTheDropLikeTheOthers() throws Exception {
        ChaosTrial.Spec spec = new ChaosTrial.Spec(masterSeed, 3, "shm", ChaosTrial.Fault.KILL9, 0, 5, 12, 2000, 1000, 100_000, 0, 0,
                ChaosStep.Profile.TINY, masterSeed);
        ChaosTrial.Outcome o = ChaosTrial.run(spec, null, OUT);
        SUMMARY.add(o);
        assertThat(o.violations().stream().filter(v -> !v.startsWith("leak-shm:"))).as(o.report()).isEmpty();
    }

    private static int trials() { return Integer.getInteger("chaos.trials", DEFAULT_TRIALS); }

    private static void runTrials(String method, boolean netcut, int count) throws Exception {
        Long only = Long.getLong("chaos.trial");
        long capNanos = Long.getLong("chaos.maxMinutes", Long.MAX_VALUE / 60_000_000_000L) * 60_000_000_000L;
        List<ChaosTrial.Outcome> failed = new ArrayList<>();
        int n = only != null ? 1 : count, ran = 0;
        for (int j = 0; j < n; j++) {
            if (System.nanoTime() - started > capNanos) {
                System.out.println("CHAOS wall-clock cap reached after " + ran + " trials");
                break;
            }
            long seed = only != null ? only : ChaosData.mix(masterSeed, 2L * j + (netcut ? 1 : 0));
            ChaosTrial.Spec spec = ChaosTrial.Spec.of(seed, netcut);
            long t0 = System.nanoTime();
            ChaosTrial.Outcome o = ChaosTrial.run(spec, net.cut(), OUT);
            ran++;
            SUMMARY.add(o);
            System.out.printf("TRIAL %d/%d %s %.1fs latency=%dms %s%n", j + 1, n, o.passed() ? "PASS" : "FAIL", (System.nanoTime() - t0) / 1e9,
                    o.latencyNanos() / 1_000_000, o.passed() ? spec.describe() : o.report());
            if (!o.passed()) failed.add(o);
        }
        StringBuilder msg = new StringBuilder();
        msg.append(failed.size()).append(" of ").append(ran).append(" trials failed (master seed ").append(masterSeed)
                .append("):\n");
        for (ChaosTrial.Outcome o : failed.subList(0, Math.min(10, failed.size()))) {
            msg.append(o.report()).append("\n  rerun: mvn -o -pl pg test -Dtest='ChaosTest#").append(method).append("' -Dchaos.trial=")
                    .append(o.spec().seed()).append('\n');
        }
        assertThat(failed).as(msg.toString()).isEmpty();
    }
}
