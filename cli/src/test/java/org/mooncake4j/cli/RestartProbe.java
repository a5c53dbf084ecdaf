package org.mooncake4j.cli;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * A stand-in worker for the launcher's restart tests (no process group). Every process prints
 * {@code probe rank R pid P restart N extension E} on start and {@code probe rank R pid P done} before
 * exiting with 0. The rank named by {@code args[0]} exits with 3 instead: only in its first process
 * when {@code args[1]} is {@code once} (its replacement then creates {@code args[2]/restarted} and
 * succeeds), in every process when it is {@code always}. The other ranks wait, at most 60 s, for
 * that file before they exit, so they are alive while the failing rank dies and is restarted; in
 * {@code always} mode nobody creates it and they are stopped by the launcher.
 */
public final class RestartProbe {
    private RestartProbe() {}

    public static void main(String[] args) throws Exception {
        int rank = Integer.parseInt(System.getenv("RANK"));
        long pid = ProcessHandle.current().pid();
        String restart = System.getenv(WorkerLauncher.RESTART_COUNT_ENV);
        System.out.println("probe rank " + rank + " pid " + pid + " restart " + restart + " extension " + System.getenv(WorkerLauncher.EXTENSION_ENV)
                + " world " + System.getenv("WORLD_SIZE") + " local " + System.getenv("LOCAL_RANK"));
        Path marker = Path.of(args[2], "restarted");
        if (rank == Integer.parseInt(args[0])) {
            if (args[1].equals("always") || restart.equals("0")) {
                System.out.flush();
                System.exit(3);
            }
            Files.writeString(marker, Long.toString(pid));
        } else {
            long end = System.nanoTime() + 60_000_000_000L;
            while (!Files.exists(marker) && System.nanoTime() - end < 0) Thread.sleep(20);
            if (!Files.exists(marker)) {
                System.out.println("probe rank " + rank + " gave up waiting for " + marker);
                System.exit(4);
            }
        }
        System.out.println("probe rank " + rank + " pid " + pid + " done");
    }
}
