package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import javax.imageio.ImageIO;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PlotCommandTest {
    @TempDir
    Path dir;

    @Test
    void seriesArgumentsNameALabelAFileAndOptionallyAMember() {
        assertThat(PlotCommand.SeriesSpec.parse("ours=docs/a.json")).isEqualTo(new PlotCommand.SeriesSpec("ours", Path.of("docs/a.json"), null));
        assertThat(PlotCommand.SeriesSpec.parse("gloo 4=/x/t.json:gloo_allreduce"))
                .isEqualTo(new PlotCommand.SeriesSpec("gloo 4", Path.of("/x/t.json"), "gloo_allreduce"));
    }

    @Test
    void ratioTableComparesTheFirstSeriesWithEachOtherPerCommonSize() {
        var ours = new BandwidthChart.Series("ours", List.of(new BenchResults.Point(8, 10, 0.001), new BenchResults.Point(1024, 20, 0.1)));
        var gloo = new BandwidthChart.Series("gloo", List.of(new BenchResults.Point(1024, 50, 0.04), new BenchResults.Point(4096, 60, 0.1)));
        String table = PlotCommand.ratioTable(List.of(ours, gloo));
        assertThat(table).contains("# ours vs gloo: time ratio = time(gloo)/time(ours)");
        assertThat(table.lines().filter(l -> !l.startsWith("#")).toList()).containsExactly(
                String.format("%15d %14s %14s %11s %12s", 1024, "20.00", "50.00", "2.50", "2.50"));
    }

    @Test
    void writesAPngChartOfEverySeries() throws Exception {
        Path a = dir.resolve("a.json");
        BenchResults.write(a, List.of(new BenchResults.Row("all_reduce", 8, 2, "float32", "sum", -1, 2, 10, 0.0008, 0.0008, 0),
                new BenchResults.Row("all_reduce", 64L << 20, 16L << 20, "float32", "sum", -1, 2, 40000, 1.6, 1.6, 0)));
        Path png = dir.resolve("out/chart.png");
        int code = Main.commandLine().execute("plot", "--out", png.toString(), "--title", "t", "--series", "ours=" + a, "--series", "again=" + a,
                "--metric", "time");
        assertThat(code).isZero();
        assertThat(Files.size(png)).isGreaterThan(1000);
        var image = ImageIO.read(png.toFile());
        assertThat(image.getWidth()).isEqualTo(1100);
        assertThat(BandwidthChart.sizeLabel(20)).isEqualTo("1MB");
        assertThat(BandwidthChart.sizeLabel(3)).isEqualTo("8B");
        assertThat(BandwidthChart.sizeLabel(2.5)).isEmpty();
    }
}
