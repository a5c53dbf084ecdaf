package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class BenchResultsTest {
    @TempDir
    Path dir;

    @Test
    void rowsSurviveTheRoundTripWithMachineAndDate() throws Exception {
        var rows = List.of(
                new BenchResults.Row("all_reduce", 8, 2, "float32", "sum", -1, 2, 10.5, 0.00076, 0.00076, 0),
                new BenchResults.Row("all_reduce", 1024, 256, "float32", "sum", -1, 2, 20.25, 0.05, 0.05, -1));
        Path f = dir.resolve("sub/r.json");
        BenchResults.write(f, rows);
        assertThat(BenchResults.readRows(f)).isEqualTo(rows);
        @SuppressWarnings("unchecked") var doc = (Map<String, Object>) Json.parse(Files.readString(f));
        assertThat(doc.keySet()).containsExactly("machine", "date", "rows");
        assertThat(((Map<?, ?>) doc.get("machine")).get("cores")).isEqualTo((long) Runtime.getRuntime().availableProcessors());
        assertThat(Files.readString(f)).contains("\"wrong\": null");
    }

    @Test
    void readsPythonsJsonIncludingTorchBaselinesTriples() throws Exception {
        Path f = dir.resolve("t.json");
        Files.writeString(f, "{\"world\": 2, \"gloo_allreduce\": [[1024, 30.5, 0.03], [8, 12.0, 6.7e-4]], \"x\": NaN}");
        assertThat(BenchResults.readPoints(f, "gloo_allreduce"))
                .containsExactly(new BenchResults.Point(8, 12.0, 6.7e-4), new BenchResults.Point(1024, 30.5, 0.03));
        assertThatThrownBy(() -> BenchResults.readPoints(f, null)).hasMessageContaining("no 'rows' member").hasMessageContaining("gloo_allreduce");
        assertThatThrownBy(() -> BenchResults.readPoints(f, "nope")).hasMessageContaining("no top-level member 'nope'");
    }

    @Test
    void jsonHandlesEscapesAndNesting() {
        Object v = Json.parse("{\"a\": [1, -2.5e3, true, null, \"q\\\"\\n\\u00e9\"], \"b\": {}}");
        assertThat(v).isEqualTo(Map.of("a", java.util.Arrays.asList(1L, -2500.0, true, null, "q\"\né"), "b", Map.of()));
        assertThat(Json.parse(Json.write(v))).isEqualTo(v);
        assertThatThrownBy(() -> Json.parse("{\"a\": }")).hasMessageContaining("offset 6");
    }
}
