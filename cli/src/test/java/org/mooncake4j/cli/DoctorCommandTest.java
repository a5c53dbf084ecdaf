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
        return doctor(new DoctorCommand(env), args);
    }

    static Run doctor(DoctorCommand command, String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        CommandLine cl = new CommandLine(command);
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
        assertThat(r.lines("PROBLEM: ")).containsExactly("PROBLEM: peer 127.0.0.1:" + port + " refused the connection: nothing listens on port "
                + port + " there -> start the process that should listen on 127.0.0.1:" + port + ", check the port, or open the firewall"
                + " (a REJECT rule also refuses)");
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
                assertThat(r.lines("PROBLEM: ")).containsExactly("PROBLEM: peer 127.0.0.1:" + port + " did not answer within 300 ms -> check the"
                        + " address, that the host is up, and the firewalls between the hosts (they drop packets to port " + port + ")");
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
        assertThat(r.lines("PROBLEM: ")).containsExactly("PROBLEM: peer no-such-host.invalid:29500: unknown host no-such-host.invalid -> use an"
                + " IP address or a name every host resolves (DNS or /etc/hosts)");
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
                    + ":29500 is on another host: processes there cannot reach this store -> give every process a store address on the shared"
                    + " network (e.g. tcp://<this-host-ip>:port, MASTER_ADDR=<this-host-ip>); etcd must listen on it too"
                    + " (--listen-client-urls http://0.0.0.0:2379)")).as(r.out()).hasSize(1);
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
        // 4096 ranks x (4 x 4096 slots x 1 MiB + flags) = 64 TiB: more than /dev/shm and the fallback directory hold
        long mib = 4096 * new org.mooncake4j.pg.collective.GroupLayout(4096, 1 << 20).segmentBytes() >> 20;
        assertThat(r.lines("needed: ")).containsExactly("needed: 64 TiB for 4096 ranks of a group of 4096 slots");
        String tmp = java.util.regex.Pattern.quote(System.getProperty("java.io.tmpdir"));
        assertThat(r.lines("PROBLEM: /dev/shm ")).singleElement().satisfies(l -> assertThat(l).matches(
                "PROBLEM: /dev/shm (has [0-9.]+ [KMGT]?i?B free|is not usable) but 4096 ranks of a group of 4096 slots need 64 TiB, and " + tmp
                        + " has only [0-9.]+ [KMGT]?i?B: registering the segments fails -> enlarge /dev/shm to at least 64 TiB"
                        + " \\(docker run --shm-size=" + mib + "m, or mount -o remount,size=" + mib + "m /dev/shm\\), or lower MOONCAKE_SLOT_BYTES"));
    }

    // ---- made-up hosts: a CUDA driver and GPUs, and process limits ------------------------------------

    private static final List<String> ARCHS = List.of("sm_90", "sm_100", "compute_90");

    /** A host whose driver reports one GPU of compute capability major.minor, covered by the kernels or not. */
    private static CudaProbe.Result gpuHost(String name, int major, int minor, boolean covered, List<String> archs) {
        return new CudaProbe.Result("on the class path", Main.version(), archs, archs.isEmpty() ? null : "12.8", "CUDA kernels were not built"
                + " (nvcc was not found when mooncake4j was built); rebuild on a machine with nvcc (CUDA 12.4+) to use the 'mooncake' backend.",
                12080, null, false, List.of(new CudaProbe.Gpu(0, name, major, minor, 80L << 30, "00000000:18:00.0", true, true, false, covered)),
                new boolean[1][1]);
    }

    private static final CudaProbe.Result H100 = gpuHost("NVIDIA H100 80GB HBM3", 9, 0, true, ARCHS);

    /** A /proc/self/limits with the given locked-memory limit (soft and hard, in bytes or "unlimited"). */
    private static Path limits(Path dir, String memlock) throws java.io.IOException {
        String row = "%-26s%-21s%-21s%-10s%n";
        return Files.writeString(dir.resolve("limits-" + memlock), String.format(row, "Limit", "Soft Limit", "Hard Limit", "Units")
                + String.format(row, "Max open files", "1024", "4096", "files")
                + String.format(row, "Max locked memory", memlock, memlock, "bytes"));
    }

    @Test
    void lockedMemoryLimitBelowWhatTheCudaBackendPinsIsAProblemForItAndANoteOtherwise(@TempDir Path dir) throws Exception {
        String need = org.mooncake4j.cli.doctor.Report.bytes(2 * DoctorCommand.pageBytes());
        String what = "the locked-memory limit (ulimit -l) is 0 B, below the " + need + " of page-locked host memory each rank of the mooncake"
                + " backend allocates (cuMemAllocHost: a page for the status words of its collectives and one for a CUDA EpBuffer; each further"
                + " subgroup or EpBuffer adds a page)";
        String fix = "raise it for the job's processes: ulimit -l unlimited (the hard limit here is 0 B; root raises that), or"
                + " '* soft memlock unlimited' and '* hard memlock unlimited' in /etc/security/limits.conf, or docker run --ulimit memlock=-1";
        Path zero = limits(dir, "0");

        Run cuda = doctor(new DoctorCommand(Map.of(), zero, H100), "--backend", "mooncake");
        assertThat(cuda.code()).as(cuda.out()).isEqualTo(1);
        assertThat(cuda.out()).contains("memlock: 0 B soft, 0 B hard (ulimit -l; the mooncake backend page-locks " + need
                + " of host memory per rank, mooncake-cpu none)\n", "open-files: 1024 soft, 4096 hard (ulimit -n; ");
        assertThat(cuda.lines("PROBLEM: ")).containsExactly("PROBLEM: " + what + " -> " + fix);

        Run cpu = doctor(new DoctorCommand(Map.of(), zero, H100));
        assertThat(cpu.code()).as("mooncake-cpu locks no memory\n" + cpu.out()).isZero();
        assertThat(cpu.lines("NOTE: the locked-memory limit")).containsExactly("NOTE: " + what + "; " + fix + " before using the mooncake backend");

        Run enough = doctor(new DoctorCommand(Map.of(), limits(dir, "unlimited"), H100), "--backend", "mooncake");
        assertThat(enough.code()).as(enough.out()).isZero();
        assertThat(enough.out()).contains("memlock: unlimited soft, unlimited hard (ulimit -l; ").doesNotContain("locked-memory limit");
        Run eightMib = doctor(new DoctorCommand(Map.of(), limits(dir, "8388608"), H100), "--backend", "mooncake");
        assertThat(eightMib.code()).as("the usual 8 MiB default holds the pages\n" + eightMib.out()).isZero();
    }

    @Test
    void gpusThatCannotShareMemoryWithPeersOrOtherNodesAreNotes(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue(DoctorCommand.IMEX_CHANNELS.toFile().list() == null || DoctorCommand.IMEX_CHANNELS.toFile().list().length == 0,
                "this host has an IMEX channel");
        List<CudaProbe.Gpu> gpus = List.of(
                new CudaProbe.Gpu(0, "NVIDIA GB200", 10, 0, 186L << 30, "00000000:01:00.0", true, true, true, true),
                new CudaProbe.Gpu(1, "NVIDIA GB200", 10, 0, 186L << 30, "00000000:02:00.0", true, true, true, true));
        CudaProbe.Result host = new CudaProbe.Result("on the class path", Main.version(), ARCHS, "12.8", "not built", 12080, null, false, gpus,
                new boolean[2][2]);
        Run r = doctor(new DoctorCommand(Map.of(), limits(dir, "unlimited"), host), "--backend", "mooncake");
        assertThat(r.code()).as("notes only\n" + r.out()).isZero();
        assertThat(r.out()).contains("gpu.0.sharing: cuMemCreate yes, POSIX fd handles yes, fabric handles yes\n",
                "peer-access.cuda:0: cuda:1=no\n", "peer-access.cuda:1: cuda:0=no\n",
                "imex-channels: none (" + DoctorCommand.IMEX_CHANNELS + " absent or empty)\n");
        assertThat(r.lines("NOTE: ")).contains(
                "NOTE: some GPU pairs cannot access each other's memory (see peer-access): data between them is staged through host memory",
                "NOTE: the GPUs support fabric handles but no IMEX channel is visible: shareable buffers fall back to POSIX file descriptors,"
                        + " which reach this host's GPUs only; cross-node NVLink needs an IMEX channel (ComputeDomain / nvidia-imex)");
    }

    @Test
    void gpuThatTheBuiltKernelsDoNotCoverIsAProblemForTheCudaBackend(@TempDir Path dir) throws Exception {
        Path enough = limits(dir, "unlimited");
        CudaProbe.Result a100 = gpuHost("NVIDIA A100-SXM4-80GB", 8, 0, false, ARCHS);
        String what = "the CUDA kernels were built for sm_90,sm_100,compute_90, which do not cover cuda:0 (NVIDIA A100-SXM4-80GB,"
                + " compute capability 8.0)";
        String fix = "rebuild mooncake4j-cuda with nvcc targeting sm_80 (cuda/build-kernels.sh)";

        Run cuda = doctor(new DoctorCommand(Map.of(), enough, a100), "--backend", "mooncake");
        assertThat(cuda.code()).as(cuda.out()).isEqualTo(1);
        assertThat(cuda.out()).contains("kernels: sm_90,sm_100,compute_90 (nvcc 12.8)\n",
                "gpu.0: NVIDIA A100-SXM4-80GB, compute capability 8.0, 80 GiB, pci 00000000:18:00.0\n",
                "gpu.0.kernels: NOT covered (built for sm_90,sm_100,compute_90)\n");
        assertThat(cuda.lines("PROBLEM: ")).containsExactly("PROBLEM: " + what + " -> " + fix);

        Run cpu = doctor(new DoctorCommand(Map.of(), enough, a100));
        assertThat(cpu.code()).as(cpu.out()).isZero();
        assertThat(cpu.lines("NOTE: the CUDA kernels")).containsExactly("NOTE: " + what + "; " + fix + " before using the mooncake backend");

        Run covered = doctor(new DoctorCommand(Map.of(), enough, H100), "--backend", "mooncake");
        assertThat(covered.code()).as(covered.out()).isZero();
        assertThat(covered.out()).contains("gpu.0.kernels: covered by sm_90,sm_100,compute_90\n");

        Run notBuilt = doctor(new DoctorCommand(Map.of(), enough, gpuHost("NVIDIA H100 80GB HBM3", 9, 0, false, List.of())), "--backend", "mooncake");
        assertThat(notBuilt.code()).isEqualTo(1);
        assertThat(notBuilt.out()).contains("kernels: not built: CUDA kernels were not built (nvcc was not found when mooncake4j was built);"
                + " rebuild on a machine with nvcc (CUDA 12.4+) to use the 'mooncake' backend.\n", "gpu.0.kernels: none built\n");
        assertThat(notBuilt.lines("PROBLEM: ")).containsExactly(
                "PROBLEM: the CUDA kernels were not built into mooncake4j-cuda -> rebuild on a machine with nvcc (CUDA 12.4+)");
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
