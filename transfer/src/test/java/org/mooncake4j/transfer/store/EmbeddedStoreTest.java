package org.mooncake4j.transfer.store;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.LongStream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.testkit.ProcessCluster;

/** The store contract for {@link EmbeddedStore} against an in-process {@link EmbeddedStoreServer}, plus its failure modes. */
class EmbeddedStoreTest extends MetadataStoreContract {
    private final List<EmbeddedStoreServer> servers = new ArrayList<>();

    @Override
    protected MetadataStore newStore() {
        EmbeddedStoreServer server = startServer(0);
        return EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5));
    }

    private EmbeddedStoreServer startServer(int port) {
        EmbeddedStoreServer server = EmbeddedStoreServer.start("127.0.0.1", port);
        servers.add(server);
        return server;
    }

    @AfterEach
    void stopServers() {
        servers.forEach(EmbeddedStoreServer::close);
    }

    @Test
    void serverReportsItsAddress() {
        EmbeddedStoreServer server = servers.getFirst();
        assertThat(server.port()).isPositive();
        assertThat(server.uri()).isEqualTo("tcp://127.0.0.1:" + server.port());
        assertThat(store.uri()).isEqualTo(server.uri());
        store.set("k", bytes("v"));
        assertThat(string(server.store().get("k").orElseThrow())).as("the client wrote into the server's state").isEqualTo("v");
    }

    @Test
    void openByUriFindsTheTcpProvider() {
        EmbeddedStoreServer server = servers.getFirst();
        try (MetadataStore s = MetadataStores.open(URI.create(server.uri()), Duration.ofSeconds(5))) {
            assertThat(s).isInstanceOf(EmbeddedStore.class);
            s.set("via-uri", bytes("1"));
            assertThat(string(store.get("via-uri").orElseThrow())).isEqualTo("1");
        }
        assertThatThrownBy(() -> MetadataStores.open(URI.create("tcp://127.0.0.1"), Duration.ofSeconds(1)))
                .isInstanceOf(StoreException.class)
                .hasMessageContaining("tcp://host:port");
    }

    @Test
    void unreachableStoreFailsAtTheTimeoutWithAnActionableMessage() {
        int port = ProcessCluster.freePort();
        long start = System.nanoTime();
        assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", port, Duration.ofMillis(600)))
                .isInstanceOf(StoreException.class)
                .hasMessageStartingWith("Cannot reach the metadata store at tcp://127.0.0.1:" + port + " (connection refused) after ")
                .hasMessageContaining("Check that the store is running (the launcher hosts it; rank 0 hosts it when started without the launcher)")
                .hasMessageContaining("not another machine's loopback address")
                .hasMessageContaining("firewall or HTTP proxy");
        long tookMs = (System.nanoTime() - start) / 1_000_000;
        assertThat(tookMs).as("retried until the timeout, ms").isGreaterThanOrEqualTo(590).isLessThan(2000);
    }

    @Test
    void connectRetriesUntilTheStoreStarts() throws Exception {
        int port = ProcessCluster.freePort();
        CompletableFuture<EmbeddedStoreServer> late = CompletableFuture.supplyAsync(() -> {
            try {
                Thread.sleep(400);
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
            return startServer(port);
        });
        try (EmbeddedStore s = EmbeddedStore.connect("127.0.0.1", port, Duration.ofSeconds(10))) {
            s.set("k", bytes("late"));
            assertThat(string(late.get(5, TimeUnit.SECONDS).store().get("k").orElseThrow())).isEqualTo("late");
        }
    }

    @Test
    void portInUseIsReportedWithWhatToDo() {
        int port = servers.getFirst().port();
        assertThatThrownBy(() -> EmbeddedStoreServer.start("127.0.0.1", port))
                .isInstanceOf(StoreException.class)
                .hasMessage("Cannot start the metadata store on 127.0.0.1:" + port + ": bind address already in use (port " + port + ")."
                        + " Choose another port (port 0 picks a free one) or stop the process using port " + port
                        + " (find it with: ss -ltnp 'sport = :" + port + "').");
    }

    @Test
    void blockingCallsDoNotHoldUpOtherThreadsOnTheSameClient() throws Exception {
        CompletableFuture<Map<String, byte[]>> waiting = CompletableFuture.supplyAsync(
                () -> store.waitFor(List.of("late"), Deadline.after(Duration.ofSeconds(10))));
        CompletableFuture<Optional<byte[]>> watching = CompletableFuture.supplyAsync(
                () -> store.awaitChange("late", null, Deadline.after(Duration.ofSeconds(10))));
        Thread.sleep(100);
        long start = System.nanoTime();
        for (int i = 0; i < 200; i++) {
            store.set("quick/" + i, bytes(Integer.toString(i)));
            assertThat(string(store.get("quick/" + i).orElseThrow())).isEqualTo(Integer.toString(i));
        }
        assertThat((System.nanoTime() - start) / 1_000_000).as("400 quick calls while two calls block, ms").isLessThan(3000);
        assertThat(waiting).isNotDone();
        store.set("late", bytes("here"));
        assertThat(string(waiting.get(5, TimeUnit.SECONDS).get("late"))).isEqualTo("here");
        assertThat(watching.get(5, TimeUnit.SECONDS).map(MetadataStoreContract::string)).contains("here");
    }

    @Test
    void serverDyingMidCallFailsTheCallInsteadOfHanging() throws Exception {
        EmbeddedStoreServer server = servers.getFirst();
        try (EmbeddedStore client = EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofMillis(500))) {
            CompletableFuture<Map<String, byte[]>> waiting = CompletableFuture.supplyAsync(
                    () -> client.waitFor(List.of("never"), Deadline.after(Duration.ofSeconds(20))));
            Thread.sleep(200);
            long start = System.nanoTime();
            server.close();
            assertThatThrownBy(() -> waiting.get(5, TimeUnit.SECONDS))
                    .hasCauseInstanceOf(StoreException.class)
                    .cause()
                    .hasMessageContaining("Lost the connection to the metadata store at " + server.uri())
                    .hasMessageContaining("waitFor of keys [never]");
            assertThat((System.nanoTime() - start) / 1_000_000).isLessThan(2000);
            start = System.nanoTime();
            assertThatThrownBy(() -> client.get("k"))
                    .as("the next call tries to reconnect until its timeout")
                    .isInstanceOf(StoreException.class)
                    .hasMessageStartingWith("Cannot reach the metadata store at " + server.uri() + " (connection refused)");
            assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(490).isLessThan(2000);
        }
    }

    /** A server that completes the handshake (or answers {@code greeting} instead) and then never answers. */
    private static ServerSocket mute(byte[] greeting) throws IOException {
        ServerSocket listener = new ServerSocket(0, 8, InetAddress.getLoopbackAddress());
        Thread.ofVirtual().start(() -> {
            try (Socket s = listener.accept()) {
                DataInputStream in = new DataInputStream(s.getInputStream());
                in.readLong();
                s.getOutputStream().write(greeting);
                s.getOutputStream().flush();
                in.transferTo(OutputStream.nullOutputStream());
            } catch (IOException ignored) {
                // the test closed the listener
            }
        });
        return listener;
    }

    @Test
    void unresponsiveServerFailsCallsAtTheirDeadline() throws Exception {
        // the whole handshake of a store without a token: version, flags and nonce, then the verdict and a zero proof
        byte[] handshake = ByteBuffer.allocate(8 + 1 + 32 + 1 + 32).putInt(StoreWire.MAGIC).putInt(StoreWire.VERSION).put((byte) 0)
                .put(new byte[32]).put(StoreWire.AUTH_OK).put(new byte[32]).array();
        try (ServerSocket listener = mute(handshake);
             EmbeddedStore client = EmbeddedStore.connect("127.0.0.1", listener.getLocalPort(), Duration.ofMillis(400))) {
            long start = System.nanoTime();
            assertThatThrownBy(() -> client.get("k"))
                    .isInstanceOf(StoreException.class)
                    .hasMessageContaining("did not answer the get of key 'k' within")
                    .hasMessageContaining(client.uri());
            assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(395).isLessThan(1500);
            start = System.nanoTime();
            assertThatThrownBy(() -> client.waitFor(List.of("k"), Deadline.afterMillis(300)))
                    .isInstanceOf(StoreException.class)
                    .hasMessageContaining("did not answer the waitFor of keys [k]");
            assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(295).isLessThan(300 + 500);
        }
    }

    @Test
    void somethingElseOnThePortIsNamed() throws Exception {
        try (ServerSocket listener = mute("HTTP/1.1 400 Bad Request\r\n\r\n".getBytes(StandardCharsets.US_ASCII))) {
            assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", listener.getLocalPort(), Duration.ofSeconds(5)))
                    .isInstanceOf(StoreException.class)
                    .hasMessage("The server at tcp://127.0.0.1:" + listener.getLocalPort() + " answered, but it is not a mooncake4j metadata store."
                            + " Check the address and port (an etcd server needs an etcd://host:port/prefix URI), and that no HTTP proxy or"
                            + " firewall intercepts the connection.");
        }
    }

    /** Processes of different mooncake4j versions: the store speaks another protocol version. */
    @Test
    void storeOfAnotherVersionIsNamed() throws Exception {
        ByteBuffer answer = ByteBuffer.allocate(8).putInt(StoreWire.MAGIC).putInt(StoreWire.VERSION + 1);
        try (ServerSocket listener = mute(answer.array())) {
            assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", listener.getLocalPort(), Duration.ofSeconds(5)))
                    .isInstanceOf(StoreException.class)
                    .hasMessage("The metadata store at tcp://127.0.0.1:" + listener.getLocalPort() + " speaks protocol version "
                            + (StoreWire.VERSION + 1) + ", this client " + StoreWire.VERSION + ": run the same mooncake4j version everywhere.");
        }
    }

    @Test
    void serverErrorsNameTheCallAndTheStore() {
        store.set("text", bytes("abc"));
        assertThatThrownBy(() -> store.add("text", 1))
                .isInstanceOf(StoreException.class)
                .hasMessageContaining("add to key 'text'")
                .hasMessageContaining(store.uri())
                .hasMessageContaining("not a decimal counter");
    }

    @Test
    void closedClientRefusesCalls() {
        store.close();
        assertThatThrownBy(() -> store.get("k")).isInstanceOf(StoreException.class).hasMessageContaining("is closed");
    }

    @Test
    void fourProcessesAddAndRaceExactly() throws Exception {
        EmbeddedStoreServer server = servers.getFirst();
        int world = 4;
        try (ProcessCluster cluster = ProcessCluster.start(StoreRaceMain.class, world, Map.of("STORE_URI", server.uri()))) {
            List<ProcessCluster.Result> results = cluster.awaitAll(Duration.ofSeconds(40));
            String why = ProcessCluster.describe(results);
            List<Long> adds = new ArrayList<>();
            int[] winnerOf = new int[StoreRaceMain.RACES];
            Arrays.fill(winnerOf, -1);
            for (ProcessCluster.Result r : results) {
                assertThat(r.exitCode()).as("process %d exit code%n%s", r.rank(), why).isZero();
                Map<String, String> res = r.results();
                for (String v : res.get("adds").split(",")) adds.add(Long.parseLong(v));
                String wins = res.get("wins");
                if (!wins.isEmpty()) {
                    for (String w : wins.split(",")) {
                        int race = Integer.parseInt(w);
                        assertThat(winnerOf[race]).as("race %d has one winner%n%s", race, why).isEqualTo(-1);
                        winnerOf[race] = r.rank();
                    }
                }
            }
            adds.sort(null);
            assertThat(adds).as("every add returned a distinct value").isEqualTo(
                    LongStream.rangeClosed(1, (long) world * StoreRaceMain.ADDS).boxed().toList());
            InMemoryStore state = server.store();
            assertThat(string(state.get("counter").orElseThrow())).isEqualTo(Integer.toString(world * StoreRaceMain.ADDS));
            assertThat(string(state.get("cas-counter").orElseThrow())).isEqualTo(Integer.toString(world * StoreRaceMain.CAS_INCREMENTS));
            for (int race = 0; race < StoreRaceMain.RACES; race++) {
                assertThat(winnerOf[race]).as("race %d has a winner", race).isNotEqualTo(-1);
                assertThat(string(state.get("race/" + race).orElseThrow())).isEqualTo(Integer.toString(winnerOf[race]));
            }
        }
    }
}
