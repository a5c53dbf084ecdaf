package org.mooncake4j.transfer.transport.tcp;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.LogCapture;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.TransferException;
import org.mooncake4j.transfer.TransportChoice;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.store.InMemoryStore;

/** Group-token authentication of engine connections: who gets in, who is refused, and what each side says. */
class EngineAuthenticationTest {
    private static final String ADVICE = "Every process of the group must use the same group token (MOONCAKE_TOKEN or ProcessGroup.builder().token(...)).";

    private final InMemoryStore store = new InMemoryStore();
    private final List<AutoCloseable> toClose = new ArrayList<>();
    private final Arena arena = Arena.ofShared();

    @AfterEach
    void tearDown() throws Exception {
        for (int i = toClose.size() - 1; i >= 0; i--) toClose.get(i).close();
        arena.close();
    }

    private TransferEngine engine(String name, String token, TransportChoice transport) {
        TransferEngine e = TransferEngine.builder().store(store).name(name).transport(transport).token(token).start();
        toClose.add(e);
        return e;
    }

    private static Deadline seconds(int s) { return Deadline.afterMillis(s * 1000L); }

    private int segmentId(String name) {
        String d = new String(store.get(TransferEngine.SEGMENT_KEY_PREFIX + name).orElseThrow(), StandardCharsets.UTF_8);
        return Integer.parseInt(d.lines().filter(l -> l.startsWith("segmentId=")).findFirst().orElseThrow().substring(10));
    }

    /** Waits up to 2 s for {@code text} in the log (the server logs on its own thread, maybe after the client gave up). */
    private static String awaitLogged(LogCapture log, String text) throws InterruptedException {
        long end = System.nanoTime() + 2_000_000_000L;
        while (!log.text().contains(text) && System.nanoTime() < end) Thread.sleep(10);
        return log.text();
    }

    private static String where(TransferEngine e) { return e.hostIp() + ":" + e.port(); }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void enginesWithTheSameTokenWriteReadAndPublish(TransportChoice transport) {
        TransferEngine a = engine("same-a", "group-secret", transport);
        TransferEngine b = engine("same-b", "group-secret", transport);
        assertThat(a.authenticated()).isTrue();
        assertThat(a.usesToken("group-secret")).isTrue();
        assertThat(a.usesToken("other")).isFalse();
        assertThat(a.usesToken(null)).isFalse();
        LocalSegment target = b.registerSegment("same-target", 1 << 16);
        RemoteSegment remote = a.openSegment("same-target", seconds(5));
        MemorySegment data = arena.allocate(8192, 64);
        for (long i = 0; i < 8192; i += 8) data.set(ValueLayout.JAVA_LONG, i, i * 0x9E3779B97F4A7C15L);
        remote.write(4096, data, 0, 8192, seconds(5));
        remote.publish(0, 5, seconds(5));
        assertThat(Waiter.awaitAtLeast(target.memory(), 0, 5, seconds(5), null)).isTrue();
        assertThat(target.memory().asSlice(4096, 8192).mismatch(data)).isEqualTo(-1);
        MemorySegment back = arena.allocate(8192);
        remote.read(4096, back, 0, 8192, seconds(5));
        assertThat(back.mismatch(data)).isEqualTo(-1);
    }

    @Test
    void anEngineWithAnotherTokenIsRefusedWithTheMessage() throws Exception {
        TransferEngine b = engine("tok-b", "token-A", TransportChoice.TCP);
        LocalSegment target = b.registerSegment("tok-target", 4096);
        TransferEngine a = engine("tok-a", "token-B", TransportChoice.TCP);
        try (LogCapture log = LogCapture.start(true)) {
            assertThatThrownBy(() -> a.openSegment("tok-target", seconds(5)))
                    .isInstanceOf(TransferException.class)
                    .hasMessage("Engine tok-b at " + where(b) + " refused this connection: authentication failed. " + ADVICE);
            assertThat(awaitLogged(log, "authentication failed (wrong or missing group token)"))
                    .containsPattern("Engine tok-b: refused connection from [0-9.:\\[\\]a-f]+:\\d+: authentication failed \\(wrong or missing group token\\)");
        }
        assertThat(target.memory().mismatch(arena.allocate(4096))).as("nothing written").isEqualTo(-1);
    }

    @Test
    void anEngineWithoutATokenIsRefused() throws Exception {
        TransferEngine b = engine("need-b", "token-A", TransportChoice.TCP);
        b.registerSegment("need-target", 4096);
        TransferEngine a = engine("need-a", null, TransportChoice.TCP);
        assertThat(a.authenticated()).isFalse();
        assertThat(a.usesToken(null)).isTrue();
        try (LogCapture log = LogCapture.start(true)) {
            assertThatThrownBy(() -> a.openSegment("need-target", seconds(5)))
                    .isInstanceOf(TransferException.class)
                    .hasMessage("Engine need-b at " + where(b) + " refused this connection: authentication failed (this engine has no group token,"
                            + " the engine there requires one). " + ADVICE);
            assertThat(awaitLogged(log, "authentication failed (the peer has no group token, this engine requires one)"))
                    .contains("Engine need-b: refused connection from ");
        }
    }

    @Test
    void anEngineWithATokenRefusesAnEngineWithout() throws Exception {
        TransferEngine b = engine("open-b", null, TransportChoice.TCP);
        b.registerSegment("open-target", 4096);
        TransferEngine a = engine("open-a", "token-A", TransportChoice.TCP);
        try (LogCapture log = LogCapture.start(true)) {
            assertThatThrownBy(() -> a.openSegment("open-target", seconds(5)))
                    .isInstanceOf(TransferException.class)
                    .hasMessage("Engine open-b at " + where(b) + " has no group token but this engine has one: refusing to connect, so no data goes"
                            + " to an engine outside the group (authentication failed). " + ADVICE);
            assertThat(awaitLogged(log, "authentication failed (the peer has a group token, this engine has none)"))
                    .contains("Engine open-b: refused connection from ");
        }
    }

    @Test
    void aBlankTokenIsAConfigurationError() {
        assertThatThrownBy(() -> TransferEngine.builder().token("  "))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("must not be blank");
    }

    @Test
    void aPeerThatSkipsOrFailsAuthenticationHasNoFrameApplied() throws Exception {
        TransferEngine b = engine("guarded", "token-A", TransportChoice.TCP);
        LocalSegment target = b.registerSegment("guarded-target", 4096);
        target.memory().fill((byte) 0x11);
        int id = segmentId("guarded-target");
        byte[] payload = new byte[256];
        Arrays.fill(payload, (byte) 0x66);
        ByteBuffer write = ByteBuffer.allocate(Frame.HEADER_BYTES + payload.length)
                .put(RawPeer.headerBytes(RawPeer.magic(Frame.WRITE), id, 0, payload.length, 0)).put(payload).flip();
        EngineIdentity rogue = new EngineIdentity("rogue", "rogue-1");

        // a WRITE right away, as if there were no handshake
        try (RawPeer p = RawPeer.open(b)) {
            p.send(write.duplicate());
            assertThat(p.closedByServer()).isTrue();
        }
        // HELLO with a proof made with the wrong token, then a WRITE
        try (RawPeer p = RawPeer.open(b)) {
            p.readChallenge();
            p.send(p.hello(Frame.HELLO, "token-B", GroupToken.nonce(), rogue), write.duplicate());
            RawPeer.Answer a = p.readAnswer();
            assertThat(a.op()).isEqualTo(Frame.REFUSED);
            assertThat(a.offset()).isEqualTo(Frame.REFUSED_BAD_PROOF);
            assertThat(p.closedByServer()).isTrue();
        }
        // HELLO without a token, then a WRITE
        try (RawPeer p = RawPeer.open(b)) {
            p.readChallenge();
            p.send(p.hello(Frame.HELLO, null, GroupToken.nonce(), rogue), write.duplicate());
            assertThat(p.readAnswer().offset()).isEqualTo(Frame.REFUSED_CLIENT_HAS_NO_TOKEN);
            assertThat(p.closedByServer()).isTrue();
        }
        // a proof replayed from another connection: its server nonce differs
        byte[] replayed;
        byte[] nonce = GroupToken.nonce();
        try (RawPeer p = RawPeer.open(b)) {
            p.readChallenge();
            replayed = new byte[p.hello(Frame.HELLO, "token-A", nonce, rogue).remaining()];
            p.hello(Frame.HELLO, "token-A", nonce, rogue).get(replayed);
        }
        try (RawPeer p = RawPeer.open(b)) {
            p.readChallenge();
            p.send(ByteBuffer.wrap(replayed), write.duplicate());
            assertThat(p.readAnswer().offset()).isEqualTo(Frame.REFUSED_BAD_PROOF);
            assertThat(p.closedByServer()).isTrue();
        }
        // a valid PROBE does not open a connection for frames either
        try (RawPeer p = RawPeer.open(b)) {
            p.readChallenge();
            p.send(p.hello(Frame.PROBE, "token-A", GroupToken.nonce(), rogue), write.duplicate());
            assertThat(p.readAnswer().op()).isEqualTo(Frame.HELLO);
            assertThat(p.closedByServer()).isTrue();
        }
        for (long i = 0; i < 4096; i++) assertThat(target.memory().get(ValueLayout.JAVA_BYTE, i)).isEqualTo((byte) 0x11);

        // and the right token gets in
        try (RawPeer p = RawPeer.authenticated(b, "token-A", rogue)) {
            p.send(write.duplicate(), ByteBuffer.wrap(RawPeer.headerBytes(RawPeer.magic(Frame.READ), id, 0, 8, 42)));
            assertThat(p.readFrame().request()).isEqualTo(42);
        }
        assertThat(target.memory().get(ValueLayout.JAVA_BYTE, 0)).isEqualTo((byte) 0x66);
    }

    @Test
    void anImpostorServerWithoutTheTokenGetsNoData() throws Exception {
        for (boolean claimsToken : new boolean[] {true, false}) {
            TransferEngine b = engine("real-" + claimsToken, "token-A", TransportChoice.TCP);
            b.registerSegment("imp-target-" + claimsToken, 4096);
            try (ServerSocket impostor = new ServerSocket(0, 8, InetAddress.getByName(b.hostIp()))) {
                CompletableFuture<Impostor> seen = impersonate(impostor, claimsToken, "real-" + claimsToken);
                String key = TransferEngine.SEGMENT_KEY_PREFIX + "imp-target-" + claimsToken;
                String d = new String(store.get(key).orElseThrow(), StandardCharsets.UTF_8);
                store.set(key, d.replace("port=" + b.port() + "\n", "port=" + impostor.getLocalPort() + "\n").getBytes(StandardCharsets.UTF_8));
                TransferEngine a = engine("client-" + claimsToken, "token-A", TransportChoice.TCP);
                String at = "Engine real-" + claimsToken + " at " + b.hostIp() + ":" + impostor.getLocalPort();
                assertThatThrownBy(() -> a.openSegment("imp-target-" + claimsToken, seconds(5)))
                        .isInstanceOf(TransferException.class)
                        .hasMessageStartingWith(claimsToken ? at + " failed authentication: it could not prove it holds the group token"
                                : at + " has no group token but this engine has one: refusing to connect")
                        .hasMessageEndingWith(ADVICE);
                Impostor i = seen.get(5, TimeUnit.SECONDS);
                assertThat(i.bytesAfterHello).as("bytes sent to the impostor after the handshake").isZero();
                if (!claimsToken) assertThat(i.proof).as("no proof is handed to a server without a token").containsOnly(0);
            }
        }
    }

    /** What an impostor got: the client's proof and how many bytes followed the HELLO. */
    private record Impostor(byte[] proof, long bytesAfterHello) {}

    /**
     * A fake engine that does not know the token: challenges, reads the HELLO, answers with the real
     * engine's name and a made-up proof (or, without {@code claimsToken}, as an engine with no
     * token), then counts what the client sends before it hangs up.
     */
    private CompletableFuture<Impostor> impersonate(ServerSocket listener, boolean claimsToken, String engineName) {
        CompletableFuture<Impostor> f = new CompletableFuture<>();
        String instance = instanceOf(engineName);
        Thread.ofVirtual().start(() -> {
            try (Socket s = listener.accept()) {
                s.setSoTimeout(5000);
                OutputStream out = s.getOutputStream();
                DataInputStream in = new DataInputStream(s.getInputStream());
                long flags = claimsToken ? Frame.FLAG_TOKEN : 0;
                out.write(RawPeer.headerBytes(RawPeer.magic(Frame.CHALLENGE), Frame.VERSION, flags, GroupToken.NONCE_BYTES, 0));
                out.write(GroupToken.nonce());
                out.flush();
                byte[] h = new byte[Frame.HEADER_BYTES];
                in.readFully(h);
                byte[] hello = new byte[(int) ByteBuffer.wrap(h).order(ByteOrder.LITTLE_ENDIAN).getLong(16)];
                in.readFully(hello);
                byte[] proof = Arrays.copyOfRange(hello, GroupToken.NONCE_BYTES, GroupToken.NONCE_BYTES + GroupToken.MAC_BYTES);
                byte[] me = new EngineIdentity(engineName, instance).encode();
                try {
                    out.write(RawPeer.headerBytes(RawPeer.magic(Frame.HELLO), Frame.VERSION, flags, GroupToken.MAC_BYTES + me.length, 0));
                    byte[] fakeProof = new byte[GroupToken.MAC_BYTES];
                    new Random(7).nextBytes(fakeProof);
                    out.write(fakeProof);
                    out.write(me);
                    out.flush();
                } catch (IOException e) {
                    // the client may already have hung up (it refuses a token-less server without waiting)
                }
                f.complete(new Impostor(proof, drain(in)));
            } catch (IOException | RuntimeException e) {
                f.completeExceptionally(e);
            }
        });
        return f;
    }

    private static long drain(InputStream in) {
        long n = 0;
        byte[] b = new byte[4096];
        try {
            for (int r; (r = in.read(b)) >= 0; ) n += r;
        } catch (IOException e) {
            // reset: counted what came before
        }
        return n;
    }

    private String instanceOf(String engineName) {
        for (String key : store.keys(TransferEngine.SEGMENT_KEY_PREFIX)) {
            String d = new String(store.get(key).orElseThrow(), StandardCharsets.UTF_8);
            if (d.contains("engine=" + engineName + "\n")) {
                return d.lines().filter(l -> l.startsWith("instance=")).findFirst().orElseThrow().substring(9);
            }
        }
        throw new IllegalStateException("no descriptor of engine " + engineName);
    }

    @Test
    void aLiveEngineWithTheSameTokenKeepsItsSegmentName() {
        TransferEngine a = engine("keep-a", "token-A", TransportChoice.TCP);
        a.registerSegment("kept", 4096);
        TransferEngine b = engine("keep-b", "token-A", TransportChoice.TCP);
        assertThatThrownBy(() -> b.registerSegment("kept", 4096))
                .isInstanceOf(TransferException.class)
                .hasMessageContaining("is already registered by engine keep-a")
                .hasMessageContaining("which is running");
    }

    @Test
    void handshakeLengthsAreCappedBeforeAnythingIsAllocated() throws Exception {
        TransferEngine b = engine("capped", "token-A", TransportChoice.TCP);
        for (long len : new long[] {-1, 0, 66, Frame.MAX_IDENTITY_BYTES + 65L, Integer.MAX_VALUE, 1L << 40, Long.MAX_VALUE, Long.MIN_VALUE}) {
            try (RawPeer p = RawPeer.open(b)) {
                p.readChallenge();
                p.send(ByteBuffer.wrap(RawPeer.headerBytes(RawPeer.magic(Frame.HELLO), Frame.VERSION, Frame.FLAG_TOKEN, len, 0)));
                assertThat(p.closedByServer()).as("HELLO with payload length %d", len).isTrue();
            }
        }
        assertThatThrownBy(() -> new EngineIdentity("x".repeat(2000), "i"))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("Choose a shorter name");
    }
}
