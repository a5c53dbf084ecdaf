package org.mooncake4j.transfer;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.IOException;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.store.InMemoryStore;

/**
 * The transfer-engine rows of docs/TROUBLESHOOTING.md that no other test checks word for word: a
 * host address peers cannot use, a port held by something that is not an engine, a bad transport
 * name, and a peer that dies while its segment is in use.
 */
class TroubleshootingTransferTest {
    private final InMemoryStore store = new InMemoryStore();
    private final List<AutoCloseable> toClose = new ArrayList<>();

    @AfterEach
    void tearDown() throws Exception {
        for (int i = toClose.size() - 1; i >= 0; i--) toClose.get(i).close();
    }

    private TransferEngine engine(String name) {
        TransferEngine e = TransferEngine.builder().store(store).name(name).start();
        toClose.add(e);
        return e;
    }

    @Test
    void wildcardHostIpIsRefused() {
        assertThatThrownBy(() -> TransferEngine.builder().store(store).name("wild").hostIp("0.0.0.0").start())
                .isInstanceOf(TransferException.class)
                .hasMessage("Transfer engine wild: host IP 0.0.0.0 is the wildcard address, which peers cannot connect to."
                        + " Set a concrete address of this machine with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
    }

    @Test
    void hostIpThatIsNotAnAddressOfThisMachineIsRefused() {
        // TEST-NET-3 (RFC 5737): never assigned to a real interface
        assertThatThrownBy(() -> TransferEngine.builder().store(store).name("elsewhere").hostIp("203.0.113.7").start())
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Transfer engine elsewhere cannot listen on 203.0.113.7:0: ")
                .hasMessageEndingWith(". The host IP must be an address of this machine: set it with Mooncake.setHostIp/MOONCAKE_HOST_IP"
                        + " (ip -4 addr lists them), or leave it unset to pick one.");
    }

    @Test
    void unresolvableHostIpIsRefused() {
        assertThatThrownBy(() -> TransferEngine.builder().store(store).name("noname").hostIp("no-such-host.invalid").start())
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Transfer engine noname: host IP 'no-such-host.invalid' cannot be resolved (")
                .hasMessageEndingWith("). Set an address of this machine with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
    }

    @Test
    void unknownTransportNameIsRefused() {
        assertThatThrownBy(() -> TransportChoice.parse("rdma", "MOONCAKE_TRANSPORT"))
                .isInstanceOf(TransferException.class)
                .hasMessage("MOONCAKE_TRANSPORT='rdma' is not a transport: use auto, shm or tcp.");
    }

    /** The analog of "Failed to exchange handshake description": the address of a segment is held by something else. */
    @Test
    void somethingOtherThanAnEngineOnThePortFailsTheHandshakeWithTheAddress() throws Exception {
        try (ServerSocket impostor = new ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress())) {
            Thread closer = Thread.ofPlatform().daemon().start(() -> {
                while (!impostor.isClosed()) {
                    try (Socket s = impostor.accept()) {
                        s.getOutputStream().write("HTTP/1.1 400 Bad Request\r\n\r\n".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
                    } catch (IOException e) {
                        return;
                    }
                }
            });
            SegmentDescriptor d = new SegmentDescriptor("web", "instance-web", "127.0.0.1", impostor.getLocalPort(), "otherhost/boot",
                    "/dev/shm/none", 4096, 1, 1);
            store.set(TransferEngine.SEGMENT_KEY_PREFIX + "web", d.encode());
            TransferEngine a = engine("hs-a");
            assertThatThrownBy(() -> a.openSegment("web", Deadline.afterMillis(3000)))
                    .isInstanceOf(TransferException.class)
                    .hasMessageStartingWith("Failed to connect to engine web at 127.0.0.1:" + impostor.getLocalPort() + " for segment web: the handshake failed (")
                    .hasMessageEndingWith("). Something other than a mooncake4j engine of the same version may hold that port.");
            impostor.close();
            closer.join(2000);
        }
    }

    /** "The mapping of local_server_name to connectable_name changed": the address of a segment now belongs to another engine. */
    @Test
    void descriptorWhoseAddressNowBelongsToAnotherEngineIsStale() {
        TransferEngine now = engine("stale-now");
        String where = now.hostIp() + ":" + now.port();
        SegmentDescriptor d = new SegmentDescriptor("stale-gone", "instance-gone", now.hostIp(), now.port(), "otherhost/boot",
                "/dev/shm/none", 4096, 1, 1);
        store.set(TransferEngine.SEGMENT_KEY_PREFIX + "stale", d.encode());
        TransferEngine a = engine("stale-a");
        assertThatThrownBy(() -> a.openSegment("stale", Deadline.afterMillis(3000)))
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Segment stale was registered by engine stale-gone (instance instance-gone) at " + where
                        + ", but the engine there now is stale-now (instance ")
                .hasMessageEndingWith("): the descriptor is stale (stale-gone has exited). Wait for its replacement to register stale again.");
    }

    /** A firewall that drops packets: a listener whose accept queue is full drops further connection requests the same way. */
    @Test
    void peerThatDoesNotAnswerFailsAtTheDeadlineWithTheAddress() throws Exception {
        try (ServerSocket full = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            List<Socket> held = new ArrayList<>();
            try {
                for (int i = 0; i < 16; i++) {
                    Socket s = new Socket();
                    try {
                        s.connect(full.getLocalSocketAddress(), 300);
                        held.add(s);
                    } catch (java.net.SocketTimeoutException e) {
                        s.close();
                        break;
                    }
                }
                String where = "127.0.0.1:" + full.getLocalPort();
                SegmentDescriptor d = new SegmentDescriptor("silent", "instance-silent", "127.0.0.1", full.getLocalPort(), "otherhost/boot",
                        "/dev/shm/none", 4096, 1, 1);
                store.set(TransferEngine.SEGMENT_KEY_PREFIX + "silent", d.encode());
                TransferEngine a = engine("silent-a");
                long start = System.nanoTime();
                assertThatThrownBy(() -> a.openSegment("silent", Deadline.afterMillis(500)))
                        .isInstanceOf(TransferException.class)
                        .hasMessage("Failed to connect to engine silent for segment silent: no answer from " + where + " (segment silent) by the"
                                + " deadline: the host is down or a firewall drops the packets. The peer must advertise an address reachable"
                                + " from here (Mooncake.setHostIp/MOONCAKE_HOST_IP); check firewalls.");
                assertThat((System.nanoTime() - start) / 1_000_000).isLessThan(3_000);
            } finally {
                for (Socket s : held) s.close();
            }
        }
    }

    /** The analog of "Failed to register memory": the segment does not fit in /dev/shm nor in the fallback directory. */
    @Test
    void segmentLargerThanSharedMemoryAndTheFallbackIsRefusedWithBothCapacities() {
        TransferEngine a = engine("huge-a");
        long bytes = 1L << 60;
        assertThatThrownBy(() -> a.registerSegment("huge", bytes))
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Cannot register segment huge of " + bytes + " bytes: ")
                .hasMessageContaining(", and the fallback directory " + System.getProperty("java.io.tmpdir") + " has ")
                .hasMessageEndingWith(" bytes free. Free space in /dev/shm (stale mooncake4j-* files of dead processes can be deleted), enlarge it"
                        + " (docker --shm-size, or mount -o remount,size=...), or register a smaller segment.");
    }

    /** The analog of "Worker: Process failed for slice": the peer's process is gone, so its segment is. */
    @Test
    void writeToASegmentWhosePeerDiedNamesTheSegmentAndTheEngine() {
        TransferEngine a = engine("died-a");
        TransferEngine b = TransferEngine.builder().store(store).name("died-b").start();
        b.registerSegment("died-target", 4096);
        RemoteSegment remote = a.openSegment("died-target", Deadline.afterMillis(5000));
        b.close();
        long end = System.nanoTime() + 5_000_000_000L;
        while (remote.alive() && System.nanoTime() < end) Thread.onSpinWait();
        assertThat(remote.alive()).isFalse();
        java.lang.foreign.MemorySegment src = java.lang.foreign.Arena.ofAuto().allocate(8);
        assertThatThrownBy(() -> remote.write(0, src, 0, 8, Deadline.afterMillis(1000)))
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Segment died-target of engine died-b is unreachable: ")
                .hasMessageEndingWith(". The peer is treated as failed; open the segment again once a replacement process has registered it.");
        assertThatThrownBy(() -> a.openSegment("died-target", Deadline.afterMillis(300)))
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("Segment died-target belonged to engine died-b, which failed (")
                .hasMessageEndingWith("); no replacement process has registered died-target in the metadata store memory: by the deadline.");
    }
}
