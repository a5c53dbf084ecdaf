package org.mooncake4j.transfer.transport.tcp;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.TransportChoice;
import org.mooncake4j.transfer.store.InMemoryStore;

/** A peer that breaks the protocol loses its connection; the engine's memory and other peers are unharmed. */
class InboundConnectionTest {
    private final InMemoryStore store = new InMemoryStore();
    private TransferEngine engine;
    private LocalSegment victim;
    private int segmentId;

    @BeforeEach
    void setUp() {
        engine = TransferEngine.builder().store(store).name("victim-engine").transport(TransportChoice.TCP).start();
        victim = engine.registerSegment("victim", 4096);
        victim.memory().fill((byte) 0x11);
        String d = new String(store.get(TransferEngine.SEGMENT_KEY_PREFIX + "victim").orElseThrow(), StandardCharsets.UTF_8);
        segmentId = Integer.parseInt(d.lines().filter(l -> l.startsWith("segmentId=")).findFirst().orElseThrow().substring(10));
    }

    @AfterEach
    void tearDown() {
        engine.close();
    }

    /** A connection that completed the handshake (the engine has no group token) as engine "rogue". */
    private SocketChannel helloed() throws IOException {
        return RawPeer.authenticated(engine, null, new EngineIdentity("rogue", "rogue-1")).socket;
    }

    private static void readFully(SocketChannel s, ByteBuffer b) throws IOException {
        var in = s.socket().getInputStream();
        while (b.hasRemaining()) {
            int n = in.read(b.array(), b.position(), b.remaining());
            if (n < 0) throw new IOException("closed");
            b.position(b.position() + n);
        }
    }

    /** True when the server closed the connection (EOF or reset) within the socket timeout; what it sent before (a CHALLENGE) is skipped. */
    private static boolean closedByServer(SocketChannel s) throws IOException {
        try {
            byte[] skip = new byte[256];
            while (s.socket().getInputStream().read(skip) >= 0) {
                // the engine's CHALLENGE or answers: only the close counts
            }
            return true;
        } catch (SocketTimeoutException e) {
            return false;
        } catch (IOException e) {
            return true;
        } finally {
            s.close();
        }
    }

    private void assertVictimIntact() {
        for (long i = 0; i < 4096; i++) assertThat(victim.memory().get(java.lang.foreign.ValueLayout.JAVA_BYTE, i)).isEqualTo((byte) 0x11);
    }

    @Test
    void writeOutsideTheSegmentClosesTheConnectionWithoutTouchingMemory() throws IOException {
        SocketChannel s = helloed();
        s.write(new ByteBuffer[] {Frame.encode(Frame.newHeader(), Frame.WRITE, segmentId, 4000, 200, 0), ByteBuffer.wrap(new byte[200])});
        assertThat(closedByServer(s)).isTrue();
        assertVictimIntact();
    }

    @Test
    void postedFramesForAClosedSegmentAreDroppedAndTheConnectionStays() throws IOException {
        SocketChannel s = helloed();
        s.write(new ByteBuffer[] {Frame.encode(Frame.newHeader(), Frame.WRITE, segmentId + 1, 0, 16, 0), ByteBuffer.wrap(new byte[16])});
        s.write(Frame.encode(Frame.newHeader(), Frame.PUBLISH, segmentId + 1, 0, 7, 0));
        // the same connection still carries a valid write afterwards
        byte[] payload = new byte[16];
        java.util.Arrays.fill(payload, (byte) 0x33);
        s.write(new ByteBuffer[] {Frame.encode(Frame.newHeader(), Frame.WRITE, segmentId, 64, 16, 0), ByteBuffer.wrap(payload)});
        s.write(Frame.encode(Frame.newHeader(), Frame.READ, segmentId, 64, 16, 9));
        ByteBuffer h = ByteBuffer.allocate(Frame.HEADER_BYTES).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        readFully(s, h);
        assertThat(Frame.op(h)).isEqualTo(Frame.READ_DATA);
        ByteBuffer data = ByteBuffer.allocate(16);
        readFully(s, data);
        assertThat(data.array()).containsOnly((byte) 0x33);
        s.close();
        for (long i = 0; i < 4096; i++) {
            byte want = i >= 64 && i < 80 ? (byte) 0x33 : (byte) 0x11;
            assertThat(victim.memory().get(java.lang.foreign.ValueLayout.JAVA_BYTE, i)).isEqualTo(want);
        }
    }

    @Test
    void readNamingAnUnknownSegmentClosesTheConnection() throws IOException {
        SocketChannel s = helloed();
        s.write(Frame.encode(Frame.newHeader(), Frame.READ, segmentId + 1, 0, 16, 3));
        assertThat(closedByServer(s)).isTrue();
        assertVictimIntact();
    }

    @Test
    void garbageAndTruncatedFramesLeaveTheEngineWorking() throws IOException {
        SocketChannel garbage = SocketChannel.open(new InetSocketAddress(engine.hostIp(), engine.port()));
        garbage.socket().setSoTimeout(3000);
        byte[] noise = new byte[64];
        new Random(5).nextBytes(noise);
        garbage.write(ByteBuffer.wrap(noise));
        assertThat(closedByServer(garbage)).isTrue();

        SocketChannel helloed = helloed();
        helloed.write(ByteBuffer.wrap(new byte[] {1, 2, 3, 4, 5}));
        helloed.close();

        SocketChannel halfPayload = helloed();
        halfPayload.write(new ByteBuffer[] {Frame.encode(Frame.newHeader(), Frame.WRITE, segmentId, 0, 1024, 0), ByteBuffer.wrap(new byte[100])});
        halfPayload.close();

        try (TransferEngine peer = TransferEngine.builder().store(store).name("honest").transport(TransportChoice.TCP).start();
             Arena arena = Arena.ofShared()) {
            RemoteSegment r = peer.openSegment("victim", Deadline.afterMillis(5000));
            MemorySegment src = arena.allocate(4096);
            src.fill((byte) 0x22);
            r.write(0, src, 0, 4096, Deadline.afterMillis(5000));
            MemorySegment back = arena.allocate(4096);
            r.read(0, back, 0, 4096, Deadline.afterMillis(5000));
            assertThat(back.mismatch(src)).isEqualTo(-1);
        }
    }
}
