package org.mooncake4j.pg.chaos;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * Cuts one worker off the network and heals it again, for the NETCUT fault.
 *
 * <p>First choice: the victim runs in a network namespace of its own, joined to the host by a veth
 * pair on a private /30 ({@code 10.200.X.0/30}: host side .1, victim side .2, nothing else routed);
 * the other workers and the store listen on the host side's address. {@link #cut()} takes the
 * victim's end of the pair down ({@code ip link set ... down}): its packets go nowhere and nothing
 * reaches it, while the others still reach each other through the host side's local address.
 *
 * <p>Fallback when namespaces cannot be made (not root, no CAP_SYS_ADMIN): the victim is moved into a
 * cgroup of its own and an iptables rule drops every packet it sends ({@code -m cgroup --path});
 * its peers then see no answers and no acknowledgements, as over a cut link. When neither works,
 * {@link #open()} says why, and the test skips NETCUT.
 *
 * <p>Not thread-safe; one test drives it. {@link #close()} removes everything it created; a
 * namespace left by a killed test JVM is removed by the next {@link #open()}.
 */
final class NetworkCut implements AutoCloseable {
    private static final String NS_PREFIX = "mc4j-chaos-";

    /** The outcome of {@link #open()}: a usable cut, or why there is none. */
    record Availability(NetworkCut cut, String reason) {}

    private final boolean namespace;
    private final String name;
    private final String hostSide;
    private final String victimSide;
    private final String survivorIp;
    private final String victimIp;
    /** The cgroup v2 mount point (fallback only). */
    private final Path cgroupRoot;
    private boolean cutNow;

    private NetworkCut(boolean namespace, String name, String hostSide, String victimSide, String survivorIp, String victimIp, Path cgroupRoot) {
        this.namespace = namespace;
        this.name = name;
        this.hostSide = hostSide;
        this.victimSide = victimSide;
        this.survivorIp = survivorIp;
        this.victimIp = victimIp;
        this.cgroupRoot = cgroupRoot;
    }

    /**
     * Sets up a namespace (or the firewall fallback) for this JVM; never throws. {@code -Dchaos.netcut=firewall}
     * skips the namespace, to exercise the fallback where namespaces work.
     */
    static Availability open() {
        long pid = ProcessHandle.current().pid();
        String nsFailure = "skipped by -Dchaos.netcut=firewall";
        if (!"firewall".equals(System.getProperty("chaos.netcut"))) {
            try {
                removeStaleNamespaces();
                return new Availability(openNamespace(pid), null);
            } catch (IOException | RuntimeException e) {
                nsFailure = e.getMessage();
            }
        }
        try {
            return new Availability(openFirewall(pid), null);
        } catch (IOException | RuntimeException e) {
            return new Availability(null, "no way to cut a worker off the network here: network namespaces failed (" + nsFailure
                    + ") and the iptables/cgroup fallback failed (" + e.getMessage() + ")");
        }
    }

    private static NetworkCut openNamespace(long pid) throws IOException {
        String ns = NS_PREFIX + pid;
        String host = "mc4jh" + pid % 100_000, victim = "mc4jv" + pid % 100_000;
        String used = run(List.of("ip", "-4", "-o", "addr", "show"), true);
        int octet = (int) (pid % 250);
        for (int k = 0; k < 250 && used.contains("10.200." + octet + "."); k++) octet = (octet + 1) % 250;
        String hostIp = "10.200." + octet + ".1", victimIp = "10.200." + octet + ".2";
        NetworkCut c = new NetworkCut(true, ns, host, victim, hostIp, victimIp, null);
        try {
            run(List.of("ip", "netns", "add", ns), true);
            run(List.of("ip", "link", "add", host, "type", "veth", "peer", "name", victim), true);
            run(List.of("ip", "link", "set", victim, "netns", ns), true);
            run(List.of("ip", "addr", "add", hostIp + "/30", "dev", host), true);
            run(List.of("ip", "link", "set", host, "up"), true);
            run(inNamespace(ns, "ip", "addr", "add", victimIp + "/30", "dev", victim), true);
            run(inNamespace(ns, "ip", "link", "set", victim, "up"), true);
            run(inNamespace(ns, "ip", "link", "set", "lo", "up"), true);
            c.checkReachable();
            return c;
        } catch (IOException | RuntimeException e) {
            c.close();
            throw e;
        }
    }

    private static NetworkCut openFirewall(long pid) throws IOException {
        String cg = NS_PREFIX + pid;
        run(List.of("iptables", "-w", "-L", "OUTPUT", "-n"), true);
        Path root = cgroup2Root();
        Files.createDirectories(root.resolve(cg));
        NetworkCut c = new NetworkCut(false, cg, null, null, "127.0.0.1", "127.0.0.1", root);
        try {
            run(c.dropRule("-I"), true); // proves the cgroup match works here
            run(c.dropRule("-D"), true);
            return c;
        } catch (IOException | RuntimeException e) {
            c.close();
            throw e;
        }
    }

    /** Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts). */
    private static Path cgroup2Root() throws IOException {
        for (String line : Files.readAllLines(Path.of("/proc/mounts"))) {
            String[] f = line.split(" ");
            if (f.length > 2 && f[2].equals("cgroup2")) return Path.of(f[1]);
        }
        throw new IOException("no cgroup v2 hierarchy is mounted (see /proc/mounts)");
    }

    /** Removes namespaces (and their veth pairs) left by test JVMs that no longer run. */
    private static void removeStaleNamespaces() throws IOException {
        for (String line : run(List.of("ip", "netns", "list"), true).split("\n")) {
            String ns = line.trim().split(" ")[0];
            if (!ns.startsWith(NS_PREFIX)) continue;
            long owner;
            try {
                owner = Long.parseLong(ns.substring(NS_PREFIX.length()));
            } catch (NumberFormatException e) {
                continue;
            }
            if (ProcessHandle.of(owner).map(ProcessHandle::isAlive).orElse(false)) continue;
            run(List.of("ip", "link", "del", "mc4jh" + owner % 100_000), false);
            run(List.of("ip", "netns", "del", ns), false);
        }
    }

    /** From inside the namespace, connects to a socket on the host side's address (bash's /dev/tcp). */
    private void checkReachable() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getByName(survivorIp))) {
            String probe = "exec 3<>/dev/tcp/" + survivorIp + "/" + s.getLocalPort();
            run(inNamespace(name, "timeout", "5", "bash", "-c", probe), true);
        }
    }

    private static List<String> inNamespace(String ns, String... cmd) {
        List<String> l = new ArrayList<>(List.of("ip", "netns", "exec", ns));
        l.addAll(List.of(cmd));
        return l;
    }

    private List<String> dropRule(String action) {
        return List.of("iptables", "-w", action, "OUTPUT", "-m", "cgroup", "--path", name, "-j", "DROP");
    }

    /** How the cut is made, for the test's output. */
    String describe() {
        return namespace ? "network namespace " + name + " (veth " + hostSide + "/" + victimSide + ", " + survivorIp + " <-> " + victimIp
                + "), cut by taking " + victimSide + " down" : "cgroup " + cgroupRoot.resolve(name) + " with an iptables OUTPUT DROP rule";
    }

    /** The address the store and the other workers listen on. */
    String survivorIp() { return survivorIp; }

    /** The address the victim advertises. */
    String victimIp() { return victimIp; }

    /** What to put before the victim's command line. */
    List<String> victimPrefix() { return namespace ? List.of("ip", "netns", "exec", name) : List.of(); }

    /** Puts a started victim under the cut (the fallback's cgroup; nothing for a namespace). */
    void attachVictim(long pid) throws IOException {
        if (!namespace) Files.writeString(cgroupRoot.resolve(name).resolve("cgroup.procs"), Long.toString(pid));
    }

    void cut() throws IOException {
        run(namespace ? inNamespace(name, "ip", "link", "set", victimSide, "down") : dropRule("-I"), true);
        cutNow = true;
    }

    void heal() throws IOException {
        if (!cutNow) return;
        run(namespace ? inNamespace(name, "ip", "link", "set", victimSide, "up") : dropRule("-D"), true);
        cutNow = false;
    }

    @Override
    public void close() {
        try {
            heal();
        } catch (IOException | RuntimeException ignored) {
            // removed below with the namespace or the cgroup anyway
        }
        try {
            if (namespace) {
                run(List.of("ip", "link", "del", hostSide), false);
                run(List.of("ip", "netns", "del", name), false);
            } else {
                Files.deleteIfExists(cgroupRoot.resolve(name));
            }
        } catch (IOException | RuntimeException ignored) {
            // best effort: a stale namespace is removed by the next open()
        }
    }

    /** Runs a command with a 10 s bound; its output, or an IOException with it when {@code check} and it failed. */
    private static String run(List<String> cmd, boolean check) throws IOException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            boolean done = p.waitFor(10, TimeUnit.SECONDS);
            if (!done) p.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
            if (check && (!done || p.exitValue() != 0)) {
                throw new IOException("'" + String.join(" ", cmd) + "' " + (done ? "exited " + p.exitValue() : "timed out")
                        + (out.isEmpty() ? "" : ": " + out));
            }
            return out;
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
            throw new IOException("interrupted running " + String.join(" ", cmd), e);
        }
    }
}
