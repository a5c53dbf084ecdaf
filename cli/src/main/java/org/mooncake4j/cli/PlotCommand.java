package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code mooncake4j plot}: reads result files (pgbench's, {@code bench/gloo_allreduce.py}'s, or a
 * member of {@code torch_baselines.py}'s), draws busbw or time against size on one chart, and
 * prints, per size, how the first series compares with each other one. One run per instance.
 */
@Command(name = "plot", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"Chart several result files on one PNG and print the first series' ratios to each other series.",
                "Example: mooncake4j plot --out cmp.png --title 'all_reduce' --series ours=a.json --series gloo=b.json"})
final class PlotCommand implements Callable<Integer> {
    @Option(names = "--out", paramLabel = "FILE.png", description = "Write the chart here (without it, only the ratio table is printed)")
    Path out;

    @Option(names = "--title", defaultValue = "", description = "Chart title")
    String title;

    @Option(names = "--series", required = true, paramLabel = "LABEL=PATH.json[:KEY]",
            description = "A result file and its legend label; KEY names the member holding the rows when it is not 'rows' (repeatable)")
    List<String> series = new ArrayList<>();

    @Option(names = "--metric", defaultValue = "busbw", description = "busbw or time (default: ${DEFAULT-VALUE})")
    String metric;

    /** One {@code --series} argument. */
    record SeriesSpec(String label, Path path, String key) {
        static SeriesSpec parse(String text) {
            int eq = text.indexOf('=');
            if (eq <= 0) throw new IllegalArgumentException("--series " + text + ": write LABEL=PATH.json or LABEL=PATH.json:KEY");
            String label = text.substring(0, eq);
            String rest = text.substring(eq + 1);
            int json = rest.toLowerCase(Locale.ROOT).lastIndexOf(".json:");
            if (json >= 0) return new SeriesSpec(label, Path.of(rest.substring(0, json + 5)), rest.substring(json + 6));
            return new SeriesSpec(label, Path.of(rest), null);
        }
    }

    @Override
    public Integer call() throws IOException {
        BandwidthChart.Metric m = BandwidthChart.Metric.parse(metric);
        List<BandwidthChart.Series> loaded = new ArrayList<>();
        for (String s : series) {
            SeriesSpec spec = SeriesSpec.parse(s);
            if (!Files.isRegularFile(spec.path())) throw new IllegalArgumentException("--series " + s + ": file " + spec.path() + " does not exist");
            loaded.add(new BandwidthChart.Series(spec.label(), BenchResults.readPoints(spec.path(), spec.key())));
        }
        System.out.print(ratioTable(loaded));
        if (out != null) {
            BandwidthChart.write(out, title.isEmpty() ? m.axisTitle + " vs size" : title, m, loaded);
            System.out.println("# chart written to " + out);
        }
        return 0;
    }

    /**
     * Per size present in both: the time ratio other/first and the busbw ratio first/other, so
     * above 1 means the first series is faster, in both columns.
     */
    static String ratioTable(List<BandwidthChart.Series> series) {
        StringBuilder sb = new StringBuilder();
        if (series.size() < 2) return sb.toString();
        BandwidthChart.Series first = series.getFirst();
        Map<Long, BenchResults.Point> base = byBytes(first);
        for (BandwidthChart.Series other : series.subList(1, series.size())) {
            sb.append("# ").append(first.label()).append(" vs ").append(other.label())
                    .append(": time ratio = time(").append(other.label()).append(")/time(").append(first.label())
                    .append("), busbw ratio = busbw(").append(first.label()).append(")/busbw(").append(other.label())
                    .append("); above 1: ").append(first.label()).append(" is faster\n");
            sb.append(String.format(Locale.ROOT, "%15s %14s %14s %11s %12s%n", "#       size(B)", "first(us)", "other(us)", "time ratio", "busbw ratio"));
            int common = 0;
            for (Map.Entry<Long, BenchResults.Point> e : byBytes(other).entrySet()) {
                BenchResults.Point a = base.get(e.getKey());
                if (a == null) continue;
                BenchResults.Point b = e.getValue();
                common++;
                sb.append(String.format(Locale.ROOT, "%15d %14s %14s %11s %12s%n", e.getKey(), ResultTable.time(a.timeUs()), ResultTable.time(b.timeUs()),
                        ratio(b.timeUs(), a.timeUs()), ratio(a.busbw(), b.busbw())));
            }
            if (common == 0) sb.append("# (no size appears in both)\n");
        }
        return sb.toString();
    }

    private static Map<Long, BenchResults.Point> byBytes(BandwidthChart.Series s) {
        Map<Long, BenchResults.Point> m = new TreeMap<>();
        for (BenchResults.Point p : s.points()) m.put(p.bytes(), p);
        return m;
    }

    private static String ratio(double num, double den) {
        return den > 0 && Double.isFinite(num) ? String.format(Locale.ROOT, "%.2f", num / den) : "-";
    }
}
