package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

class DemoCommandTest {
    /** All phases: the checked collectives table; the kill, the restart, the rejoin and rank 0's timeline; the MoE layer with a rank leaving. */
    @Test
    void everyCollectiveChecksOutAndAKilledRankIsRestartedAndRejoins() {
        Object[] r = PgBenchCommandTest.execute("demo", "--timeout-s", "105");
        String stdout = (String) r[1];
        String stderr = (String) r[2];
        assertThat((int) r[0]).as(stdout + stderr).isZero();
        assertThat(stdout).contains("# all 10 checks passed on 4 ranks").doesNotContain("WRONG");
        for (String c : new String[] {"all_reduce (sum)", "broadcast (root 3)", "all_gather", "reduce_scatter (sum)", "all_to_all_single (uneven)",
                "gather (root 0)", "scatter (root 0)", "barrier", "send/recv ring"}) {
            assertThat(stdout).containsPattern("(?m)^" + Pattern.quote(c) + ".*\\| OK ");
        }
        assertThat(stdout).containsPattern("(?m)^all_reduce \\(sum\\)\\s+\\| int64 .*\\| OK ");

        // the fault-tolerance phase: the demo kills rank 2, the launcher restarts it alone, it rejoins
        assertThat(stdout).containsPattern("(?m)^# steady: iter 40 sum 10 OK \\(epoch 0, mask 1111\\) on 4 ranks");
        assertThat(stderr).containsPattern("\\[mooncake4j\\]: demo: sent SIGKILL to rank 2 \\(pid \\d+\\)")
                .containsPattern("\\[mooncake4j\\]: rank 2 \\(local rank 2, pid \\d+\\) exited with code 137 \\(killed by SIGKILL\\); restarting it alone"
                        + " as an extension rank \\(MOONCAKE_EXTENSION=1, MOONCAKE_RESTART_COUNT=1\\)");
        assertThat(stdout).containsPattern("(?m)^\\[2\\]: rank 2 restarted \\(MOONCAKE_RESTART_COUNT=1\\): joined in epoch 2 \\(mask 1111\\)");
        String timeline = stdout.substring(stdout.indexOf("# timeline on rank 0"));
        // a sum covers the mask after its operation, or the one before it ("covered") when a failure during it was committed
        String sum = "iter \\d+ sum (\\d+) (OK|WRONG) \\(epoch (\\d+), mask (\\d+)(?:, covered (\\d+))?\\)";
        assertThat(timeline).containsPattern("(?m)^ +\\+0\\.0 ms  kill sent: SIGKILL to rank 2 \\(pid \\d+\\) +" + "iter \\d+ sum 10 OK \\(epoch 0, mask 1111\\) \\| ")
                .containsPattern("(?m)^ +\\+\\d+\\.\\d ms  failure detected .*: epoch 1, agreed mask 1101 ")
                .containsPattern("(?m)^ +\\+\\d+\\.\\d ms  replacement process started: rank 2, pid \\d+, MOONCAKE_RESTART_COUNT=1 ")
                .containsPattern("(?m)^ +\\+\\d+\\.\\d ms  replacement joined: recoverRanks returned after iter \\d+ +iter \\d+ sum 7 OK \\(epoch 1, mask 1101\\)"
                        + " \\| iter \\d+ sum 10 OK \\(epoch 2, mask 1111\\)")
                .containsPattern("(?m)^ +\\+\\d+\\.\\d ms  first full sum again: iter \\d+ sum 10 OK \\(epoch 2, mask 1111\\)")
                .containsPattern("(?m)^# fault tolerance passed: \\d+ iterations, every sum on every rank checked OK");
        // every iteration the timeline shows summed to what its mask says: 10 over 1111, 7 over 1101
        Matcher m = Pattern.compile(sum).matcher(timeline);
        int seen = 0;
        while (m.find()) {
            seen++;
            String covered = m.group(5) != null ? m.group(5) : m.group(4);
            String want = switch (covered) {
                case "1111" -> "10";
                case "1101" -> "7";
                default -> "mask " + covered + " is unexpected";
            };
            assertThat(m.group(1)).as(m.group()).isEqualTo(want);
            assertThat(m.group(2)).as(m.group()).isEqualTo("OK");
        }
        assertThat(seen).isGreaterThanOrEqualTo(9);

        // the MoE phase: rank 3 leaves between dispatch and combine of step 2; every survivor drops exactly its experts 12..15
        for (int s = 0; s < 4; s++) {
            String mask = s < 2 ? "\\[1, 1, 1, 1\\] on all 4 ranks" : "\\[1, 1, 1, 0\\] on all 3 ranks";
            assertThat(stdout).containsPattern("(?m)^step " + s + " OK: activeRanks " + mask + "; \\d+ elements .*, 0 outside it, ");
        }
        assertThat(stdout).containsPattern("(?m)^ +reference without rank 3's experts 12\\.\\.15; \\d+ tokens had a selection there")
                .contains("MoE check: PASSED");
    }
}
