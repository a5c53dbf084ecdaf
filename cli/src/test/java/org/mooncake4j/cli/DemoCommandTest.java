package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class DemoCommandTest {
    @Test
    void everyCollectiveChecksOutOnFourRanks() {
        Object[] r = PgBenchCommandTest.execute("demo", "--timeout-s", "55");
        String stdout = (String) r[1];
        assertThat((int) r[0]).as(stdout + r[2]).isZero();
        assertThat(stdout).contains("# all 10 checks passed on 4 ranks").doesNotContain("WRONG");
        for (String c : new String[] {"all_reduce (sum)", "broadcast (root 3)", "all_gather", "reduce_scatter (sum)", "all_to_all_single (uneven)",
                "gather (root 0)", "scatter (root 0)", "barrier", "send/recv ring"}) {
            assertThat(stdout).containsPattern("(?m)^" + java.util.regex.Pattern.quote(c) + ".*\\| OK ");
        }
        assertThat(stdout).containsPattern("(?m)^all_reduce \\(sum\\)\\s+\\| int64 .*\\| OK ");
    }
}
