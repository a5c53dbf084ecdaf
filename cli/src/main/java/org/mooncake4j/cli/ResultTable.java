package org.mooncake4j.cli;

import java.util.Locale;

/**
 * The nccl-tests result table: one header line, then one fixed-width line per size, so output
 * of pgbench lines up with {@code all_reduce_perf} logs. Stateless.
 */
final class ResultTable {
    static final String HEADER =
            "#       size(B)    count    type   redop    root     time(us)  algbw(GB/s)  busbw(GB/s)  #wrong";

    private ResultTable() {}

    /** One row under {@link #HEADER}; {@code #wrong} is {@code N/A} when the results were not checked. */
    static String row(BenchResults.Row r) {
        return String.format(Locale.ROOT, "%15d %8d %7s %7s %7d %12s %12s %12s %7s",
                r.bytes(), r.count(), r.dtype(), r.op(), r.root(), time(r.timeUs()), bandwidth(r.algbw()), bandwidth(r.busbw()),
                r.wrong() < 0 ? "N/A" : Long.toString(r.wrong()));
    }

    /** Two decimals below 10 ms, whole microseconds above, as nccl-tests does. */
    static String time(double us) {
        return String.format(Locale.ROOT, us < 10_000 ? "%.2f" : "%.0f", us);
    }

    static String bandwidth(double gbps) {
        return String.format(Locale.ROOT, gbps < 0.01 && gbps > 0 ? "%.4f" : "%.2f", gbps);
    }
}
