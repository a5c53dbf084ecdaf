package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

/**
 * {@code mooncake4j epbench}: times EpBuffer's dispatch and combine, DeepEP low-latency style. Hosts an
 * embedded store and launches {@code -g} {@link EpBenchWorker} processes through {@link WorkerLauncher};
 * rank 0 prints the table and writes the result file. Exit code: 0, or the first failing worker's.
 * One run per instance, on the picocli thread.
 */
@Command(name = "epbench", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"Expert-parallel dispatch/combine benchmark (DeepEP low-latency style): launches -g worker JVMs, each with an EpBuffer and "
                + "seeded random top-k routing, and prints per phase the median and mean time and the logical bandwidth "
                + "(bytes per valid selection x selections per rank / time).",
                "Example: mooncake4j epbench -g 2 --tokens 128 --hidden 7168 --topk 8 --experts 288 --fp8"})
final class EpBenchCommand implements Callable<Integer> {
    @Mixin
    EpBenchOptions options = new EpBenchOptions();

    @Option(names = "--json", paramLabel = "FILE", description = "Write the results as JSON here")
    Path json;

    @Option(names = "--timeout-s", defaultValue = "600", paramLabel = "T", description = "Stop the run after T seconds (default: ${DEFAULT-VALUE})")
    long timeoutS;

    @Option(names = "--jvm-arg", paramLabel = "OPT", description = "A JVM option for every worker, e.g. --jvm-arg=-Xmx8g (repeatable)")
    List<String> jvmArgs = new ArrayList<>();

    @Override
    public Integer call() throws IOException {
        options.validate();
        return PgBenchCommand.runBench(EpBenchWorker.class, options.toArgs(), json, "epbench-", options.ranks, timeoutS, jvmArgs,
                results -> {});
    }
}
