package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.core.internal.CpuAffinity;

/** Real multi-process runs: pgbench launches two worker JVMs on the Mooncake CPU backend. */
class PgBenchCommandTest {
    @TempDir
    Path dir;

    /** Runs the CLI in this JVM with stdout and stderr captured; returns {exit code, stdout, stderr}. */
    static Object[] execute(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream oldOut = System.out;
        PrintStream oldErr = System.err;
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
        try {
            int code = Main.commandLine().execute(args);
            return new Object[] {code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8)};
        } finally {
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"all_reduce", "alltoall"})
    void everyElementIsRightAtEverySize(String collective) throws Exception {
        Path json = dir.resolve(collective + ".json");
        Path png = dir.resolve(collective + ".png");
        Object[] r = execute("pgbench", "--collective", collective, "-g", "2", "-c", "1", "-b", "8", "-e", "1M", "-f", "16",
                "-n", "3", "-w", "1", "--timeout-s", "120", "--json", json.toString(), "--plot", png.toString());
        String stdout = (String) r[1];
        assertThat((int) r[0]).as(stdout + r[2]).isZero();
        assertThat(stdout).contains(ResultTable.HEADER, "# Out of bounds values : 0 OK");
        int cpus = CpuAffinity.current().size();
        if (cpus >= 2 && cpus < 4) {
            assertThat(stdout).contains("# cpu binding: each rank's thread on a CPU of its own (rank i on the i-th of CPUs " + CpuAffinity.current() + ")");
        } else if (cpus >= 4) {
            assertThat(stdout).contains("# cpu binding: none (2 ranks on " + cpus + " CPUs: two or more per rank, for its helper threads)");
        }
        var rows = BenchResults.readRows(json);
        assertThat(rows).extracting(BenchResults.Row::bytes).containsExactly(8L, 128L, 2048L, 32768L, 524288L);
        assertThat(rows).allSatisfy(row -> {
            assertThat(row.wrong()).isZero();
            assertThat(row.collective()).isEqualTo(collective);
            assertThat(row.ranks()).isEqualTo(2);
            assertThat(row.timeUs()).isPositive();
            assertThat(row.busbw()).isPositive();
            assertThat(stdout).contains(ResultTable.row(row));
        });
        assertThat(Files.size(png)).isGreaterThan(1000);
    }

    @Test
    void cpuBindingCanBeTurnedOffAndRejectsOtherValues() {
        Object[] off = execute("pgbench", "-g", "2", "-b", "8", "-e", "8", "-n", "1", "-w", "0", "--cpu-bind", "none", "--timeout-s", "150");
        assertThat((int) off[0]).as(off[1] + "" + off[2]).isZero();
        assertThat((String) off[1]).contains("# cpu binding: none (--cpu-bind none)");
        Object[] bad = execute("pgbench", "--cpu-bind", "core");
        assertThat((int) bad[0]).isNotZero();
        assertThat((String) bad[2]).contains("--cpu-bind takes auto or none, got core");
    }
}
