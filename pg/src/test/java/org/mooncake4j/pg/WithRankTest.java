package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class WithRankTest {
    @Test
    void addsARankKeepingTheArraySortedAndFreeOfDuplicates() {
        assertThat(ProcessGroup.withRank(new int[0], 3)).containsExactly(3);
        assertThat(ProcessGroup.withRank(new int[] {1, 4}, 2)).containsExactly(1, 2, 4);
        assertThat(ProcessGroup.withRank(new int[] {1, 4}, 4)).containsExactly(1, 4);
        assertThat(ProcessGroup.withRank(new int[] {1, 4}, 0)).containsExactly(0, 1, 4);
    }
}
