package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

/**
 * {@code mooncake4j pgbench}: the nccl-tests benchmark of one collective on the Mooncake process
 * group. Hosts an embedded store, launches {@code -g} {@link PgBenchWorker} processes through
 * {@link WorkerLauncher} (rank 0 prints the table), then writes the optional chart from the result
 * file. Exit code: 0, or the first failing worker's (1 when results were wrong). One run per
 * instance, on the picocli thread.
 */
@Command(name = "pgbench", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"nccl-tests-style benchmark of one collective: launches -g worker JVMs and prints, per size, time, algbw, busbw and #wrong.",
                "Example: mooncake4j pgbench --collective all_reduce -g 4 -b 8 -e 64M -f 4"})
final class PgBenchCommand implements Callable<Integer> {
    /** Child JVM flags: no per-rank INFO logging in the middle of the table. */
    static final List<String> WORKER_JVM_OPTIONS = List.of("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn");

    @Mixin
    BenchOptions options = new BenchOptions();

    @Option(names = "--json", paramLabel = "FILE", description = "Write the rows as JSON here")
    Path json;

    @Option(names = "--plot", paramLabel = "FILE.png", description = "Draw busbw against size as a PNG here")
    Path plot;

    @Option(names = "--timeout-s", defaultValue = "1800", paramLabel = "T", description = "Stop the run after T seconds (default: ${DEFAULT-VALUE})")
    long timeoutS;

    @Option(names = "--jvm-arg", paramLabel = "OPT", description = "A JVM option for every worker, e.g. --jvm-arg=-Xmx8g (repeatable)")
    List<String> jvmArgs = new ArrayList<>();

    @Override
    public Integer call() throws IOException {
        options.validate();
        return runBench(PgBenchWorker.class, options.toArgs(), json, "pgbench-", options.ranks, timeoutS, jvmArgs, results -> {
            if (plot == null) return;
            List<BenchResults.Point> points = BenchResults.readPoints(results, null);
            String label = "mooncake4j " + options.backend + " " + options.collective.label() + ", " + options.ranks + " ranks";
            BandwidthChart.write(plot, "pgbench " + options.collective.label() + " (" + options.dtype().torchName() + ", "
                    + options.ranks + " ranks)", BandwidthChart.Metric.BUSBW, List.of(new BandwidthChart.Series(label, points)));
            System.out.println("# chart written to " + plot);
        });
    }

    /** What a benchmark command does with its results file after the workers succeeded. */
    interface ResultsStep {
        void accept(Path results) throws IOException;
    }

    /**
     * Runs the workers ({@link #runWorkers}) with rank 0's results going to {@code json}, or to a
     * temporary file (named {@code tempPrefix}...) deleted afterwards, then {@code after} on them;
     * returns the command's exit status.
     */
    static int runBench(Class<?> worker, List<String> args, Path json, String tempPrefix, int ranks, long timeoutS, List<String> jvmArgs,
                        ResultsStep after) throws IOException {
        Path results = json != null ? json.toAbsolutePath() : Files.createTempFile(tempPrefix, ".json");
        try {
            WorkerLauncher.Outcome outcome = runWorkers(worker, args, results, ranks, timeoutS, jvmArgs);
            if (!outcome.succeeded()) return outcome.exitCode();
            after.accept(results);
            if (json != null) System.out.println("# results written to " + json);
            return 0;
        } finally {
            if (json == null) Files.deleteIfExists(results);
        }
    }

    /**
     * Runs {@code ranks} benchmark workers on this host around an embedded store: each gets
     * {@code args} plus {@code --results FILE} (rank 0 writes the rows there), the workers' JVM
     * options plus {@code jvmArgs}, and the job stops after {@code timeoutS}.
     */
    static WorkerLauncher.Outcome runWorkers(Class<?> worker, List<String> args, Path results, int ranks, long timeoutS, List<String> jvmArgs) {
        List<String> workerArgs = new ArrayList<>(args);
        workerArgs.add("--results");
        workerArgs.add(results.toString());
        List<String> jvm = new ArrayList<>(WORKER_JVM_OPTIONS);
        jvm.addAll(jvmArgs);
        return WorkerLauncher.runLocal(worker.getName(), ranks, b -> b.jvmOptions(jvm).args(workerArgs)
                .jobTimeout(Duration.ofSeconds(timeoutS)).sink(WorkerLauncher.LineSink.console(true)));
    }
}
