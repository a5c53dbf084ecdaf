package org.mooncake4j.transfer;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.TransferStatus.State;
import org.mooncake4j.transfer.store.InMemoryStore;

/** Two engines in one JVM sharing an in-memory store, with each transport forced. */
class TransferEngineTest {
    private static final long SEG = 1 << 20;

    private final InMemoryStore store = new InMemoryStore();
    private final List<AutoCloseable> toClose = new ArrayList<>();
    private final Arena arena = Arena.ofShared();

    @AfterEach
    void tearDown() throws Exception {
        for (int i = toClose.size() - 1; i >= 0; i--) toClose.get(i).close();
        arena.close();
    }

    private TransferEngine engine(String name, TransportChoice transport) {
        TransferEngine e = TransferEngine.builder().store(store).name(name).transport(transport).start();
        toClose.add(e);
        return e;
    }

    private static Deadline seconds(int s) { return Deadline.afterMillis(s * 1000L); }

    private MemorySegment pattern(long bytes, long seed) {
        MemorySegment m = arena.allocate(bytes, 64);
        Random r = new Random(seed);
        for (long i = 0; i < bytes; i += 8) m.set(ValueLayout.JAVA_LONG_UNALIGNED, i, r.nextLong());
        return m;
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void writeThenPublishWakesAWaiterThatSeesTheData(TransportChoice transport) throws Exception {
        TransferEngine a = engine("rt-a", transport);
        TransferEngine b = engine("rt-b", transport);
        LocalSegment target = b.registerSegment("rt-target", SEG);
        RemoteSegment remote = a.openSegment("rt-target", seconds(5));
        assertThat(remote.transport()).isEqualTo(transport.name().toLowerCase());
        assertThat(remote.engineName()).isEqualTo("rt-b");
        assertThat(remote.size()).isEqualTo(SEG);

        MemorySegment data = pattern(256 * 1024, 42);
        AtomicReference<Boolean> sawData = new AtomicReference<>();
        Thread waiter = Thread.ofPlatform().start(() -> {
            boolean woke = Waiter.awaitAtLeast(target.memory(), 0, 7, seconds(5), null);
            sawData.set(woke && target.memory().asSlice(4096, data.byteSize()).mismatch(data) == -1);
        });
        Thread.sleep(50);
        remote.write(4096, data, 0, data.byteSize(), seconds(5));
        remote.publish(0, 7, seconds(5));
        waiter.join(5000);
        assertThat(sawData.get()).isTrue();

        MemorySegment back = arena.allocate(data.byteSize());
        remote.read(4096, back, 0, back.byteSize(), seconds(5));
        assertThat(back.mismatch(data)).isEqualTo(-1);
        byte[] heap = new byte[1000];
        remote.read(4096 + 8, MemorySegment.ofArray(heap), 0, heap.length, seconds(5));
        assertThat(MemorySegment.ofArray(heap).mismatch(data.asSlice(8, 1000))).isEqualTo(-1);
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void publishIsVisibleOnlyAfterEveryEarlierWriteOfItsThread(TransportChoice transport) throws Exception {
        TransferEngine a = engine("ord-a", transport);
        TransferEngine b = engine("ord-b", transport);
        int threads = 4;
        int rounds = 300;
        int region = 16 * 1024;
        long flags = 64L * threads;
        LocalSegment target = b.registerSegment("ord-target", flags + (long) threads * region);
        RemoteSegment remote = a.openSegment("ord-target", seconds(5));
        List<Thread> writers = new ArrayList<>();
        List<String> violations = java.util.Collections.synchronizedList(new ArrayList<>());
        for (int t = 0; t < threads; t++) {
            int id = t;
            writers.add(Thread.ofPlatform().start(() -> {
                try (Arena local = Arena.ofConfined()) {
                    MemorySegment buf = local.allocate(region, 64);
                    for (long round = 1; round <= rounds; round++) {
                        buf.fill((byte) 0);
                        for (long o = 0; o < region; o += 8) buf.set(ValueLayout.JAVA_LONG, o, round);
                        remote.write(flags + (long) id * region, buf, 0, region, seconds(10));
                        remote.publish(id * 64L, round, seconds(10));
                    }
                }
            }));
            writers.add(Thread.ofPlatform().start(() -> {
                MemorySegment mem = target.memory();
                for (long round = 1; round <= rounds; round += 7) {
                    if (!Waiter.awaitAtLeast(mem, id * 64L, round, seconds(10), null)) {
                        violations.add("thread " + id + " never published " + round);
                        return;
                    }
                    long seen = Waiter.load(mem, id * 64L);
                    for (long o = 0; o < region; o += 8) {
                        long v = mem.get(ValueLayout.JAVA_LONG, flags + (long) id * region + o);
                        if (v < seen) violations.add("thread " + id + ": flag " + seen + " visible before its data (word " + o + " = " + v + ")");
                    }
                }
            }));
        }
        for (Thread w : writers) w.join(20_000);
        assertThat(violations).isEmpty();
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void rangesOutsideTheSegmentFailWithTheSegmentAndRange(TransportChoice transport) {
        TransferEngine a = engine("bounds-a", transport);
        TransferEngine b = engine("bounds-b", transport);
        b.registerSegment("bounds-target", 4096);
        RemoteSegment remote = a.openSegment("bounds-target", seconds(5));
        MemorySegment src = arena.allocate(64);

        assertThatThrownBy(() -> remote.write(4090, src, 0, 16, seconds(1)))
                .isInstanceOf(TransferException.class)
                .hasMessage("Requested address range [4090, 4106) is outside segment bounds-target of 4096 bytes");
        assertThatThrownBy(() -> remote.read(-8, src, 0, 8, seconds(1)))
                .hasMessage("Requested address range [-8, 0) is outside segment bounds-target of 4096 bytes");
        assertThatThrownBy(() -> remote.publish(4088, 1, seconds(1)))
                .hasMessage("Requested address range [4088, 4104) is outside segment bounds-target of 4096 bytes");
        assertThatThrownBy(() -> remote.publish(12, 1, seconds(1))).hasMessageContaining("not 8-byte aligned");
        assertThatThrownBy(() -> remote.write(0, src, 32, 64, seconds(1)))
                .hasMessageContaining("Local range [32, 96) is outside the local buffer of 64 bytes");
        assertThat(remote.alive()).isTrue();
        remote.write(4032, src, 0, 64, seconds(1));
        remote.publish(4080, 1, seconds(1));
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void confinedBuffersWorkForCallsButAreRejectedClearlyByBatches(TransportChoice transport) {
        TransferEngine a = engine("conf-a", transport);
        TransferEngine b = engine("conf-b", transport);
        LocalSegment target = b.registerSegment("conf-target", 8192);
        RemoteSegment remote = a.openSegment("conf-target", seconds(5));
        try (Arena confined = Arena.ofConfined()) {
            MemorySegment src = confined.allocate(4096);
            src.fill((byte) 0x5A);
            remote.write(0, src, 0, 4096, seconds(5));
            MemorySegment dst = confined.allocate(4096);
            remote.read(0, dst, 0, 4096, seconds(5));
            assertThat(dst.mismatch(src)).isEqualTo(-1);
            assertThat(target.memory().get(ValueLayout.JAVA_BYTE, 4095)).isEqualTo((byte) 0x5A);

            List<TransferStatus> st = a.await(a.submit(List.of(TransferRequest.read(dst, 0, remote, 0, 64))), seconds(5));
            assertThat(st.get(0).state()).isEqualTo(State.FAILED);
            assertThat(st.get(0).message()).contains("is confined to another thread").contains("shared, global or automatic arena");
            assertThat(remote.alive()).isTrue();
        }
    }

    @Test
    void unknownSegmentFailsAtTheDeadlineWithTheMooncakeMessage() {
        TransferEngine a = engine("unknown-a", TransportChoice.AUTO);
        long start = System.nanoTime();
        assertThatThrownBy(() -> a.openSegment("no-such-segment", Deadline.afterMillis(300)))
                .isInstanceOf(TransferException.class)
                .hasMessage("Failed to get description of no-such-segment: no segment of that name is registered in the metadata store memory:."
                        + " The name must match what the peer registered; check that both sides use the same store and that the peer has started.");
        assertThat(System.nanoTime() - start).isBetween(250_000_000L, 3_000_000_000L);
    }

    @Test
    void openWaitsForASegmentRegisteredLater() throws Exception {
        TransferEngine a = engine("late-a", TransportChoice.AUTO);
        TransferEngine b = engine("late-b", TransportChoice.AUTO);
        Thread registrar = Thread.ofPlatform().start(() -> {
            try {
                Thread.sleep(200);
            } catch (InterruptedException e) {
                return;
            }
            b.registerSegment("late", 4096);
        });
        RemoteSegment r = a.openSegment("late", seconds(5));
        registrar.join();
        assertThat(r.size()).isEqualTo(4096);
        assertThat(a.openSegment("late", seconds(1))).isSameAs(r);
    }

    @Test
    void connectionRefusedNamesTheAddressAndTheHostIpHint() {
        TransferEngine a = engine("refused-a", TransportChoice.TCP);
        TransferEngine gone = TransferEngine.builder().store(store).name("refused-gone").start();
        gone.registerSegment("refused", 4096);
        byte[] stale = store.get(TransferEngine.SEGMENT_KEY_PREFIX + "refused").orElseThrow();
        String address = gone.hostIp() + ":" + gone.port();
        gone.close();
        store.set(TransferEngine.SEGMENT_KEY_PREFIX + "refused", stale);

        assertThatThrownBy(() -> a.openSegment("refused", seconds(5)))
                .isInstanceOf(TransferException.class)
                .hasMessage("Failed to connect to engine refused-gone for segment refused: connection refused by " + address + " (segment refused)."
                        + " The peer must advertise an address reachable from here: set its host IP with Mooncake.setHostIp/MOONCAKE_HOST_IP"
                        + " to a non-loopback address; check firewalls.");

        // the stale descriptor of the dead engine does not block a new registration of the name
        TransferEngine heir = engine("refused-heir", TransportChoice.TCP);
        try (LogCapture log = LogCapture.start(true)) {
            heir.registerSegment("refused", 8192);
            assertThat(log.text()).contains("Engine refused-heir: replacing the stale descriptor of segment refused left by engine refused-gone (pid "
                    + ProcessHandle.current().pid() + " at " + address + "), which is gone");
        }
        assertThat(a.openSegment("refused", seconds(5)).size()).isEqualTo(8192);
    }

    @Test
    void portInUseNamesThePort() {
        TransferEngine a = engine("bind-a", TransportChoice.AUTO);
        assertThatThrownBy(() -> TransferEngine.builder().store(store).name("bind-b").hostIp(a.hostIp()).port(a.port()).start())
                .isInstanceOf(TransferException.class)
                .hasMessage("Transfer engine bind-b cannot listen on " + a.hostIp() + ":" + a.port() + ": bind address already in use (port "
                        + a.port() + " is taken by another process or engine). Choose another port, or port 0 to let the system pick a free"
                        + " one, or stop the process that holds it (ss -ltnp 'sport = :" + a.port() + "').");
    }

    @Test
    void deviceFilterThatMatchesNoInterfaceIsAnError() {
        org.junit.jupiter.api.Assumptions.assumeTrue(System.getenv("MOONCAKE_HOST_IP") == null, "MOONCAKE_HOST_IP overrides the filter");
        assertThatThrownBy(() -> TransferEngine.builder().store(store).name("filter").deviceFilter(List.of("nosuchnic0")).start())
                .isInstanceOf(TransferException.class)
                .hasMessageStartingWith("No matched device found: no interface named in the device filter [nosuchnic0] is up with an IPv4"
                        + " address (up here: ")
                .hasMessageEndingWith("). Fix the filter (Mooncake.setDeviceFilter) or set the host IP with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
    }

    @Test
    void segmentNamesAreUniqueAmongLiveEngines() {
        TransferEngine a = engine("dup-a", TransportChoice.AUTO);
        TransferEngine b = engine("dup-b", TransportChoice.AUTO);
        a.registerSegment("dup", 4096);
        assertThatThrownBy(() -> a.registerSegment("dup", 4096)).hasMessageContaining("already registered by this engine");
        assertThatThrownBy(() -> b.registerSegment("dup", 4096))
                .hasMessage("Segment dup is already registered by engine dup-a (pid " + ProcessHandle.current().pid() + " at " + a.hostIp() + ":"
                        + a.port() + "), which is running: segment names must be unique in the metadata store memory:. Choose another name,"
                        + " or close that segment first.");
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void batchReportsCompletedAndFailedPerRequest(TransportChoice transport) {
        TransferEngine a = engine("batch-a", transport);
        TransferEngine b = engine("batch-b", transport);
        LocalSegment target = b.registerSegment("batch-target", SEG);
        RemoteSegment remote = a.openSegment("batch-target", seconds(5));
        MemorySegment data = pattern(128 * 1024, 7);
        MemorySegment back = arena.allocate(data.byteSize());
        target.memory().asSlice(SEG / 2, data.byteSize()).copyFrom(data);

        BatchId id = a.submit(List.of(
                TransferRequest.write(data, 0, remote, 0, data.byteSize()),
                TransferRequest.write(data, 0, remote, SEG - 16, 32),
                TransferRequest.read(back, 0, remote, SEG / 2, data.byteSize())));
        List<TransferStatus> st = a.await(id, seconds(10));
        assertThat(st).extracting(TransferStatus::state).containsExactly(State.COMPLETED, State.FAILED, State.COMPLETED);
        assertThat(st.get(0).transferredBytes()).isEqualTo(data.byteSize());
        assertThat(st.get(1).message()).isEqualTo("Requested address range [" + (SEG - 16) + ", " + (SEG + 16)
                + ") is outside segment batch-target of " + SEG + " bytes");
        assertThat(target.memory().asSlice(0, data.byteSize()).mismatch(data)).isEqualTo(-1);
        assertThat(back.mismatch(data)).isEqualTo(-1);
        assertThatThrownBy(() -> a.status(id, 0)).hasMessageContaining("already awaited");
    }

    @Test
    void batchRequestStillRunningAtTheDeadlineIsTimeout() throws Exception {
        TransferEngine a = engine("slow-a", TransportChoice.AUTO);
        CountDownLatch release = new CountDownLatch(1);
        RemoteSegment stalled = new RemoteSegment() {
            @Override public String name() { return "stalled"; }
            @Override public long size() { return 4096; }
            @Override public String engineName() { return "stopped-peer"; }
            @Override public String transport() { return "tcp"; }
            @Override public void write(long o, MemorySegment s, long so, long l, Deadline d) { await(release); }
            @Override public void read(long o, MemorySegment s, long so, long l, Deadline d) { await(release); }
            @Override public void publish(long o, long v, Deadline d) {}
            @Override public boolean alive() { return true; }
        };
        MemorySegment src = arena.allocate(64);
        BatchId id = a.submit(List.of(TransferRequest.write(src, 0, stalled, 128, 64)));
        assertThat(a.status(id, 0).state()).isEqualTo(State.PENDING);
        long start = System.nanoTime();
        List<TransferStatus> st = a.await(id, Deadline.afterMillis(300));
        assertThat(System.nanoTime() - start).isLessThan(2_000_000_000L);
        assertThat(st.get(0).state()).isEqualTo(State.TIMEOUT);
        assertThat(st.get(0).message()).isEqualTo("Transfer WRITE of [128, 192) to segment stalled (engine stopped-peer, tcp) did not finish"
                + " by the deadline: the peer is slow, stopped or unreachable.");
        release.countDown();
    }

    private static void await(CountDownLatch l) {
        try {
            l.await(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void deadPeerFailsWritesAndIsReportedOnBothSides(TransportChoice transport) throws Exception {
        TransferEngine a = engine("dead-a", transport);
        TransferEngine b = engine("dead-b", transport);
        b.registerSegment("dead-target", 4096);
        a.registerSegment("dead-src", 4096);
        RemoteSegment remote = a.openSegment("dead-target", seconds(5));
        RemoteSegment back = b.openSegment("dead-src", seconds(5));
        BlockingPeerListener toldA = new BlockingPeerListener();
        BlockingPeerListener toldB = new BlockingPeerListener();
        a.addPeerFailureListener(toldA);
        b.addPeerFailureListener(toldB);

        TransferEngine c = engine("dead-c", transport);
        RemoteSegment fromC = c.openSegment("dead-target", seconds(5));
        fromC.write(0, arena.allocate(8), 0, 8, seconds(1));
        c.close();
        assertThat(toldB.next(1000)).startsWith("dead-c: ").contains("closed");

        b.close();
        assertThat(toldA.next(1000)).startsWith("dead-b: ");
        assertThat(remote.alive()).isFalse();
        assertThatThrownBy(() -> remote.write(0, arena.allocate(8), 0, 8, seconds(1)))
                .isInstanceOf(TransferException.class)
                .hasMessageContaining("Segment dead-target of engine dead-b is unreachable");
        List<TransferStatus> st = a.await(a.submit(List.of(TransferRequest.write(arena.allocate(8), 0, remote, 0, 8))), seconds(2));
        assertThat(st.get(0).state()).isEqualTo(State.FAILED);
        assertThat(st.get(0).message()).contains("unreachable");
        assertThat(back.alive()).isFalse();
        assertThatThrownBy(() -> a.openSegment("dead-target", Deadline.afterMillis(200))).hasMessageContaining("no replacement process");
    }

    @ParameterizedTest
    @EnumSource(value = TransportChoice.class, names = {"SHM", "TCP"})
    void segmentOfAReplacedPeerCanBeOpenedAgain(TransportChoice transport) {
        TransferEngine a = engine("heir-a", transport);
        TransferEngine b = TransferEngine.builder().store(store).name("heir-b").transport(transport).start();
        b.registerSegment("heir", 4096);
        RemoteSegment first = a.openSegment("heir", seconds(5));
        assertThat(a.openSegment("heir", seconds(1))).isSameAs(first);
        b.close();

        TransferEngine b2 = engine("heir-b", transport);
        LocalSegment again = b2.registerSegment("heir", 8192);
        RemoteSegment second = a.openSegment("heir", seconds(5));
        assertThat(second).isNotSameAs(first);
        assertThat(second.alive()).isTrue();
        MemorySegment v = pattern(64, 3);
        second.write(8000, v, 0, 64, seconds(2));
        second.publish(0, 1, seconds(2));
        assertThat(Waiter.awaitAtLeast(again.memory(), 0, 1, seconds(5), null)).isTrue();
        assertThat(again.memory().asSlice(8000, 64).mismatch(v)).isEqualTo(-1);
    }

    @Test
    void preferredTransportSaysWhichAndWhy() {
        TransferEngine auto = engine("pref-auto", TransportChoice.AUTO);
        TransferEngine tcp = engine("pref-tcp", TransportChoice.TCP);
        TransferEngine shm = engine("pref-shm", TransportChoice.SHM);
        auto.registerSegment("pref", 4096);
        assertThat(auto.preferredTransport("pref")).startsWith("shm: segment pref of engine pref-auto").contains("on this host");
        assertThat(tcp.preferredTransport("pref")).startsWith("tcp: to " + auto.hostIp() + ":" + auto.port()).contains("forced to tcp");
        assertThat(tcp.preferredTransport("missing")).startsWith("none: no segment named missing");

        SegmentDescriptor elsewhere = new SegmentDescriptor("far", "instance-far", "10.255.0.1", 1234, "otherhost/boot", "/dev/shm/x", 4096, 1, 1);
        store.set(TransferEngine.SEGMENT_KEY_PREFIX + "far", elsewhere.encode());
        assertThat(auto.preferredTransport("far")).startsWith("tcp: to 10.255.0.1:1234").contains("another host");
        assertThat(shm.preferredTransport("far")).startsWith("none: Transport shm is forced").contains("shm only reaches peers on the same host");
        assertThatThrownBy(() -> shm.openSegment("far", seconds(1)))
                .hasMessage("Transport shm is forced (TransferEngine.builder().transport(SHM)) but segment far of engine far lives on host"
                        + " otherhost/boot (10.255.0.1), not on this host (" + HostNetwork.hostId() + "): shm only reaches peers on the same"
                        + " host. Use transport auto or tcp.");
    }

    @Test
    void staleFilesOfKilledProcessesInThisPidNamespaceAreRemoved() throws Exception {
        Process p = new ProcessBuilder("true").start();
        p.waitFor();
        String ns = Files.readSymbolicLink(Path.of("/proc/self/ns/pid")).toString().replaceAll("\\D", "");
        Path dir = Files.isDirectory(Path.of("/dev/shm")) ? Path.of("/dev/shm") : Path.of(System.getProperty("java.io.tmpdir"));
        Path ownStale = dir.resolve("mooncake4j-stale_e-" + p.pid() + "-ns" + ns + "-seg-1");
        Path otherStale = dir.resolve("mooncake4j-another_engine-" + p.pid() + "-ns" + ns + "-seg-1");
        Path otherNamespace = dir.resolve("mooncake4j-stale_e-" + p.pid() + "-ns1-seg-1");
        Path live = dir.resolve("mooncake4j-stale_e-" + ProcessHandle.current().pid() + "-ns" + ns + "-other-1");
        for (Path f : List.of(ownStale, otherStale, otherNamespace, live)) Files.write(f, new byte[16]);
        try {
            TransferEngine e = engine("stale-e", TransportChoice.AUTO);
            e.registerSegment("fresh", 4096);
            assertThat(ownStale).doesNotExist();
            assertThat(otherStale).doesNotExist();
            assertThat(otherNamespace).as("a pid of another container's namespace says nothing here").exists();
            assertThat(live).exists();
        } finally {
            for (Path f : List.of(ownStale, otherStale, otherNamespace, live)) Files.deleteIfExists(f);
        }
    }

    @Test
    void closingLeavesNoThreadsFilesOrDescriptors() throws Exception {
        TransferEngine a = TransferEngine.builder().store(store).name("leak-a").start();
        TransferEngine b = TransferEngine.builder().store(store).name("leak-b").transport(TransportChoice.TCP).start();
        LocalSegment sa = a.registerSegment("leak-sa", SEG);
        b.registerSegment("leak-sb", SEG);
        RemoteSegment ra = b.openSegment("leak-sa", seconds(5));
        RemoteSegment rb = a.openSegment("leak-sb", seconds(5));
        MemorySegment data = pattern(SEG, 1);
        rb.write(0, data, 0, SEG, seconds(5));
        b.await(b.submit(List.of(TransferRequest.write(data, 0, ra, 0, SEG), TransferRequest.read(data, 0, ra, 0, 4096))), seconds(5));
        assertThat(threads("leak-")).isNotEmpty();
        assertThat(shmFiles()).isNotEmpty();

        sa.close();
        assertThat(store.get(TransferEngine.SEGMENT_KEY_PREFIX + "leak-sa")).isEmpty();
        a.close();
        b.close();
        long end = System.nanoTime() + 3_000_000_000L;
        while (!threads("leak-").isEmpty() && System.nanoTime() < end) Thread.sleep(10);
        assertThat(threads("leak-")).isEmpty();
        assertThat(shmFiles()).isEmpty();
        assertThat(store.keys(TransferEngine.SEGMENT_KEY_PREFIX)).isEmpty();
        assertThatThrownBy(() -> a.registerSegment("x", 64)).hasMessageContaining("is closed");
    }

    private static List<String> threads(String enginePrefix) {
        return Thread.getAllStackTraces().keySet().stream().map(Thread::getName)
                .filter(n -> n.startsWith("mooncake4j-" + enginePrefix)).toList();
    }

    private static List<Path> shmFiles() throws IOException {
        List<Path> out = new ArrayList<>();
        for (Path dir : List.of(Path.of("/dev/shm"), Path.of(System.getProperty("java.io.tmpdir")))) {
            if (!Files.isDirectory(dir)) continue;
            try (Stream<Path> s = Files.list(dir)) {
                s.filter(f -> f.getFileName().toString().startsWith("mooncake4j-leak_")).forEach(out::add);
            }
        }
        return out;
    }

    /** Collects "engine: reason" reports. */
    static final class BlockingPeerListener implements PeerFailureListener {
        private final java.util.concurrent.LinkedBlockingQueue<String> reports = new java.util.concurrent.LinkedBlockingQueue<>();

        @Override
        public void peerFailed(String engineName, String reason) { reports.add(engineName + ": " + reason); }

        String next(long millis) throws InterruptedException {
            String r = reports.poll(millis, TimeUnit.MILLISECONDS);
            assertThat(r).as("a peer failure report within " + millis + " ms").isNotNull();
            return r;
        }
    }
}
