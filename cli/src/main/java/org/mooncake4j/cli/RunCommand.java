package org.mooncake4j.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.jar.Attributes;
import java.util.jar.JarFile;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/**
 * {@code mooncake4j run}: torchrun for the JVM. Hosts the embedded metadata store (unless
 * {@code --store} names one, or this is not node 0 of {@code --rdzv-endpoint}), then runs
 * {@code --nproc-per-node} workers of a main class or an executable JAR through
 * {@link WorkerLauncher}. With {@code --max-restarts K}, a worker that dies is restarted alone as an
 * extension rank (up to K times on this node) while the others keep running. Its exit code is that
 * of the first worker that fails with no restart left, 124 when the time limit passes. One run per
 * instance, on the picocli thread.
 */
@Command(name = "run", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"Launch a distributed job like torchrun: N worker JVMs per node, each with RANK, LOCAL_RANK, WORLD_SIZE, "
                + "LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and MOONCAKE_STORE set; their output is prefixed with [rank]: .",
                "Elastic restarts (--max-restarts K): a worker that dies (non-zero exit or killed) is restarted alone, with the same "
                        + "RANK, LOCAL_RANK and WORLD_SIZE plus MOONCAKE_EXTENSION=1 and MOONCAKE_RESTART_COUNT=n, so that it rejoins the "
                        + "running group as an extension rank (org.mooncake4j.cli.Elastic.initFromEnv does it) while the other workers keep "
                        + "running; their loop admits it (Elastic.recoverReady). torchrun would restart every worker. Works the same with "
                        + "--store etcd://...; with several nodes each launcher restarts its own workers.",
                "Example: mooncake4j run --nproc-per-node 4 --max-restarts 3 com.example.Train --epochs 3"})
final class RunCommand implements Callable<Integer> {
    @Option(names = {"--nproc-per-node", "--nproc_per_node"}, required = true, paramLabel = "N", description = "Workers to start on this node")
    int nprocPerNode;

    @Option(names = {"--rdzv-endpoint", "--rdzv_endpoint"}, paramLabel = "HOST:PORT",
            description = "Node 0 hosts the embedded store here; the other nodes connect to it (port 29500 when omitted)")
    String rdzvEndpoint;

    @Option(names = "--store", paramLabel = "URI", description = "Use this store instead of hosting one: etcd://host:port/prefix or tcp://host:port")
    String store;

    @Option(names = {"--node-rank", "--node_rank"}, defaultValue = "0", paramLabel = "R", description = "This node's index (default: ${DEFAULT-VALUE})")
    int nodeRank;

    @Option(names = "--nnodes", defaultValue = "1", paramLabel = "M", description = "Number of nodes (default: ${DEFAULT-VALUE})")
    int nnodes;

    @Option(names = "--timeout-s", defaultValue = "0", paramLabel = "T",
            description = "Stop the job and exit with 124 after T seconds; 0 = no limit (default: ${DEFAULT-VALUE})")
    long timeoutS;

    @Option(names = "--stop-grace-s", defaultValue = "5", paramLabel = "S",
            description = "Seconds between SIGTERM and SIGKILL when stopping workers (default: ${DEFAULT-VALUE})")
    long stopGraceS;

    @Option(names = {"--max-restarts", "--max_restarts"}, defaultValue = "0", paramLabel = "K",
            description = "Restart dead workers of this node, one at a time and alone, up to K times in all; first processes get "
                    + "MOONCAKE_EXTENSION=0, replacements MOONCAKE_EXTENSION=1 and MOONCAKE_RESTART_COUNT=n. 0 = the first failure "
                    + "stops the job (default: ${DEFAULT-VALUE})")
    int maxRestarts;

    @Option(names = "--jvm-arg", paramLabel = "OPT", description = "A JVM option for every worker, e.g. --jvm-arg=-Xmx8g (repeatable)")
    List<String> jvmArgs = new ArrayList<>();

    @Parameters(index = "0", paramLabel = "CLASS|JAR", description = "Main class on this class path, or an executable JAR (Main-Class in its manifest)")
    String target;

    @Parameters(index = "1..*", paramLabel = "ARGS", description = "Arguments for the worker's main method")
    List<String> args = new ArrayList<>();

    @Override
    public Integer call() {
        List<String> classPath = WorkerLauncher.currentClassPath();
        String mainClass = resolveMainClass(target, classPath);
        try (Rendezvous rdzv = Rendezvous.resolve(rdzvEndpoint, store, nodeRank, nnodes)) {
            WorkerLauncher launcher = WorkerLauncher.builder(mainClass)
                    .classPath(classPath)
                    .jvmOptions(jvmArgs)
                    .args(args)
                    .nprocPerNode(nprocPerNode)
                    .node(nodeRank, nnodes)
                    .rendezvous(rdzv)
                    .jobTimeout(Duration.ofSeconds(timeoutS))
                    .stopGrace(Duration.ofSeconds(stopGraceS))
                    .maxRestarts(maxRestarts)
                    .build();
            System.err.println("[mooncake4j]: starting " + nprocPerNode + " worker(s) of " + mainClass + " as ranks " + nodeRank * nprocPerNode
                    + ".." + ((nodeRank + 1) * nprocPerNode - 1) + " of " + launcher.worldSize() + "; store " + rdzv
                    + (maxRestarts > 0 ? "; up to " + maxRestarts + " restart(s) of dead workers, as extension ranks" : ""));
            return launcher.run().exitCode();
        }
    }

    /**
     * The main class to run: from the manifest when {@code target} is a JAR file (which is then
     * appended to {@code classPath}), otherwise {@code target} itself, which must be on the class path.
     */
    static String resolveMainClass(String target, List<String> classPath) {
        Path p = Path.of(target);
        if (target.endsWith(".jar") || Files.isRegularFile(p)) {
            if (!Files.isRegularFile(p)) throw new IllegalArgumentException("JAR " + target + " does not exist: give the path of an executable JAR or a main class name");
            String main;
            try (JarFile jar = new JarFile(p.toFile())) {
                main = jar.getManifest() == null ? null : jar.getManifest().getMainAttributes().getValue(Attributes.Name.MAIN_CLASS);
            } catch (IOException e) {
                throw new IllegalArgumentException("Cannot read JAR " + target + ": " + e.getMessage() + ". Give an executable JAR or a main class name.", e);
            }
            if (main == null || main.isBlank()) {
                throw new IllegalArgumentException("JAR " + target + " has no Main-Class in its manifest: add one, or put the JAR on the class path and give the class name");
            }
            classPath.add(p.toAbsolutePath().toString());
            return main.trim();
        }
        try {
            Class.forName(target, false, RunCommand.class.getClassLoader());
        } catch (ClassNotFoundException e) {
            throw new IllegalArgumentException("Main class " + target + " is not on the launcher's class path (" + classPath.size()
                    + " entries, see java.class.path): give an executable JAR instead, or put the class's JAR on the launcher's class path");
        }
        return target;
    }
}
