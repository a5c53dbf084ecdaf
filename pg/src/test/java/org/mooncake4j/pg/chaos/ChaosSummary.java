package org.mooncake4j.pg.chaos;

import java.util.ArrayList;
import java.util.EnumMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Counts of chaos trials by fault, their failure categories, and the fault-to-completion latencies,
 * rendered as the table a long run prints (and docs/RELIABILITY.md quotes). Thread-safe.
 */
final class ChaosSummary {
    private final Map<ChaosTrial.Fault, int[]> counts = new EnumMap<>(ChaosTrial.Fault.class); // {trials, passed}
    private final Map<String, Integer> categories = new TreeMap<>();
    private final Map<ChaosTrial.Fault, List<Long>> latencies = new EnumMap<>(ChaosTrial.Fault.class);
    private final List<String> skipped = new ArrayList<>();

    synchronized void add(ChaosTrial.Outcome o) {
        ChaosTrial.Fault f = o.spec().fault();
        int[] c = counts.computeIfAbsent(f, k -> new int[2]);
        c[0]++;
        if (o.passed()) c[1]++;
        for (String cat : o.categories()) categories.merge(f.name() + " " + cat, 1, Integer::sum);
        if (o.latencyNanos() >= 0) {
            long ms = o.latencyNanos() / 1_000_000 - (f == ChaosTrial.Fault.KILL9 ? 0 : o.spec().timeoutMs());
            latencies.computeIfAbsent(f, k -> new ArrayList<>()).add(ms);
        }
    }

    synchronized void skip(String what) { skipped.add(what); }

    synchronized String table() {
        StringBuilder sb = new StringBuilder();
        sb.append(String.format("%-30s %7s %7s %7s%n", "fault", "trials", "passed", "failed"));
        int[] total = new int[2];
        for (Map.Entry<ChaosTrial.Fault, int[]> e : counts.entrySet()) {
            int[] c = e.getValue();
            sb.append(String.format("%-30s %7d %7d %7d%n", e.getKey(), c[0], c[1], c[0] - c[1]));
            total[0] += c[0];
            total[1] += c[1];
        }
        sb.append(String.format("%-30s %7d %7d %7d%n", "all", total[0], total[1], total[0] - total[1]));
        for (String s : skipped) sb.append("skipped: ").append(s).append('\n');
        if (!categories.isEmpty()) {
            sb.append("failures by category (a trial may count in several):\n");
            categories.forEach((k, v) -> sb.append(String.format("  %-50s %5d%n", k, v)));
        }
        sb.append("latency from the fault until every survivor completed the operation in flight (ms):\n");
        sb.append(String.format("  %-44s %6s %8s %8s %8s%n", "", "n", "median", "p99", "max"));
        for (Map.Entry<ChaosTrial.Fault, List<Long>> e : latencies.entrySet()) {
            List<Long> l = new ArrayList<>(e.getValue());
            l.sort(null);
            String name = e.getKey() == ChaosTrial.Fault.KILL9 ? "KILL9 detection" : e.getKey() + " hung peer, minus the timeout";
            sb.append(String.format("  %-44s %6d %8d %8d %8d%n", name, l.size(), percentile(l, 50), percentile(l, 99), l.getLast()));
        }
        return sb.toString();
    }

    /** Nearest-rank percentile of a sorted, non-empty list. */
    static long percentile(List<Long> sorted, int p) {
        int idx = (int) Math.ceil(p / 100.0 * sorted.size()) - 1;
        return sorted.get(Math.max(0, Math.min(sorted.size() - 1, idx)));
    }
}
