package org.mooncake4j.transfer.etcd;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Assumptions;

/**
 * A real single-member etcd server for tests: the {@code etcd} binary on free loopback ports with a
 * temporary data directory (in {@code /dev/shm} when there is one), started by {@link #start()},
 * which returns once {@code /health} says so.
 *
 * <p>Without the binary, {@link #start()} skips the calling test through JUnit {@link Assumptions},
 * or fails it when the environment variable {@code CI} is set, saying to install etcd-server. The
 * binary is {@code $ETCD_BINARY}, else {@code /usr/bin/etcd}, else {@code etcd} on the PATH.
 *
 * <p>Ownership: the caller owns the server; {@link #close()} kills it and deletes its data directory
 * (a JVM shutdown hook kills it too if the test never gets there). Not thread-safe; one test class
 * drives one server. Typical use: start in {@code @BeforeAll}, give each test its own
 * {@link #storeUri(String) prefix}, close in {@code @AfterAll}.
 */
public final class EtcdTestServer implements AutoCloseable {
    private static final Duration START_TIMEOUT = Duration.ofSeconds(20);
    private static final int START_ATTEMPTS = 3;

    private final Process process;
    private final Path dir;
    private final Path log;
    private final int clientPort;
    private final Thread killer;

    private EtcdTestServer(Process process, Path dir, Path log, int clientPort) {
        this.process = process;
        this.dir = dir;
        this.log = log;
        this.clientPort = clientPort;
        this.killer = new Thread(process::destroyForcibly, "etcd-test-server-killer");
        Runtime.getRuntime().addShutdownHook(killer);
    }

    /** The etcd binary, or {@code null} when none is installed. */
    public static Path findBinary() {
        String env = System.getenv("ETCD_BINARY");
        if (env != null && !env.isBlank()) return Files.isExecutable(Path.of(env)) ? Path.of(env) : null;
        Path usual = Path.of("/usr/bin/etcd");
        if (Files.isExecutable(usual)) return usual;
        String path = System.getenv("PATH");
        if (path == null) return null;
        for (String d : path.split(java.io.File.pathSeparator)) {
            Path p = Path.of(d, "etcd");
            if (Files.isExecutable(p)) return p;
        }
        return null;
    }

    /** The etcd binary; skips the calling test without one (fails it when {@code CI} is set). */
    public static Path requireBinary() {
        Path bin = findBinary();
        if (bin != null) return bin;
        String msg = "The etcd binary is not installed (looked at $ETCD_BINARY, /usr/bin/etcd and the PATH): install it with"
                + " 'apt-get install -y etcd-server' (or set ETCD_BINARY) to run the etcd tests.";
        if (System.getenv("CI") != null) return Assertions.fail(msg);
        return Assumptions.abort(msg);
    }

    /** Starts etcd on free loopback ports and waits until it is healthy (at most 20 s). */
    public static EtcdTestServer start() {
        Path bin = requireBinary();
        List<String> failures = new ArrayList<>();
        for (int attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
            EtcdTestServer s = launch(bin, failures);
            if (s != null) return s;
        }
        throw new IllegalStateException("etcd did not start in " + START_ATTEMPTS + " attempts:\n" + String.join("\n", failures));
    }

    /** One start attempt; null (with the reason added to {@code failures}) when the ports were taken. */
    private static EtcdTestServer launch(Path bin, List<String> failures) {
        int clientPort = freePort();
        int peerPort = freePort();
        Path dir;
        try {
            Path shm = Path.of("/dev/shm");
            dir = Files.isDirectory(shm) && Files.isWritable(shm)
                    ? Files.createTempDirectory(shm, "mooncake-etcd-") : Files.createTempDirectory("mooncake-etcd-");
        } catch (IOException e) {
            throw new UncheckedIOException("cannot create a data directory for etcd", e);
        }
        Path log = dir.resolve("etcd.log");
        String client = "http://127.0.0.1:" + clientPort;
        String peer = "http://127.0.0.1:" + peerPort;
        ProcessBuilder pb = new ProcessBuilder(bin.toString(),
                "--name", "mooncake-test",
                "--data-dir", dir.resolve("data").toString(),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "mooncake-test=" + peer,
                "--logger", "zap",
                "--log-level", "warn")
                .redirectErrorStream(true)
                .redirectOutput(log.toFile());
        Map<String, String> env = pb.environment();
        env.keySet().removeIf(k -> k.startsWith("ETCD_"));
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            deleteTree(dir);
            throw new UncheckedIOException("cannot run " + bin, e);
        }
        EtcdTestServer server = new EtcdTestServer(p, dir, log, clientPort);
        String why = server.awaitHealthy();
        if (why == null) return server;
        String output = server.logTail();
        server.close();
        if (output.contains("address already in use")) {
            failures.add("ports " + clientPort + "/" + peerPort + " were taken: " + why);
            return null;
        }
        throw new IllegalStateException("etcd at " + client + " did not become healthy: " + why + "\n--- etcd output ---\n" + output);
    }

    /** Null once /health reports healthy; otherwise why not (exited, or the start timeout passed). */
    private String awaitHealthy() {
        HttpClient http = HttpClient.newBuilder().proxy(HttpClient.Builder.NO_PROXY).connectTimeout(Duration.ofSeconds(1)).build();
        HttpRequest health = HttpRequest.newBuilder(URI.create(clientUrl() + "/health")).timeout(Duration.ofSeconds(1)).build();
        long end = System.nanoTime() + START_TIMEOUT.toNanos();
        String last = "no answer yet";
        while (System.nanoTime() - end < 0) {
            if (!process.isAlive()) return "etcd exited with code " + process.exitValue();
            try {
                HttpResponse<String> r = http.send(health, HttpResponse.BodyHandlers.ofString());
                if (r.statusCode() == 200 && r.body().contains("\"health\":\"true\"")) return null;
                last = "/health answered " + r.statusCode() + " " + r.body();
            } catch (IOException e) {
                last = "/health: " + e;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return "interrupted";
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return "interrupted";
            }
        }
        return "not healthy within " + START_TIMEOUT.toSeconds() + " s (" + last + ")";
    }

    private static int freePort() {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot find a free port", e);
        }
    }

    public int clientPort() { return clientPort; }

    /** {@code http://127.0.0.1:port}, for jetcd or curl. */
    public String clientUrl() { return "http://127.0.0.1:" + clientPort; }

    /** {@code etcd://127.0.0.1:port/prefix}, for {@link org.mooncake4j.transfer.store.MetadataStores#open}. */
    public URI storeUri(String prefix) { return URI.create("etcd://127.0.0.1:" + clientPort + "/" + prefix); }

    public boolean isAlive() { return process.isAlive(); }

    /** The last lines etcd printed (its log), for failure messages. */
    public String logTail() {
        try {
            List<String> lines = Files.readAllLines(log, StandardCharsets.UTF_8);
            return String.join("\n", lines.subList(Math.max(0, lines.size() - 40), lines.size()));
        } catch (IOException e) {
            return "(no etcd log: " + e.getMessage() + ")";
        }
    }

    /** Kills etcd with SIGKILL and waits for it to exit; the data directory stays until {@link #close()}. */
    public void kill() {
        process.destroyForcibly();
        try {
            process.waitFor(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public void close() {
        kill();
        try {
            Runtime.getRuntime().removeShutdownHook(killer);
        } catch (IllegalStateException e) {
            // the JVM is already shutting down; the hook kills etcd again, harmlessly
        }
        deleteTree(dir);
    }

    private static void deleteTree(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            for (Path p : paths.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot delete etcd's data directory " + root, e);
        }
    }
}
