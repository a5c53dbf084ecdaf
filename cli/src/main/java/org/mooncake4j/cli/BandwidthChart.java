package org.mooncake4j.cli;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.style.Styler;
import org.knowm.xchart.style.XYStyler;

/**
 * Draws bandwidth or time against message size as a PNG with XChart: x is log2 of the size
 * (ticks labelled 8B, 1KB, 1MB...), y is logarithmic because both span orders of magnitude.
 * Stateless; AWT runs headless.
 */
final class BandwidthChart {
    /** What the y axis shows. */
    enum Metric {
        BUSBW("busbw (GB/s)"), TIME("time (us)");

        final String axisTitle;

        Metric(String axisTitle) { this.axisTitle = axisTitle; }

        double of(BenchResults.Point p) { return this == BUSBW ? p.busbw() : p.timeUs(); }

        static Metric parse(String s) {
            return switch (s.trim().toLowerCase(Locale.ROOT)) {
                case "busbw", "bandwidth", "bw" -> BUSBW;
                case "time", "time_us", "latency" -> TIME;
                default -> throw new IllegalArgumentException("--metric " + s + " is unknown: use busbw or time");
            };
        }
    }

    /** One line of the chart. */
    record Series(String label, List<BenchResults.Point> points) {}

    private BandwidthChart() {}

    /** Writes the chart to {@code png}; points with a non-positive value cannot sit on a log axis and are left out. */
    static void write(Path png, String title, Metric metric, List<Series> series) throws IOException {
        System.setProperty("java.awt.headless", "true");
        XYChart chart = new XYChartBuilder().width(1100).height(650).title(title)
                .xAxisTitle("message size (log2 scale)").yAxisTitle(metric.axisTitle).build();
        XYStyler styler = chart.getStyler();
        styler.setYAxisLogarithmic(true);
        styler.setxAxisTickLabelsFormattingFunction(BandwidthChart::sizeLabel);
        styler.setLegendPosition(Styler.LegendPosition.InsideNW);
        styler.setMarkerSize(6);
        int drawn = 0;
        for (Series s : series) {
            List<Double> xs = new ArrayList<>();
            List<Double> ys = new ArrayList<>();
            for (BenchResults.Point p : s.points()) {
                double y = metric.of(p);
                if (p.bytes() <= 0 || !(y > 0) || Double.isInfinite(y)) continue;
                xs.add(Math.log(p.bytes()) / Math.log(2));
                ys.add(y);
            }
            if (xs.isEmpty()) continue;
            chart.addSeries(s.label(), xs, ys);
            drawn++;
        }
        if (drawn == 0) throw new IllegalArgumentException("nothing to plot: no series has a size with a positive " + metric.axisTitle);
        Path parent = png.toAbsolutePath().getParent();
        if (parent != null) Files.createDirectories(parent);
        // rendered in memory first: a failure (e.g. a JVM without fonts) leaves no empty file behind
        java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
        BitmapEncoder.saveBitmap(chart, bytes, BitmapEncoder.BitmapFormat.PNG);
        try (OutputStream out = Files.newOutputStream(png)) {
            bytes.writeTo(out);
        }
    }

    /** Tick label for x = log2(bytes): the size at whole powers of two, nothing between them. */
    static String sizeLabel(double log2) {
        long k = Math.round(log2);
        if (Math.abs(log2 - k) > 1e-6 || k < 0 || k > 62) return "";
        String s = ByteSize.format(1L << k);
        return s + "B";
    }
}
