package org.mooncake4j.pg.chaos;

import static org.junit.platform.engine.discovery.DiscoverySelectors.selectClass;
import static org.junit.platform.engine.discovery.DiscoverySelectors.selectMethod;

import java.io.PrintWriter;
import org.junit.platform.launcher.LauncherDiscoveryRequest;
import org.junit.platform.launcher.core.LauncherDiscoveryRequestBuilder;
import org.junit.platform.launcher.core.LauncherFactory;
import org.junit.platform.launcher.listeners.SummaryGeneratingListener;

/**
 * Runs one kind of {@link ChaosTest} trials outside Maven, from a frozen class path, so that a long
 * run holds no build lock and a rebuild cannot change the code under test halfway
 * ({@code bench/chaos-long.sh} starts several of these side by side). The argument picks the trials:
 * {@code kill-stop} (SIGKILL and SIGSTOP past the timeout), {@code netcut}, or {@code latency} (the
 * measured scenario, {@link FaultLatencyTest}, which prints its {@code MEASURE} lines). The {@code chaos.*}
 * system properties apply as under Maven; logs and the summary go to {@code ./target/chaos}.
 * Exits 0 when every trial passed, 1 otherwise, 2 on bad usage.
 */
public final class ChaosMain {
    private ChaosMain() {}

    public static void main(String[] args) {
        String method = switch (args.length == 1 ? args[0] : "") {
            case "kill-stop" -> "survivorsFinishWithOneAgreedResultWhenARankIsKilledOrStopped";
            case "netcut" -> "survivorsFinishWithOneAgreedResultWhenARankIsCutOffTheNetwork";
            case "latency" -> "";
            default -> null;
        };
        if (method == null) {
            System.err.println("usage: ChaosMain kill-stop|netcut|latency   (with -Dchaos.trials=N -Dchaos.seed=S -Dchaos.maxMinutes=M)");
            System.exit(2);
        }
        LauncherDiscoveryRequest request = LauncherDiscoveryRequestBuilder.request()
                .selectors(method.isEmpty() ? selectClass(FaultLatencyTest.class) : selectMethod(ChaosTest.class, method)).build();
        SummaryGeneratingListener listener = new SummaryGeneratingListener();
        LauncherFactory.create().execute(request, listener);
        PrintWriter out = new PrintWriter(System.out, true);
        listener.getSummary().printTo(out);
        listener.getSummary().printFailuresTo(out, 5);
        System.exit(listener.getSummary().getTotalFailureCount() == 0 && listener.getSummary().getTestsSucceededCount() > 0 ? 0 : 1);
    }
}
