package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;

class ResultTableTest {
    @Test
    void headerIsTheNcclTestsOne() {
        assertThat(ResultTable.HEADER)
                .isEqualTo("#       size(B)    count    type   redop    root     time(us)  algbw(GB/s)  busbw(GB/s)  #wrong");
    }

    @Test
    void rowColumnsEndUnderTheirHeadings() {
        var r = new BenchResults.Row("all_reduce", 67108864, 16777216, "float32", "sum", -1, 4, 51234.4, 1.31, 1.96, 0);
        String row = ResultTable.row(r);
        assertThat(row).isEqualTo("       67108864 16777216 float32     sum      -1        51234         1.31         1.96       0");
        assertThat(row).hasSameSizeAs(ResultTable.HEADER);
        for (String heading : new String[] {"size(B)", "count", "type", "redop", "root", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong"}) {
            int end = ResultTable.HEADER.indexOf(heading) + heading.length();
            assertThat(row.charAt(end - 1)).as("column ending under %s", heading).isNotEqualTo(' ');
            if (end < row.length()) assertThat(row.charAt(end)).as("space after the %s column", heading).isEqualTo(' ');
        }
    }

    @Test
    void uncheckedRowsShowNotApplicableAndSmallTimesKeepDecimals() {
        var r = new BenchResults.Row("broadcast", 8, 2, "float32", "none", 0, 2, 12.3456, 0.00064, 0.00064, -1);
        assertThat(ResultTable.row(r)).endsWith("12.35       0.0006       0.0006     N/A").contains(" none ");
    }
}
