package org.mooncake4j.cli;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code mooncake4j demo}: hosts an embedded store, launches {@link DemoWorker} on 4 ranks (backend
 * mooncake-cpu) through {@link WorkerLauncher}, and lets rank 0 print one checked, timed row per
 * collective. Exits non-zero when a check fails or a rank dies. One run per instance.
 */
@Command(name = "demo", sortOptions = false,
        description = "Run every collective on 4 local ranks with known inputs, check each result, and print a table.")
final class DemoCommand implements Callable<Integer> {
    /** Small, short-lived JVMs: C1 and the serial collector start fastest when several share two cores. */
    private static final List<String> DEMO_JVM_OPTIONS = List.of("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1");

    @Option(names = {"-g", "--ranks"}, defaultValue = "4", description = "Number of ranks (default: ${DEFAULT-VALUE})")
    int ranks;

    @Option(names = "--timeout-s", defaultValue = "120", paramLabel = "T", description = "Stop the demo after T seconds (default: ${DEFAULT-VALUE})")
    long timeoutS;

    @Override
    public Integer call() {
        if (ranks < 2) throw new IllegalArgumentException("-g/--ranks must be at least 2 (the demo sends around a ring of ranks), got " + ranks);
        List<String> jvm = new ArrayList<>(PgBenchCommand.WORKER_JVM_OPTIONS);
        jvm.addAll(DEMO_JVM_OPTIONS);
        try (Rendezvous rdzv = Rendezvous.hostLocal()) {
            WorkerLauncher.Outcome outcome = WorkerLauncher.builder(DemoWorker.class.getName())
                    .jvmOptions(jvm)
                    .nprocPerNode(ranks)
                    .rendezvous(rdzv)
                    .jobTimeout(Duration.ofSeconds(timeoutS))
                    .sink(WorkerLauncher.LineSink.console(true))
                    .build()
                    .run();
            return outcome.exitCode();
        }
    }
}
