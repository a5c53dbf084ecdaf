package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.foreign.Arena;
import java.lang.foreign.SymbolLookup;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.mooncake4j.cli.doctor.CudaProbe;
import org.mooncake4j.testkit.ProcessCluster;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;
import picocli.CommandLine;

/**
 * {@code mooncake4j doctor} in this JVM, with the environment it reads given explicitly: a healthy
 * setup passes, and each problem the troubleshooting page lists that the doctor can see is reported
 * with host:port and what to do, with exit code 1.
 */
class DoctorCommandTest {
    /** A TEST-NET-3 address (RFC 5737): another host, whatever answers there. */
    private static final String REMOTE = "203.0.113.1";

    record Run(int code, String out, String err) {
        List<String> lines(String prefix) { return out.lines().filter(l -> l.startsWith(prefix)).toList(); }
    }

    static Run doctor(Map<String, String> env, String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        CommandLine cl = new CommandLine(new DoctorCommand(env));
        cl.setOut(new PrintWriter(out, true));
        cl.setErr(new PrintWriter(err, true));
        int code = cl.execute(args);
        return new Run(code, out.toString(), err.toString());
    }

    @Test
    void isASubcommandOfMooncake4j() {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        PrintStream old = System.out;
        System.setOut(new PrintStream(out, true, StandardCharsets.UTF_8));
        int code;
        try {
            code = Main.commandLine().execute("doctor", "--help");
        } finally {
            System.setOut(old);
        }
        assertThat(code).isZero();
        assertThat(out.toString(StandardCharsets.UTF_8)).contains("Usage: mooncake4j doctor", "--store=URI", "--peers=HOST:PORT");
    }

    @Test
    void healthyLocalSetupPrintsEverySectionAndNoProblem() throws Exception {
        try (EmbeddedStoreServer server = EmbeddedStoreServer.start("127.0.0.1", 0);
             ServerSocket peer = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
             MetadataStore s = MetadataStores.open(URI.create(server.uri()), Duration.ofSeconds(5), null);
             TransferEngine other = TransferEngine.builder().store(s).name("doctor-test-peer").token(null).start()) {
            other.registerSegment("doctor-test-segment", 4096);
            s.set("mooncake4j/pg/world/state", "epoch=3 status=normal slots=4 world=4 mask=1101 op=-1 outcome=none".getBytes(StandardCharsets.UTF_8));
            Run r = doctor(Map.of(), "--store", server.uri(), "--peers", "127.0.0.1:" + peer.getLocalPort());

            assertThat(r.code()).as(r.out() + r.err()).isZero();
            assertThat(r.lines("== ")).containsExactly("== mooncake4j ==", "== java ==", "== system ==", "== environment ==", "== cuda ==",
                    "== network ==", "== shm ==", "== limits ==", "== store ==", "== transport ==", "== peers ==", "== verdict ==");
            assertThat(r.out()).contains("version: " + Main.version() + "\n", "variables: none of the variables mooncake4j reads is set");
            assertThat(r.lines("host-ip: ")).hasSize(1);
            assertThat(r.lines("engine: listens on ")).hasSize(1);
            assertThat(r.lines("/dev/shm: ").size() + r.lines("/dev/shm: absent").size()).isPositive();
            assertThat(r.lines("memlock: ")).hasSize(1);
            assertThat(r.out()).contains("store: " + server.uri() + " (--store)\n", "reachable: yes (connected in ", "latency: get round trip ",
                    "segments: 1 registered\n", "group.world: epoch=3 status=normal slots=4 world=4 mask=1101 op=-1 outcome=none\n");
            assertThat(r.lines("segment.doctor-test-segment: shm: segment doctor-test-segment of engine doctor-test-peer is mapped from "))
                    .as(r.out()).hasSize(1);
            assertThat(r.lines("peer.127.0.0.1:" + peer.getLocalPort() + ": ")).hasSize(2)
                    .anySatisfy(l -> assertThat(l).contains(": shm ").contains("the peer is on this host"))
                    .anySatisfy(l -> assertThat(l).contains(": connected in ").endsWith("(127.0.0.1, this host)"));
            assertThat(r.lines("PROBLEM: ")).isEmpty();
            assertThat(r.out()).endsWith("OK: no problems found\n");
        }
    }

    @Test
    void unreachableStoreIsAProblemWithTheStoresOwnMessage() {
        int port = ProcessCluster.freePort();
        String uri = "tcp://127.0.0.1:" + port;
        Run r = doctor(Map.of(), "--store", uri, "--timeout-ms", "300");
        assertThat(r.code()).as(r.out()).isEqualTo(1);
        assertThat(r.out()).contains("reachable: no\n", "error: Cannot reach the metadata store at " + uri + " (connection refused) after ");
        assertThat(r.lines("PROBLEM: the metadata store " + uri + " is unreachable: Cannot reach the metadata store at " + uri
                + " (connection refused) after ")).singleElement().satisfies(l -> assertThat(l).contains(" -> start the store "));
        assertThat(r.out()).endsWith("1 problem found\n");
    }

    @Test
    void storeFromTheEnvironmentIsCheckedToo() {
        int port = ProcessCluster.freePort();
        Run r = doctor(Map.of("MASTER_ADDR", "127.0.0.1", "MASTER_PORT", Integer.toString(port)), "--timeout-ms", "300");
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.out()).contains("store: tcp://127.0.0.1:" + port + " (MASTER_ADDR:MASTER_PORT)\n", "MASTER_PORT: '" + port + "'\n");
        assertThat(r.lines("PROBLEM: the metadata store tcp://127.0.0.1:" + port + " is unreachable")).hasSize(1);
    }

    @Test
    void refusedPeerIsNamedWithHostAndPort() {
        int port = ProcessCluster.freePort();
        Run r = doctor(Map.of(), "--peers", "127.0.0.1:" + port);
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.lines("peer.127.0.0.1:" + port + ": refused: nothing listens on 127.0.0.1:" + port + " (answered in ")).hasSize(1);
        assertThat(r.lines("PROBLEM: peer 127.0.0.1:" + port + " refused the connection: nothing listens on port " + port + " there -> "))
                .hasSize(1);
    }

    @Test
    void silentPeerTimesOutWithHostAndPort() throws Exception {
        // a listener whose accept queue is full drops further connection requests, as a firewall that drops packets does
        try (ServerSocket full = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            List<java.net.Socket> held = new java.util.ArrayList<>();
            try {
                for (int i = 0; i < 16; i++) {
                    java.net.Socket s = new java.net.Socket();
                    try {
                        s.connect(full.getLocalSocketAddress(), 300);
                        held.add(s);
                    } catch (java.net.SocketTimeoutException e) {
                        s.close();
                        break;
                    }
                }
                int port = full.getLocalPort();
                Run r = doctor(Map.of(), "--peers", "127.0.0.1:" + port, "--timeout-ms", "300");
                assertThat(r.code()).isEqualTo(1);
                assertThat(r.out()).contains("peer.127.0.0.1:" + port + ": timeout: no answer from 127.0.0.1:" + port + " within 300 ms\n");
                assertThat(r.lines("PROBLEM: peer 127.0.0.1:" + port + " did not answer within 300 ms -> check the address, that the host is up,"
                        + " and the firewalls between the hosts")).hasSize(1);
            } finally {
                for (java.net.Socket s : held) s.close();
            }
        }
    }

    @Test
    void unknownPeerHostIsAProblem() {
        Run r = doctor(Map.of(), "--peers", "no-such-host.invalid:29500", "--timeout-ms", "500");
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.out()).contains("peer.no-such-host.invalid:29500: unknown host: no-such-host.invalid does not resolve\n");
        assertThat(r.lines("PROBLEM: peer no-such-host.invalid:29500: unknown host no-such-host.invalid -> ")).hasSize(1);
    }

    @Test
    void loopbackHostAddressWithARemotePeerIsAProblem() throws Exception {
        try (ServerSocket local = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
            Run alone = doctor(Map.of("MOONCAKE_HOST_IP", "127.0.0.1"), "--peers", "127.0.0.1:" + local.getLocalPort());
            assertThat(alone.code()).as("only local peers: a note, not a problem\n" + alone.out()).isZero();
            assertThat(alone.out()).contains("host-ip: 127.0.0.1 (MOONCAKE_HOST_IP; interface lo");
            assertThat(alone.lines("NOTE: the host address is 127.0.0.1 (loopback): only processes on this host can reach this one")).hasSize(1);
        }
        Run r = doctor(Map.of("MOONCAKE_HOST_IP", "127.0.0.1"), "--peers", REMOTE + ":29500", "--timeout-ms", "300");
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.lines("PROBLEM: the host address peers would use is 127.0.0.1 (loopback), but peer " + REMOTE
                + ":29500 is on another host: they cannot reach this process -> set MOONCAKE_HOST_IP (or Mooncake.setHostIp) to this host's"
                + " address on the network the peers share")).as(r.out()).hasSize(1);
        assertThat(r.lines("peer." + REMOTE + ":29500: tcp from 127.0.0.1")).hasSize(1);
        assertThat(r.lines("peer." + REMOTE + ":29500: ")).as("what the probe found, whatever it is, names host:port").hasSize(2);
    }

    @Test
    void loopbackStoreWithARemotePeerIsAProblem() {
        try (EmbeddedStoreServer server = EmbeddedStoreServer.start("127.0.0.1", 0)) {
            Run r = doctor(Map.of(), "--store", server.uri(), "--peers", REMOTE + ":29500", "--timeout-ms", "300");
            assertThat(r.code()).isEqualTo(1);
            assertThat(r.lines("PROBLEM: the store address 127.0.0.1 is loopback, but peer " + REMOTE
                    + ":29500 is on another host: processes there cannot reach this store -> ")).as(r.out()).hasSize(1);
        }
    }

    @Test
    void forcedShmWithARemotePeerIsAProblem() {
        Run r = doctor(Map.of("MOONCAKE_TRANSPORT", "shm"), "--peers", REMOTE + ":29500", "--timeout-ms", "300");
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.out()).contains("transport: shm (MOONCAKE_TRANSPORT=shm): every peer must be on this host and share its /dev/shm\n",
                "peer." + REMOTE + ":29500: none: shm is forced but the peer is on another host\n");
        assertThat(r.lines("PROBLEM: MOONCAKE_TRANSPORT=shm but peer " + REMOTE + ":29500 is on another host: shm only reaches peers on this host"
                + " -> unset MOONCAKE_TRANSPORT (auto) or set it to tcp")).hasSize(1);
    }

    @Test
    void deviceFilterThatMatchesNoInterfaceIsAProblemWithTheEnginesMessage() {
        Assumptions.assumeTrue(System.getenv("MOONCAKE_HOST_IP") == null, "MOONCAKE_HOST_IP overrides the filter");
        Run r = doctor(Map.of("MOONCAKE_DEVICE_FILTER", "nosuchnic0"));
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.out()).contains("device-filter: [nosuchnic0] (MOONCAKE_DEVICE_FILTER; Mooncake.setDeviceFilter in code overrides it)\n");
        assertThat(r.lines("PROBLEM: a transfer engine cannot start on this host: No matched device found: no interface named in the device filter"
                + " [nosuchnic0] is up with an IPv4 address (up here: ")).as(r.out()).hasSize(1);
    }

    @Test
    void hostIpThatIsNotAnAddressOfThisMachineIsAProblem() {
        Run r = doctor(Map.of("MOONCAKE_HOST_IP", "203.0.113.7"));
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.lines("PROBLEM: a transfer engine cannot start on this host: Transfer engine doctor-" + ProcessHandle.current().pid()
                + " cannot listen on 203.0.113.7:0: ")).singleElement()
                .satisfies(l -> assertThat(l).contains(". The host IP must be an address of this machine: set it with Mooncake.setHostIp/MOONCAKE_HOST_IP"));
    }

    @Test
    void badEnvironmentValuesAreProblems() {
        Run r = doctor(Map.of("MOONCAKE_TRANSPORT", "rdma", "MOONCAKE_TIMEOUT_MS", "60s", "RANK", "4", "WORLD_SIZE", "4"));
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.out()).contains("MOONCAKE_TRANSPORT: 'rdma'\n", "transport: invalid: MOONCAKE_TRANSPORT='rdma' is not a transport: use auto, shm or tcp.\n");
        assertThat(r.lines("PROBLEM: ")).containsExactly(
                "PROBLEM: MOONCAKE_TIMEOUT_MS='60s' is not a positive number: processes fail at startup -> set it to the group operation"
                        + " timeout in milliseconds (default 60000), or unset it",
                "PROBLEM: RANK=4 is outside [0, WORLD_SIZE=4) -> set RANK to 0..WORLD_SIZE-1 (mooncake4j run sets both)",
                "PROBLEM: MOONCAKE_TRANSPORT='rdma' is not a transport: use auto, shm or tcp. -> set MOONCAKE_TRANSPORT to auto, shm or tcp, or unset it");
    }

    @Test
    void tokenIsNeverPrinted() {
        Run r = doctor(Map.of("MOONCAKE_TOKEN", "s3cret-value"));
        assertThat(r.out()).doesNotContain("s3cret-value").contains("MOONCAKE_TOKEN: set (12 characters, not shown)\n",
                "group-token: MOONCAKE_TOKEN: connections are authenticated\n");
    }

    @Test
    void tooManyRanksForSharedMemoryIsAProblem() {
        Run r = doctor(Map.of(), "--nproc-per-node", "4096");
        assertThat(r.code()).isEqualTo(1);
        assertThat(r.lines("needed: ")).singleElement().satisfies(l -> assertThat(l).endsWith(" for 4096 ranks of a group of 4096 slots"));
        assertThat(r.lines("PROBLEM: /dev/shm ")).singleElement().satisfies(l -> assertThat(l)
                .contains(" but 4096 ranks of a group of 4096 slots need ").contains(": registering the segments fails -> enlarge /dev/shm to at least "));
    }

    @Test
    void missingDriverIsReportedAndIsAProblemOnlyForTheCudaBackend() {
        boolean driver;
        try {
            SymbolLookup.libraryLookup("libcuda.so.1", Arena.global());
            driver = true;
        } catch (IllegalArgumentException e) {
            driver = false;
        }
        Assumptions.assumeFalse(driver, "this host has an NVIDIA driver");
        Run cpu = doctor(Map.of());
        assertThat(cpu.code()).as(cpu.out()).isZero();
        Run gpu = doctor(Map.of(), "--backend", "mooncake");
        assertThat(gpu.code()).isEqualTo(1);
        if (cpu.out().contains("module: mooncake4j-cuda not found")) {
            assertThat(gpu.lines("PROBLEM: the mooncake4j-cuda module is not installed -> ")).hasSize(1);
            return;
        }
        assertThat(cpu.out()).contains("driver: none (libcuda.so.1 not found): the mooncake-cpu backend works; the mooncake backend needs an NVIDIA driver\n",
                "driver.message: The NVIDIA driver library libcuda.so.1 was not found: this host has no NVIDIA driver, so the 'mooncake' (CUDA)"
                        + " backend cannot run here; use backend 'mooncake-cpu' or run on a GPU host.\n");
        assertThat(cpu.lines("kernels: ")).hasSize(1);
        assertThat(gpu.lines("PROBLEM: CUDA is unavailable: The NVIDIA driver library libcuda.so.1 was not found")).hasSize(1);
    }

    @Test
    void usageErrorsExitWithTwo() {
        Run r = doctor(Map.of(), "--peers", "nonsense");
        assertThat(r.code()).isEqualTo(2);
        assertThat(r.err()).contains("--peers: 'nonsense' is not HOST:PORT");
        assertThat(doctor(Map.of(), "--timeout-ms", "0").code()).isEqualTo(2);
        assertThat(doctor(Map.of(), "--backend", "nccl").err()).contains("--backend must be mooncake-cpu or mooncake, got 'nccl'");
    }

    @Test
    void cudaModuleIsLookedUpBesideTheBuild(@TempDir Path root) throws Exception {
        Path classes = Files.createDirectories(root.resolve("cli/target/classes"));
        Files.createDirectories(root.resolve("cuda/target"));
        List<Path> c = CudaProbe.jarCandidates(classes, "9.9");
        assertThat(c.subList(0, 2)).containsExactly(root.resolve("cuda/target/mooncake4j-cuda-9.9.jar"), root.resolve("cuda/target/classes"));
        assertThat(c.getLast().toString()).endsWith("/.m2/repository/org/mooncake4j/mooncake4j-cuda/9.9/mooncake4j-cuda-9.9.jar");
        CudaProbe.Result none = CudaProbe.probe(ClassLoader.getPlatformClassLoader(), List.of(root.resolve("absent.jar")));
        assertThat(none.moduleFound()).isFalse();
    }
}
