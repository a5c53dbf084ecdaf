package org.mooncake4j.cli;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.net.ConnectException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.InterfaceAddress;
import java.net.NetworkInterface;
import java.net.NoRouteToHostException;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileStore;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;
import org.mooncake4j.cli.doctor.CudaProbe;
import org.mooncake4j.cli.doctor.Report;
import org.mooncake4j.core.internal.CpuAffinity;
import org.mooncake4j.pg.collective.GroupLayout;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.TransportChoice;
import org.mooncake4j.transfer.store.InMemoryStore;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * {@code mooncake4j doctor}: everything a bug report needs about this host, and what is wrong with
 * it. Prints sections of {@code key: value} lines (version, Java, OS, the environment variables
 * mooncake4j reads, CUDA driver and GPUs with kernel coverage and peer access, network interfaces
 * and the address peers would use, transports, /dev/shm, limits, the metadata store and the given
 * peers), then a verdict: one {@code PROBLEM: what -> what to do} line per problem, or
 * {@code OK: no problems found}. Exit code 0 without problems, 1 with, 2 for a usage error.
 *
 * <p>It starts a transfer engine (the same code a process group uses) to find the host address and
 * check that it can listen, reads the store without writing to it, and opens plain TCP connections
 * to the peers. One run per instance, on the picocli thread; the peer probes run in parallel.
 */
@Command(name = "doctor", sortOptions = false, mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = {"Check this host for what mooncake4j needs and print what a bug report should contain: version, Java, OS, "
                + "environment, CUDA driver and GPUs (compute capability, kernel coverage, peer access), network interfaces and "
                + "the address peers would use, transports, /dev/shm, limits, the metadata store, and the peers given.",
                "Ends with one 'PROBLEM: ... -> ...' line per problem found, or 'OK: no problems found'. Exit code 0 without problems, 1 with.",
                "See docs/TROUBLESHOOTING.md for every message and what to do."})
final class DoctorCommand implements Callable<Integer> {
    /**
     * The variables mooncake4j and its launcher read, in the order of the README's table, then those of
     * its dependencies: the CUDA driver's device list, and the one proxy setting of the etcd client
     * (gRPC for Java ignores http_proxy/https_proxy; it takes GRPC_PROXY_EXP or -Dhttps.proxyHost).
     */
    static final List<String> VARIABLES = List.of("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MOONCAKE_STORE",
            "MOONCAKE_STORE_HOSTED", "MASTER_ADDR", "MASTER_PORT", "MOONCAKE_TIMEOUT_MS", "MOONCAKE_TRANSPORT", "MOONCAKE_HOST_IP",
            "MOONCAKE_DEVICE_FILTER", "MOONCAKE_PGTEST_DEVICE_FILTERS", "MOONCAKE_SLOT_BYTES", "MOONCAKE_SPIN", "MOONCAKE_TOKEN",
            "MOONCAKE_EXTENSION", "MOONCAKE_RESTART_COUNT", "MOONCAKE_JOIN_TIMEOUT_MS", "CUDA_VISIBLE_DEVICES", "GRPC_PROXY_EXP");
    static final Path DEV_SHM = Path.of("/dev/shm");
    static final Path IMEX_CHANNELS = Path.of("/dev/nvidia-caps-imex-channels");
    static final Path PROC_LIMITS = Path.of("/proc/self/limits");
    /**
     * The page-locked host allocations ({@code cuMemAllocHost}) of one rank of the mooncake backend:
     * the status words of its process group's collectives ({@code CudaCollectives}) and of a CUDA
     * {@code EpBuffer}, each under a page. Each further subgroup or EpBuffer adds a page.
     */
    static final int PINNED_ALLOCATIONS_PER_RANK = 2;
    private static final String SEGMENT_PREFIX = TransferEngine.SEGMENT_KEY_PREFIX;
    private static final String GROUP_PREFIX = "mooncake4j/pg/";
    private static final int LISTED = 16;

    @Spec
    CommandSpec spec;

    @Option(names = "--store", paramLabel = "URI",
            description = "Metadata store to check: tcp://host:port or etcd://host:port/prefix (default: MOONCAKE_STORE, else MASTER_ADDR:MASTER_PORT)")
    String store;

    @Option(names = "--peers", split = ",", paramLabel = "HOST:PORT",
            description = "Hosts to open a TCP connection to, comma-separated: other nodes' stores, engines or launchers")
    List<String> peers = new ArrayList<>();

    @Option(names = "--backend", defaultValue = "mooncake-cpu", paramLabel = "NAME",
            description = "Backend to judge the host for: mooncake-cpu, or mooncake (the CUDA findings become problems) (default: ${DEFAULT-VALUE})")
    String backend;

    @Option(names = "--nproc-per-node", defaultValue = "0", paramLabel = "N",
            description = "Ranks this host will run: checks that /dev/shm holds their segments (default: only report what fits)")
    int nprocPerNode;

    @Option(names = "--max-world-size", defaultValue = "0", paramLabel = "N",
            description = "Rank slots of the group, which size each rank's segment (default: --nproc-per-node)")
    int maxWorldSize;

    @Option(names = "--timeout-ms", defaultValue = "2000", paramLabel = "MS",
            description = "Bound on each connection attempt and store call (default: ${DEFAULT-VALUE})")
    long timeoutMs;

    private final Map<String, String> env;
    private final Path limitsFile;
    private final CudaProbe.Result cudaHost;

    DoctorCommand() { this(System.getenv()); }

    /** With {@code env} in place of the process environment (tests). */
    DoctorCommand(Map<String, String> env) { this(env, PROC_LIMITS, null); }

    /**
     * With {@code env} in place of the process environment, the limits in {@code limitsFile} (the
     * format of /proc/self/limits) in place of this process's, and, when not null, {@code cudaHost} in
     * place of what the CUDA driver reports here (tests).
     */
    DoctorCommand(Map<String, String> env, Path limitsFile, CudaProbe.Result cudaHost) {
        this.env = Map.copyOf(env);
        this.limitsFile = limitsFile;
        this.cudaHost = cudaHost;
    }

    /** A peer of {@code --peers}, resolved; {@code address} is null when the name does not resolve. */
    private record Peer(String host, int port, InetAddress address, boolean local) {
        String where() { return (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + port; }
    }

    /** What opening the store found: the store, or the error (and how long either took). */
    private record StoreCheck(URI uri, String source, MetadataStore store, String error, long openNanos) {}

    @Override
    public Integer call() {
        if (timeoutMs <= 0) throw new CommandLine.ParameterException(spec.commandLine(), "--timeout-ms must be positive, got " + timeoutMs);
        if (!backend.equals("mooncake-cpu") && !backend.equals("mooncake")) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--backend must be mooncake-cpu or mooncake, got '" + backend + "'");
        }
        if (nprocPerNode < 0 || maxWorldSize < 0) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--nproc-per-node and --max-world-size must not be negative");
        }
        List<Peer> peerList = parsePeers();
        quietEngineLogs();
        Report r = new Report(spec.commandLine().getOut());
        mooncake(r);
        java(r);
        system(r);
        environment(r);
        cuda(r);
        StoreCheck sc = openStore();
        TransferEngine engine = network(r, sc, peerList);
        try {
            shm(r);
            limits(r);
            store(r, sc, peerList);
            transport(r, engine, sc, peerList);
            peers(r, peerList);
        } finally {
            if (engine != null) engine.close();
            if (sc.store() != null) sc.store().close();
        }
        return r.verdict();
    }

    // ---- sections ------------------------------------------------------------------------------

    private void mooncake(Report r) {
        r.section("mooncake4j");
        r.fact("version", Main.version());
        r.fact("installed-at", codeLocation().map(Path::toString).orElse("unknown"));
        r.fact("backend-checked", backend + (backend.equals("mooncake") ? " (CUDA findings count as problems)"
                : " (host memory; CUDA findings are informational)"));
    }

    private void java(Report r) {
        r.section("java");
        r.fact("version", Runtime.version() + " (" + System.getProperty("java.vendor") + ")");
        r.fact("home", System.getProperty("java.home"));
        r.fact("max-heap", Report.bytes(Runtime.getRuntime().maxMemory()));
        boolean nativeAccess = DoctorCommand.class.getModule().isNativeAccessEnabled();
        r.fact("native-access", nativeAccess ? "enabled" : "not enabled");
        if (!nativeAccess) {
            r.note("native access is not enabled for mooncake4j's classes: the JVM warns at the first shared-memory or CUDA call;"
                    + " run java with --enable-native-access=ALL-UNNAMED (bin/mooncake4j does)");
        }
        for (String p : List.of("http.proxyHost", "https.proxyHost", "socksProxyHost")) {
            String v = System.getProperty(p);
            if (v != null) r.fact("java-proxy." + p, v);
        }
    }

    private void system(Report r) {
        r.section("system");
        r.fact("os", System.getProperty("os.name") + " " + System.getProperty("os.version") + " (" + System.getProperty("os.arch") + ")");
        String hostname = readFile("/proc/sys/kernel/hostname").orElseGet(DoctorCommand::localHostName);
        r.fact("hostname", hostname);
        // the transfer engine compares hostname/boot id to decide whether a peer shares this host's /dev/shm
        r.fact("host-id", hostname + "/" + readFile("/proc/sys/kernel/random/boot_id").orElse("no-boot-id"));
        r.fact("cpus", CpuAffinity.processCpus());
        if (ManagementFactory.getOperatingSystemMXBean() instanceof com.sun.management.OperatingSystemMXBean os) {
            r.fact("memory", Report.bytes(os.getTotalMemorySize()) + " total, " + Report.bytes(os.getFreeMemorySize()) + " free");
        }
        String container = Files.exists(Path.of("/.dockerenv")) ? "docker (/.dockerenv)"
                : Files.exists(Path.of("/run/.containerenv")) ? "podman (/run/.containerenv)"
                : env.containsKey("KUBERNETES_SERVICE_HOST") ? "kubernetes pod" : "none detected";
        r.fact("container", container);
    }

    private void environment(Report r) {
        r.section("environment");
        int set = 0;
        for (String v : VARIABLES) {
            String value = env.get(v);
            if (value == null) continue;
            set++;
            r.fact(v, v.equals("MOONCAKE_TOKEN") ? (value.isBlank() ? "set but blank" : "set (" + value.length() + " characters, not shown)")
                    : "'" + value + "'");
        }
        if (set == 0) r.fact("variables", "none of the variables mooncake4j reads is set");
        checkPositive(r, "MOONCAKE_TIMEOUT_MS", "the group operation timeout in milliseconds (default 60000)");
        checkPositive(r, "MOONCAKE_SLOT_BYTES", "the staging bank size per peer in bytes (default 1048576)");
        checkPositive(r, "MOONCAKE_JOIN_TIMEOUT_MS", "how long a restarted rank waits to be admitted, in milliseconds");
        Integer rank = intVar(r, "RANK");
        Integer world = intVar(r, "WORLD_SIZE");
        if (rank != null && world != null && (rank < 0 || rank >= world)) {
            r.problem("RANK=" + rank + " is outside [0, WORLD_SIZE=" + world + ")", "set RANK to 0..WORLD_SIZE-1 (mooncake4j run sets both)");
        }
        String token = env.get("MOONCAKE_TOKEN");
        if (token != null && token.isBlank()) {
            r.note("MOONCAKE_TOKEN is set but blank, which means no token: connections of this process are not authenticated,"
                    + " and peers that have a token refuse them; set the same non-blank secret on every process, or unset it");
        }
    }

    private void cuda(Report r) {
        r.section("cuda");
        boolean required = backend.equals("mooncake");
        String version = Main.version();
        CudaProbe.Result c = cudaHost != null ? cudaHost : CudaProbe.probe(DoctorCommand.class.getClassLoader(),
                codeLocation().map(p -> CudaProbe.jarCandidates(p, version)).orElse(List.of()));
        if (!c.moduleFound()) {
            r.fact("module", "mooncake4j-cuda not found (not on the class path, not in cuda/target, not in ~/.m2)");
            if (required) r.problem("the mooncake4j-cuda module is not installed", "build it with mvn -pl cuda -am install on a machine with nvcc");
            return;
        }
        r.fact("module", "mooncake4j-cuda " + (c.module().equals("on the class path") ? "on the class path" : "from " + c.module()));
        if (c.kernelArchitectures().isEmpty()) {
            r.fact("kernels", "not built: " + (c.kernelsNotBuiltMessage() == null ? "no kernels.properties in the module" : c.kernelsNotBuiltMessage()));
            if (required) r.problem("the CUDA kernels were not built into mooncake4j-cuda", "rebuild on a machine with nvcc (CUDA 12.4+)");
        } else {
            r.fact("kernels", String.join(",", c.kernelArchitectures()) + (c.nvccVersion() == null ? "" : " (nvcc " + c.nvccVersion() + ")"));
        }
        if (c.driverError() != null) {
            if (c.driverMissing()) {
                r.fact("driver", "none (libcuda.so.1 not found): the mooncake-cpu backend works; the mooncake backend needs an NVIDIA driver");
            } else {
                r.fact("driver", "unusable: " + c.driverError());
            }
            r.fact("driver.message", c.driverError());
            if (required) r.problem("CUDA is unavailable: " + c.driverError(), "run on a host with an NVIDIA driver for CUDA 12.4+, or use --backend mooncake-cpu");
            return;
        }
        r.fact("driver", "CUDA " + c.driverVersion() / 1000 + "." + c.driverVersion() % 1000 / 10);
        r.fact("devices", c.gpus().size() + " (CUDA_VISIBLE_DEVICES=" + env.getOrDefault("CUDA_VISIBLE_DEVICES", "unset") + ")");
        if (c.gpus().isEmpty() && required) {
            r.problem("the NVIDIA driver sees no GPU", "check CUDA_VISIBLE_DEVICES and that the container was started with the GPUs (--gpus all)");
        }
        boolean anyFabric = false;
        for (CudaProbe.Gpu g : c.gpus()) {
            String p = "gpu." + g.ordinal();
            r.fact(p, g.name() + ", compute capability " + g.computeCapability() + ", " + Report.bytes(g.totalMemory()) + ", pci " + g.pciBusId());
            r.fact(p + ".kernels", g.covered() ? "covered by " + String.join(",", c.kernelArchitectures())
                    : c.kernelArchitectures().isEmpty() ? "none built" : "NOT covered (built for " + String.join(",", c.kernelArchitectures()) + ")");
            r.fact(p + ".sharing", "cuMemCreate " + yes(g.virtualMemory()) + ", POSIX fd handles " + yes(g.posixFdHandles())
                    + ", fabric handles " + yes(g.fabricHandles()));
            anyFabric |= g.fabricHandles();
            if (!g.covered() && !c.kernelArchitectures().isEmpty()) {
                String what = "the CUDA kernels were built for " + String.join(",", c.kernelArchitectures()) + ", which do not cover cuda:" + g.ordinal()
                        + " (" + g.name() + ", compute capability " + g.computeCapability() + ")";
                String fix = "rebuild mooncake4j-cuda with nvcc targeting sm_" + g.major() + g.minor() + " (cuda/build-kernels.sh)";
                if (required) r.problem(what, fix);
                else r.note(what + "; " + fix + " before using the mooncake backend");
            }
        }
        int n = c.gpus().size();
        boolean allPeers = true;
        for (int i = 0; i < n && n > 1; i++) {
            StringBuilder row = new StringBuilder();
            for (int j = 0; j < n; j++) {
                if (i == j) continue;
                row.append(row.isEmpty() ? "" : " ").append("cuda:").append(j).append('=').append(yes(c.peerAccess()[i][j]));
                allPeers &= c.peerAccess()[i][j];
            }
            r.fact("peer-access.cuda:" + i, row);
        }
        if (!allPeers) r.note("some GPU pairs cannot access each other's memory (see peer-access): data between them is staged through host memory");
        if (anyFabric) {
            List<String> channels = list(IMEX_CHANNELS);
            r.fact("imex-channels", channels.isEmpty() ? "none (" + IMEX_CHANNELS + " absent or empty)" : String.join(",", channels));
            if (channels.isEmpty()) {
                r.note("the GPUs support fabric handles but no IMEX channel is visible: shareable buffers fall back to POSIX file descriptors,"
                        + " which reach this host's GPUs only; cross-node NVLink needs an IMEX channel (ComputeDomain / nvidia-imex)");
            }
        }
    }

    /** Resolves the address peers would use by starting a transfer engine (and closing it at the end of the run). */
    private TransferEngine network(Report r, StoreCheck sc, List<Peer> peerList) {
        r.section("network");
        List<NetworkInterface> interfaces;
        try {
            interfaces = NetworkInterface.networkInterfaces().sorted(Comparator.comparingInt(NetworkInterface::getIndex)).toList();
        } catch (SocketException e) {
            interfaces = List.of();
            r.fact("interfaces", "cannot be listed: " + e.getMessage());
        }
        for (NetworkInterface n : interfaces) r.fact("interface." + n.getName(), describe(n));
        List<String> filter = deviceFilter();
        r.fact("device-filter", filter.isEmpty() ? "none (MOONCAKE_DEVICE_FILTER unset): any interface"
                : filter + " (" + (env.get("MOONCAKE_DEVICE_FILTER") != null ? "MOONCAKE_DEVICE_FILTER" : "MOONCAKE_PGTEST_DEVICE_FILTERS")
                + "; Mooncake.setDeviceFilter in code overrides it)");
        String ipEnv = blankToNull(env.get("MOONCAKE_HOST_IP"));
        String token = env.get("MOONCAKE_TOKEN");
        r.fact("group-token", token == null ? "none (MOONCAKE_TOKEN unset): connections are not authenticated"
                : "MOONCAKE_TOKEN: connections are authenticated");
        TransferEngine engine;
        try {
            TransferEngine.Builder b = TransferEngine.builder()
                    .store(sc.store() != null ? sc.store() : new InMemoryStore("doctor-memory:"))
                    .name("doctor-" + ProcessHandle.current().pid())
                    .hostIp(ipEnv)
                    .deviceFilter(filter)
                    .operationTimeout(Duration.ofMillis(timeoutMs))
                    .token(token == null || token.isBlank() ? null : token);
            TransportChoice t;
            try {
                t = transportChoice(null);
            } catch (RuntimeException e) {
                t = TransportChoice.AUTO; // a bad MOONCAKE_TRANSPORT is reported in the transport section
            }
            b.transport(t == null ? TransportChoice.AUTO : t);
            engine = b.start();
        } catch (RuntimeException e) {
            r.fact("host-ip", ipEnv != null ? ipEnv + " (MOONCAKE_HOST_IP)" : "none usable");
            r.fact("engine", "cannot start: " + e.getMessage());
            r.problem("a transfer engine cannot start on this host: " + e.getMessage(),
                    "set MOONCAKE_HOST_IP to an address of this machine (ip -4 addr), or fix MOONCAKE_DEVICE_FILTER, as the message says");
            return null;
        }
        String ip = engine.hostIp();
        InetAddress address = resolve(ip);
        String nic = address == null ? "unknown" : interfaceOf(address);
        String source = ipEnv != null ? "MOONCAKE_HOST_IP"
                : address != null && address.isLoopbackAddress() ? "no up interface " + (filter.isEmpty() ? "" : "of the device filter ") + "has a non-loopback IPv4 address"
                : "first non-loopback IPv4 address of an up interface" + (filter.isEmpty() ? "" : " in the device filter");
        r.fact("host-ip", ip + " (" + source + "; interface " + nic + ")");
        r.fact("engine", "listens on " + ip + ":" + engine.port() + " (a test engine, closed at the end of this run)");
        boolean loopback = address != null && address.isLoopbackAddress();
        List<Peer> remote = peerList.stream().filter(p -> p.address() != null && !p.local()).toList();
        if (loopback && !remote.isEmpty()) {
            r.problem("the host address peers would use is " + ip + " (loopback), but peer " + remote.getFirst().where()
                    + (remote.size() > 1 ? " and " + (remote.size() - 1) + " more are" : " is") + " on another host: they cannot reach this process",
                    "set MOONCAKE_HOST_IP (or Mooncake.setHostIp) to this host's address on the network the peers share");
        } else if (loopback) {
            r.note("the host address is " + ip + " (loopback): only processes on this host can reach this one;"
                    + " set MOONCAKE_HOST_IP for a group that spans hosts");
        }
        return engine;
    }

    private void shm(Report r) {
        r.section("shm");
        long slot = slotBytes();
        r.fact("slot-bytes", Report.bytes(slot) + (env.get("MOONCAKE_SLOT_BYTES") == null ? " (default; MOONCAKE_SLOT_BYTES unset)" : " (MOONCAKE_SLOT_BYTES)"));
        long free = -1;
        try {
            FileStore fs = Files.getFileStore(DEV_SHM);
            free = Files.isWritable(DEV_SHM) ? fs.getUsableSpace() : -1;
            r.fact("/dev/shm", Report.bytes(fs.getTotalSpace()) + " total, " + Report.bytes(fs.getUsableSpace()) + " free (" + fs.type() + ")"
                    + (Files.isWritable(DEV_SHM) ? "" : ", NOT writable"));
        } catch (IOException e) {
            r.fact("/dev/shm", "absent: segments go to java.io.tmpdir (" + System.getProperty("java.io.tmpdir") + "), possibly disk-backed");
        }
        int fits = 0;
        while (fits < 4096 && (long) (fits + 1) * new GroupLayout(fits + 1, slot).segmentBytes() <= free) fits++;
        if (free >= 0) {
            r.fact("fits", "a group of up to " + fits + " ranks on this host (each rank's segment: 4 x ranks x slot bytes, "
                    + Report.bytes(new GroupLayout(Math.max(1, fits), slot).segmentBytes()) + " at " + Math.max(1, fits) + " ranks)");
        }
        List<String> files = list(DEV_SHM).stream().filter(f -> f.startsWith("mooncake4j-")).toList();
        long used = files.stream().mapToLong(f -> size(DEV_SHM.resolve(f))).sum();
        r.fact("segment-files", files.size() + " mooncake4j segment files, " + Report.bytes(used));
        if (nprocPerNode > 0) {
            int slots = Math.max(nprocPerNode, maxWorldSize);
            long need = nprocPerNode * new GroupLayout(slots, slot).segmentBytes();
            r.fact("needed", Report.bytes(need) + " for " + nprocPerNode + " ranks of a group of " + slots + " slots");
            if (need > free) {
                Path tmp = Path.of(System.getProperty("java.io.tmpdir"));
                long tmpFree = tmp.toFile().getUsableSpace();
                String what = "/dev/shm " + (free < 0 ? "is not usable" : "has " + Report.bytes(free) + " free") + " but " + nprocPerNode
                        + " ranks of a group of " + slots + " slots need " + Report.bytes(need);
                long mib = (need + (1 << 20) - 1) >> 20;
                String fix = "enlarge /dev/shm to at least " + Report.bytes(need) + " (docker run --shm-size=" + mib + "m, or mount -o remount,size="
                        + mib + "m /dev/shm), or lower MOONCAKE_SLOT_BYTES";
                if (tmpFree >= need) r.note(what + ": segments go to " + tmp + " instead, which may be disk-backed and slower; " + fix);
                else r.problem(what + ", and " + tmp + " has only " + Report.bytes(tmpFree) + ": registering the segments fails", fix);
            }
        }
    }

    private void limits(Report r) {
        r.section("limits");
        Map<String, Limit> limits = procLimits(limitsFile);
        Limit memlock = limits.get("Max locked memory");
        long need = PINNED_ALLOCATIONS_PER_RANK * pageBytes();
        r.fact("memlock", (memlock == null ? "unknown" : memlock.text()) + " (ulimit -l; the mooncake backend page-locks "
                + Report.bytes(need) + " of host memory per rank, mooncake-cpu none)");
        if (memlock != null && memlock.soft() < need) {
            String what = "the locked-memory limit (ulimit -l) is " + Report.bytes(memlock.soft()) + ", below the " + Report.bytes(need)
                    + " of page-locked host memory each rank of the mooncake backend allocates (cuMemAllocHost: a page for the status words"
                    + " of its collectives and one for a CUDA EpBuffer; each further subgroup or EpBuffer adds a page)";
            String fix = "raise it for the job's processes: ulimit -l unlimited (the hard limit here is "
                    + (memlock.hard() == Long.MAX_VALUE ? "unlimited" : Report.bytes(memlock.hard())) + "; root raises that), or"
                    + " '* soft memlock unlimited' and '* hard memlock unlimited' in /etc/security/limits.conf, or docker run --ulimit memlock=-1";
            if (backend.equals("mooncake")) r.problem(what, fix);
            else r.note(what + "; " + fix + " before using the mooncake backend");
        }
        Limit files = limits.get("Max open files");
        r.fact("open-files", (files == null ? "unknown" : files.text()) + " (ulimit -n; each peer takes a few sockets)");
    }

    private void store(Report r, StoreCheck sc, List<Peer> peerList) {
        r.section("store");
        if (sc.uri() == null) {
            r.fact("store", sc.error() != null ? "invalid: " + sc.error() : "none given (--store, MOONCAKE_STORE, or MASTER_ADDR and MASTER_PORT)");
            if (sc.error() != null) r.problem("the store URI is invalid: " + sc.error(), "use tcp://host:port or etcd://host:port/prefix");
            return;
        }
        r.fact("store", sc.uri() + " (" + sc.source() + ")");
        InetAddress storeHost = sc.uri().getHost() == null ? null : resolve(sc.uri().getHost());
        if (sc.store() == null) {
            r.fact("reachable", "no");
            r.fact("error", sc.error());
            r.problem("the metadata store " + sc.uri() + " is unreachable: " + sc.error(),
                    "start the store (mooncake4j run hosts one; rank 0 hosts it when MASTER_ADDR/MASTER_PORT are set) on an address"
                            + " this host can reach, or correct --store/MOONCAKE_STORE");
        } else {
            MetadataStore s = sc.store();
            long[] rtt = new long[5];
            try {
                for (int i = 0; i < rtt.length; i++) {
                    long t0 = System.nanoTime();
                    s.get("mooncake4j/doctor/probe");
                    rtt[i] = System.nanoTime() - t0;
                }
                Arrays.sort(rtt);
                r.fact("reachable", "yes (connected in " + Report.millis(sc.openNanos()) + ")");
                r.fact("latency", "get round trip " + Report.millis(rtt[0]) + " min, " + Report.millis(rtt[rtt.length / 2]) + " median of " + rtt.length);
                List<String> segments = s.keys(SEGMENT_PREFIX);
                r.fact("segments", segments.size() + " registered");
                List<String> groups = s.keys(GROUP_PREFIX).stream().filter(k -> k.endsWith("/state")).toList();
                for (String k : groups.subList(0, Math.min(groups.size(), LISTED))) {
                    String group = k.substring(GROUP_PREFIX.length(), k.length() - "/state".length());
                    r.fact("group." + group, s.get(k).map(v -> new String(v, StandardCharsets.UTF_8)).orElse("(gone)"));
                }
                if (groups.size() > LISTED) r.fact("groups", groups.size() + " in all, " + LISTED + " shown");
            } catch (RuntimeException e) {
                r.fact("reachable", "connected, but a read failed: " + e.getMessage());
                r.problem("the metadata store " + sc.uri() + " fails reads: " + e.getMessage(), "check the store process and its log");
            }
        }
        List<Peer> remote = peerList.stream().filter(p -> p.address() != null && !p.local()).toList();
        if (storeHost != null && storeHost.isLoopbackAddress() && !remote.isEmpty()) {
            r.problem("the store address " + sc.uri().getHost() + " is loopback, but peer " + remote.getFirst().where()
                    + " is on another host: processes there cannot reach this store",
                    "give every process a store address on the shared network (e.g. tcp://<this-host-ip>:port, MASTER_ADDR=<this-host-ip>);"
                            + " etcd must listen on it too (--listen-client-urls http://0.0.0.0:2379)");
        }
    }

    private void transport(Report r, TransferEngine engine, StoreCheck sc, List<Peer> peerList) {
        r.section("transport");
        TransportChoice t;
        try {
            t = transportChoice(r);
        } catch (RuntimeException e) {
            return; // reported as a problem by transportChoice
        }
        String source = env.get("MOONCAKE_TRANSPORT") == null ? "MOONCAKE_TRANSPORT unset" : "MOONCAKE_TRANSPORT=" + env.get("MOONCAKE_TRANSPORT");
        String mode = t == null ? "auto" : t.name().toLowerCase(Locale.ROOT);
        r.fact("transport", mode + " (" + source + "): " + switch (mode) {
            case "shm" -> "every peer must be on this host and share its /dev/shm";
            case "tcp" -> "every peer over TCP, even on this host";
            default -> "shm to peers on this host whose segment file is visible here, tcp to the others";
        });
        String from = engine == null ? "this host" : engine.hostIp() + " (interface " + Optional.ofNullable(resolve(engine.hostIp()))
                .map(DoctorCommand::interfaceOf).orElse("unknown") + ")";
        for (Peer p : peerList) {
            if (p.address() == null) continue;
            String route;
            if (mode.equals("tcp")) route = "tcp from " + from + ": forced by " + source;
            else if (p.local()) route = "shm (a write is one memcpy) with a tcp connection to detect its death: the peer is on this host";
            else if (mode.equals("shm")) {
                route = "none: shm is forced but the peer is on another host";
                r.problem("MOONCAKE_TRANSPORT=shm but peer " + p.where() + " is on another host: shm only reaches peers on this host",
                        "unset MOONCAKE_TRANSPORT (auto) or set it to tcp");
            } else route = "tcp from " + from + ": the peer is on another host";
            r.fact("peer." + p.where(), route);
        }
        if (engine != null && sc.store() != null) {
            try {
                List<String> names = sc.store().keys(SEGMENT_PREFIX);
                for (String k : names.subList(0, Math.min(names.size(), LISTED))) {
                    String name = k.substring(SEGMENT_PREFIX.length());
                    r.fact("segment." + name, engine.preferredTransport(name));
                }
                if (names.size() > LISTED) r.fact("segments", names.size() + " in all, " + LISTED + " shown");
            } catch (RuntimeException e) {
                r.fact("segments", "cannot be listed: " + e.getMessage());
            }
        }
    }

    private void peers(Report r, List<Peer> peerList) {
        r.section("peers");
        if (peerList.isEmpty()) {
            r.fact("peers", "none given (--peers host:port,...)");
            return;
        }
        List<Future<Probe>> results = new ArrayList<>();
        try (ExecutorService pool = Executors.newVirtualThreadPerTaskExecutor()) {
            for (Peer p : peerList) results.add(pool.submit(() -> probe(p)));
        }
        for (int i = 0; i < peerList.size(); i++) {
            Probe p;
            try {
                p = results.get(i).get();
            } catch (Exception e) {
                p = new Probe("probe failed: " + e, "peer " + peerList.get(i).where() + " could not be probed: " + e, null);
            }
            r.fact("peer." + peerList.get(i).where(), p.line());
            if (p.problem() != null) r.problem(p.problem(), p.fix());
        }
    }

    /** What one connection attempt found; {@code problem} is null when it connected. */
    private record Probe(String line, String problem, String fix) {}

    /** One TCP connection attempt to {@code p}, bounded by the timeout. */
    private Probe probe(Peer p) {
        String where = p.where();
        if (p.address() == null) {
            return new Probe("unknown host: " + p.host() + " does not resolve", "peer " + where + ": unknown host " + p.host(),
                    "use an IP address or a name every host resolves (DNS or /etc/hosts)");
        }
        long t0 = System.nanoTime();
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(p.address(), p.port()), (int) Math.min(Integer.MAX_VALUE, timeoutMs));
            return new Probe("connected in " + Report.millis(System.nanoTime() - t0) + " (" + p.address().getHostAddress() + ", "
                    + (p.local() ? "this host" : "another host") + ")", null, null);
        } catch (ConnectException e) {
            return new Probe("refused: nothing listens on " + where + " (answered in " + Report.millis(System.nanoTime() - t0) + ")",
                    "peer " + where + " refused the connection: nothing listens on port " + p.port() + " there",
                    "start the process that should listen on " + where + ", check the port, or open the firewall (a REJECT rule also refuses)");
        } catch (SocketTimeoutException e) {
            return new Probe("timeout: no answer from " + where + " within " + timeoutMs + " ms",
                    "peer " + where + " did not answer within " + timeoutMs + " ms",
                    "check the address, that the host is up, and the firewalls between the hosts (they drop packets to port " + p.port() + ")");
        } catch (NoRouteToHostException e) {
            return new Probe("unreachable: no route to " + where + " (" + e.getMessage() + ")", "peer " + where + " is unreachable: no route to host",
                    "check the address and the routes (ip route get " + p.address().getHostAddress() + ")");
        } catch (IOException e) {
            return new Probe("failed: " + where + ": " + e.getMessage(), "peer " + where + " cannot be reached: " + e.getMessage(),
                    "check the address, the routes (ip route get " + p.address().getHostAddress() + ") and the firewalls");
        }
    }

    // ---- inputs --------------------------------------------------------------------------------

    private List<Peer> parsePeers() {
        List<Peer> out = new ArrayList<>();
        for (String raw : peers) {
            String s = raw.trim();
            if (s.isEmpty()) continue;
            int colon = s.lastIndexOf(':');
            if (colon <= 0 || colon == s.length() - 1) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--peers: '" + s + "' is not HOST:PORT");
            }
            String host = s.substring(0, colon);
            if (host.startsWith("[") && host.endsWith("]")) host = host.substring(1, host.length() - 1);
            int port;
            try {
                port = Integer.parseInt(s.substring(colon + 1));
            } catch (NumberFormatException e) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--peers: '" + s + "' has no port number after the last ':'");
            }
            if (port < 1 || port > 65535) throw new CommandLine.ParameterException(spec.commandLine(), "--peers: port " + port + " of '" + s + "' is not 1..65535");
            InetAddress a = resolve(host);
            out.add(new Peer(host, port, a, a != null && isLocal(a)));
        }
        return out;
    }

    private StoreCheck openStore() {
        String source;
        String text;
        if (store != null) {
            text = store;
            source = "--store";
        } else if (env.get("MOONCAKE_STORE") != null) {
            text = env.get("MOONCAKE_STORE");
            source = "MOONCAKE_STORE";
        } else if (env.get("MASTER_ADDR") != null) {
            text = "tcp://" + env.get("MASTER_ADDR") + ":" + env.getOrDefault("MASTER_PORT", "29500");
            source = "MASTER_ADDR:MASTER_PORT";
        } else {
            return new StoreCheck(null, null, null, null, 0);
        }
        URI uri;
        try {
            uri = new URI(text.trim());
        } catch (URISyntaxException e) {
            return new StoreCheck(null, source, null, "'" + text + "' (" + source + "): " + e.getMessage(), 0);
        }
        String token = env.get("MOONCAKE_TOKEN");
        long t0 = System.nanoTime();
        try {
            MetadataStore s = MetadataStores.open(uri, Duration.ofMillis(timeoutMs), token == null || token.isBlank() ? null : token);
            return new StoreCheck(uri, source, s, null, System.nanoTime() - t0);
        } catch (RuntimeException e) {
            return new StoreCheck(uri, source, null, e.getMessage() == null ? e.toString() : e.getMessage(), System.nanoTime() - t0);
        }
    }

    /** MOONCAKE_TRANSPORT parsed; null when unset (auto). With a report, a bad value is a problem, and the exception is rethrown. */
    private TransportChoice transportChoice(Report r) {
        String v = env.get("MOONCAKE_TRANSPORT");
        if (v == null || v.isBlank()) return null;
        try {
            return TransportChoice.parse(v, "MOONCAKE_TRANSPORT");
        } catch (RuntimeException e) {
            if (r != null) {
                r.fact("transport", "invalid: " + e.getMessage());
                r.problem(e.getMessage(), "set MOONCAKE_TRANSPORT to auto, shm or tcp, or unset it");
            }
            throw e;
        }
    }

    /** The device filter a process group would use: MOONCAKE_DEVICE_FILTER, else MOONCAKE_PGTEST_DEVICE_FILTERS. */
    private List<String> deviceFilter() {
        String v = env.get("MOONCAKE_DEVICE_FILTER");
        if (v == null) v = env.get("MOONCAKE_PGTEST_DEVICE_FILTERS");
        return v == null || v.isBlank() ? List.of() : List.of(v.trim().split("\\s*,\\s*"));
    }

    /** The staging bank size a process group would use (MOONCAKE_SLOT_BYTES, rounded as the group rounds it). */
    private long slotBytes() {
        long v = 1L << 20;
        try {
            if (env.get("MOONCAKE_SLOT_BYTES") != null) v = Long.parseLong(env.get("MOONCAKE_SLOT_BYTES").trim());
        } catch (NumberFormatException e) {
            // reported in the environment section
        }
        return Math.max(8192, v / 4096 * 4096);
    }

    private void checkPositive(Report r, String name, String meaning) {
        String v = env.get(name);
        if (v == null) return;
        try {
            if (Long.parseLong(v.trim()) > 0) return;
        } catch (NumberFormatException e) {
            // fall through
        }
        r.problem(name + "='" + v + "' is not a positive number: processes fail at startup", "set it to " + meaning + ", or unset it");
    }

    private Integer intVar(Report r, String name) {
        String v = env.get(name);
        if (v == null) return null;
        try {
            return Integer.parseInt(v.trim());
        } catch (NumberFormatException e) {
            r.problem(name + "='" + v + "' is not a number", "unset it, or start the job with mooncake4j run, which sets it");
            return null;
        }
    }

    // ---- helpers -------------------------------------------------------------------------------

    /** slf4j-simple logs the test engine's start at INFO; the doctor reports the same facts itself. */
    private static void quietEngineLogs() {
        String key = "org.slf4j.simpleLogger.log.org.mooncake4j.transfer";
        if (System.getProperty(key) == null) System.setProperty(key, "warn");
    }

    private static Optional<Path> codeLocation() {
        try {
            return Optional.of(Path.of(Main.class.getProtectionDomain().getCodeSource().getLocation().toURI()));
        } catch (URISyntaxException | RuntimeException e) {
            return Optional.empty();
        }
    }

    private static String describe(NetworkInterface n) {
        try {
            List<String> parts = new ArrayList<>();
            parts.add(n.isUp() ? "up" : "down");
            if (n.isLoopback()) parts.add("loopback");
            for (InterfaceAddress a : n.getInterfaceAddresses()) {
                parts.add(a.getAddress().getHostAddress().replaceAll("%.*$", "") + "/" + a.getNetworkPrefixLength());
            }
            if (n.isUp()) parts.add("mtu " + n.getMTU());
            return String.join(", ", parts);
        } catch (SocketException e) {
            return "unknown (" + e.getMessage() + ")";
        }
    }

    private static boolean isLocal(InetAddress a) {
        if (a.isLoopbackAddress() || a.isAnyLocalAddress()) return true;
        try {
            return NetworkInterface.getByInetAddress(a) != null;
        } catch (SocketException e) {
            return false;
        }
    }

    private static String interfaceOf(InetAddress a) {
        try {
            NetworkInterface n = NetworkInterface.getByInetAddress(a);
            return n == null ? "no local interface holds " + a.getHostAddress() : n.getName();
        } catch (SocketException e) {
            return "unknown";
        }
    }

    private static InetAddress resolve(String host) {
        try {
            return InetAddress.getByName(host);
        } catch (UnknownHostException | SecurityException e) {
            return null;
        }
    }

    private static String localHostName() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "unknown";
        }
    }

    private static Optional<String> readFile(String file) {
        try {
            String s = String.join("\n", Files.readAllLines(Path.of(file))).trim();
            return s.isEmpty() ? Optional.empty() : Optional.of(s);
        } catch (IOException | RuntimeException e) {
            return Optional.empty();
        }
    }

    /**
     * One limit of /proc/self/limits: soft and hard, {@link Long#MAX_VALUE} for unlimited, and how
     * to print them ("8 MiB soft, 8 MiB hard").
     */
    record Limit(long soft, long hard, String text) {}

    /** The limits of {@code file} (the format of /proc/self/limits) by name ("Max locked memory"); empty when it cannot be read. */
    static Map<String, Limit> procLimits(Path file) {
        Map<String, Limit> out = new LinkedHashMap<>();
        try {
            for (String line : Files.readAllLines(file)) {
                if (line.length() < 26 || line.startsWith("Limit")) continue;
                String name = line.substring(0, 26).trim();
                String[] f = line.substring(26).trim().split("\\s+");
                if (f.length < 2) continue;
                boolean bytes = f.length > 2 && f[2].equals("bytes");
                out.put(name, new Limit(limitValue(f[0]), limitValue(f[1]), limit(f[0], bytes) + " soft, " + limit(f[1], bytes) + " hard"));
            }
        } catch (IOException | RuntimeException e) {
            // not Linux, or /proc is not mounted: reported as unknown
        }
        return out;
    }

    private static long limitValue(String v) {
        if (v.equals("unlimited")) return Long.MAX_VALUE;
        try {
            return Long.parseLong(v);
        } catch (NumberFormatException e) {
            return Long.MAX_VALUE; // unknown: judged as no limit
        }
    }

    private static String limit(String v, boolean bytes) {
        if (v.equals("unlimited")) return v;
        try {
            return bytes ? Report.bytes(Long.parseLong(v)) : v;
        } catch (NumberFormatException e) {
            return v;
        }
    }

    /** The page size of this host (KernelPageSize of the first mapping in /proc/self/smaps); 4 KiB when it cannot be read. */
    static long pageBytes() {
        try (Stream<String> lines = Files.lines(Path.of("/proc/self/smaps"))) {
            Optional<String> kb = lines.filter(l -> l.startsWith("KernelPageSize:")).findFirst();
            if (kb.isPresent()) {
                String[] f = kb.get().substring("KernelPageSize:".length()).trim().split("\\s+");
                if (f.length == 2 && f[1].equals("kB")) return Long.parseLong(f[0]) * 1024;
            }
        } catch (IOException | RuntimeException e) {
            // not Linux: the common page size
        }
        return 4096;
    }

    private static List<String> list(Path dir) {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        } catch (IOException | RuntimeException e) {
            return List.of();
        }
    }

    private static long size(Path p) {
        try {
            return Files.size(p);
        } catch (IOException e) {
            return 0;
        }
    }

    private static String blankToNull(String s) { return s == null || s.isBlank() ? null : s.trim(); }

    private static String yes(boolean b) { return b ? "yes" : "no"; }
}
