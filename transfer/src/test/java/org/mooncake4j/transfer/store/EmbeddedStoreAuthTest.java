package org.mooncake4j.transfer.store;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.transfer.LogCapture;
import org.mooncake4j.transfer.auth.GroupToken;

/** Group-token authentication of the embedded store: only clients with the token read or write, and each refusal says why. */
class EmbeddedStoreAuthTest {
    private static final String ADVICE = "Every process of the group must use the same group token (MOONCAKE_TOKEN or ProcessGroup.builder().token(...)).";
    private final List<EmbeddedStoreServer> servers = new ArrayList<>();

    @AfterEach
    void stopServers() {
        servers.forEach(EmbeddedStoreServer::close);
    }

    private EmbeddedStoreServer server(String token) {
        EmbeddedStoreServer s = EmbeddedStoreServer.start("127.0.0.1", 0, token);
        servers.add(s);
        return s;
    }

    private static byte[] bytes(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    private static String awaitLogged(LogCapture log, String text) throws InterruptedException {
        long end = System.nanoTime() + 2_000_000_000L;
        while (!log.text().contains(text) && System.nanoTime() < end) Thread.sleep(10);
        return log.text();
    }

    @Test
    void theRightTokenReadsAndWrites() {
        EmbeddedStoreServer server = server("store-secret");
        try (EmbeddedStore c = EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5), "store-secret");
             MetadataStore viaUri = MetadataStores.open(URI.create(server.uri()), Duration.ofSeconds(5), "store-secret")) {
            c.set("k", bytes("v"));
            assertThat(viaUri.get("k")).hasValueSatisfying(v -> assertThat(new String(v, StandardCharsets.UTF_8)).isEqualTo("v"));
            assertThat(viaUri.add("n", 2)).isEqualTo(2);
        }
    }

    @Test
    void aWrongTokenIsRefusedAtOnceWithAClearMessage() throws Exception {
        EmbeddedStoreServer server = server("store-secret");
        try (LogCapture log = LogCapture.start(true)) {
            long start = System.nanoTime();
            assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5), "another-secret"))
                    .isInstanceOf(StoreException.class)
                    .hasMessage("The metadata store at " + server.uri() + " refused this connection: authentication failed (wrong group token). "
                            + ADVICE);
            assertThat((System.nanoTime() - start) / 1_000_000).as("refused without retrying until the timeout, ms").isLessThan(2000);
            assertThat(awaitLogged(log, "authentication failed (wrong or missing group token)"))
                    .contains("metadata store at " + server.uri() + ": refused connection from /127.0.0.1:");
        }
    }

    @Test
    void aClientWithoutTheTokenIsRefused() throws Exception {
        EmbeddedStoreServer server = server("store-secret");
        try (LogCapture log = LogCapture.start(true)) {
            assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5), null))
                    .isInstanceOf(StoreException.class)
                    .hasMessage("The metadata store at " + server.uri() + " refused this connection: authentication failed (this process has no"
                            + " group token, the store requires one). " + ADVICE);
            assertThat(awaitLogged(log, "authentication failed (the client has no group token, this store requires one)")).contains("refused connection from");
        }
        assertThatThrownBy(() -> MetadataStores.open(URI.create(server.uri()), Duration.ofSeconds(5), null))
                .isInstanceOf(StoreException.class)
                .hasMessageContaining("refused this connection: authentication failed");
    }

    @Test
    void aClientWithATokenRefusesAStoreWithout() {
        EmbeddedStoreServer server = server(null);
        assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", server.port(), Duration.ofSeconds(5), "store-secret"))
                .isInstanceOf(StoreException.class)
                .hasMessage("The metadata store at " + server.uri() + " has no group token but this process has one: refusing to use it"
                        + " (authentication failed). " + ADVICE);
    }

    /** Sends a frame; the store may already have closed the refused connection, which is fine. */
    private static void writeUnlessClosed(DataOutputStream out, byte[] frame) {
        try {
            StoreWire.writeFrame(out, frame);
        } catch (java.io.IOException closedByTheStore) {
            // refused: nothing more is read from this connection
        }
    }

    @Test
    void anUnauthenticatedClientCanReadOrWriteNothing() throws Exception {
        EmbeddedStoreServer server = server("store-secret");
        server.store().set("secret", bytes("s3cret"));
        byte[] get = StoreWire.frame(1, StoreWire.GET, o -> StoreWire.writeString(o, "secret"));
        byte[] set = StoreWire.frame(2, StoreWire.SET, o -> {
            StoreWire.writeString(o, "planted");
            StoreWire.writeBytes(o, bytes("x"));
        });

        // requests without any handshake
        try (Socket s = new Socket(InetAddress.getLoopbackAddress(), server.port())) {
            s.setSoTimeout(3000);
            DataOutputStream out = new DataOutputStream(s.getOutputStream());
            writeUnlessClosed(out, get);
            writeUnlessClosed(out, set);
            assertThat(readAll(s.getInputStream())).as("what the store answered").isEmpty();
        }
        // the handshake with a made-up proof, then requests
        try (Socket s = new Socket(InetAddress.getLoopbackAddress(), server.port())) {
            s.setSoTimeout(3000);
            DataOutputStream out = new DataOutputStream(s.getOutputStream());
            DataInputStream in = new DataInputStream(s.getInputStream());
            out.writeInt(StoreWire.MAGIC);
            out.writeInt(StoreWire.VERSION);
            assertThat(in.readInt()).isEqualTo(StoreWire.MAGIC);
            assertThat(in.readInt()).isEqualTo(StoreWire.VERSION);
            assertThat(in.readByte()).as("the store says it has a token").isEqualTo(StoreWire.FLAG_TOKEN);
            in.readFully(new byte[GroupToken.NONCE_BYTES]);
            byte[] guess = new byte[GroupToken.MAC_BYTES];
            new Random(1).nextBytes(guess);
            out.writeByte(StoreWire.FLAG_TOKEN);
            out.write(GroupToken.nonce());
            out.write(guess);
            writeUnlessClosed(out, get);
            writeUnlessClosed(out, set);
            assertThat(in.readByte()).as("verdict").isEqualTo(StoreWire.AUTH_BAD_PROOF);
            assertThat(readAll(in)).as("nothing follows the refusal").isEmpty();
        }
        assertThat(server.store().get("planted")).isEmpty();
    }

    @Test
    void anImpostorStoreWithoutTheTokenIsRefused() throws Exception {
        try (ServerSocket impostor = new ServerSocket(0, 8, InetAddress.getLoopbackAddress())) {
            CompletableFuture<Long> afterHandshake = new CompletableFuture<>();
            Thread.ofVirtual().start(() -> {
                try (Socket s = impostor.accept()) {
                    s.setSoTimeout(5000);
                    DataInputStream in = new DataInputStream(s.getInputStream());
                    DataOutputStream out = new DataOutputStream(s.getOutputStream());
                    in.readLong();
                    out.writeInt(StoreWire.MAGIC);
                    out.writeInt(StoreWire.VERSION);
                    out.writeByte(StoreWire.FLAG_TOKEN);
                    out.write(GroupToken.nonce());
                    out.flush();
                    in.readFully(new byte[1 + GroupToken.NONCE_BYTES + GroupToken.MAC_BYTES]);
                    out.writeByte(StoreWire.AUTH_OK);
                    out.write(new byte[GroupToken.MAC_BYTES]);
                    out.flush();
                    afterHandshake.complete((long) readAll(in).length);
                } catch (IOException e) {
                    afterHandshake.completeExceptionally(e);
                }
            });
            assertThatThrownBy(() -> EmbeddedStore.connect("127.0.0.1", impostor.getLocalPort(), Duration.ofSeconds(5), "store-secret"))
                    .isInstanceOf(StoreException.class)
                    .hasMessageContaining("could not prove it holds the group token")
                    .hasMessageEndingWith(ADVICE);
            assertThat(afterHandshake.get(5, TimeUnit.SECONDS)).as("bytes the impostor got after the handshake").isZero();
        }
    }

    @Test
    void aBlankTokenIsAConfigurationError() {
        assertThatThrownBy(() -> EmbeddedStoreServer.start("127.0.0.1", 0, " "))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("must not be blank");
    }

    /** Everything until the peer closes (a reset counts as closed). */
    private static byte[] readAll(InputStream in) {
        java.io.ByteArrayOutputStream b = new java.io.ByteArrayOutputStream();
        byte[] buf = new byte[4096];
        try {
            for (int n; (n = in.read(buf)) >= 0; ) b.write(buf, 0, n);
        } catch (IOException e) {
            // reset by the peer: what came before counts
        }
        return b.toByteArray();
    }
}
