package org.mooncake4j.cli;

/**
 * A stand-in worker for launcher tests: prints its environment on stdout and a line on stderr,
 * then the rank named by {@code args[0]} exits with code {@code args[1]} while the others either
 * exit with 0 or, when {@code args[2]} is {@code hang}, sleep until they are stopped.
 */
public final class EchoAndExit {
    private EchoAndExit() {}

    public static void main(String[] args) throws InterruptedException {
        int rank = Integer.parseInt(System.getenv("RANK"));
        System.out.println("hello from rank " + rank + " local " + System.getenv("LOCAL_RANK") + " of " + System.getenv("WORLD_SIZE")
                + " local_world " + System.getenv("LOCAL_WORLD_SIZE") + " hosted " + System.getenv("MOONCAKE_STORE_HOSTED")
                + " store " + System.getenv("MOONCAKE_STORE") + " master " + System.getenv("MASTER_ADDR") + ":" + System.getenv("MASTER_PORT"));
        System.err.println("stderr of rank " + rank);
        if (rank == Integer.parseInt(args[0])) System.exit(Integer.parseInt(args[1]));
        if (args.length > 2 && args[2].equals("hang")) Thread.sleep(120_000);
    }
}
