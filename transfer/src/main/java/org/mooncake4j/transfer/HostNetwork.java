package org.mooncake4j.transfer;

import java.io.IOException;
import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.NetworkInterface;
import java.net.SocketException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.List;
import java.util.Optional;

/** This host as peers see it: its identity (to decide shm versus tcp) and the address the engine advertises. */
final class HostNetwork {
    static final String HOST_IP_ENV = "MOONCAKE_HOST_IP";

    private HostNetwork() {}

    /**
     * Hostname plus the kernel's boot id: two processes with the same value share a kernel and, unless
     * containers separate them, /dev/shm (whether the file is visible is checked separately).
     */
    static String hostId() {
        return hostname() + "/" + read("/proc/sys/kernel/random/boot_id").orElse("no-boot-id");
    }

    private static String hostname() {
        Optional<String> h = read("/proc/sys/kernel/hostname");
        if (h.isPresent()) return h.get();
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "unknown-host";
        }
    }

    /** The trimmed text of a /proc file; read by lines because {@code Files.readString} can return only the first byte of one. */
    private static Optional<String> read(String file) {
        try {
            String s = String.join("\n", Files.readAllLines(Path.of(file))).trim();
            return s.isEmpty() ? Optional.empty() : Optional.of(s);
        } catch (IOException e) {
            return Optional.empty();
        }
    }

    /**
     * The first non-loopback IPv4 address of an up interface (by interface index), among the
     * interfaces named in {@code deviceFilter} when it is not empty; 127.0.0.1 when there is none and
     * no filter was given. A filter that matches no such interface is an error naming what exists.
     */
    static String defaultHostIp(List<String> deviceFilter) {
        List<NetworkInterface> up;
        try {
            up = NetworkInterface.networkInterfaces().filter(HostNetwork::up)
                    .sorted(Comparator.comparingInt(NetworkInterface::getIndex)).toList();
        } catch (SocketException e) {
            up = List.of();
        }
        for (NetworkInterface n : up) {
            if (!deviceFilter.isEmpty() && !deviceFilter.contains(n.getName())) continue;
            Optional<String> ip = ipv4(n);
            if (ip.isPresent()) return ip.get();
        }
        if (deviceFilter.isEmpty()) return "127.0.0.1";
        StringBuilder found = new StringBuilder();
        for (NetworkInterface n : up) {
            found.append(found.isEmpty() ? "" : ", ").append(n.getName()).append(' ').append(ipv4(n).orElse("(no IPv4)"));
        }
        throw new TransferException("No matched device found: no interface named in the device filter " + deviceFilter
                + " is up with an IPv4 address (up here: " + (found.isEmpty() ? "none besides loopback" : found) + ")."
                + " Fix the filter (Mooncake.setDeviceFilter) or set the host IP with Mooncake.setHostIp/MOONCAKE_HOST_IP.");
    }

    private static Optional<String> ipv4(NetworkInterface n) {
        return n.inetAddresses().filter(a -> a instanceof Inet4Address && !a.isLoopbackAddress()).map(InetAddress::getHostAddress).findFirst();
    }

    private static boolean up(NetworkInterface n) {
        try {
            return n.isUp() && !n.isLoopback();
        } catch (SocketException e) {
            return false;
        }
    }

    /** The name of the interface that holds {@code address}, or a phrase saying none does. */
    static String interfaceOf(InetAddress address) {
        try {
            NetworkInterface n = NetworkInterface.getByInetAddress(address);
            return n == null ? "no local interface" : n.getName();
        } catch (SocketException e) {
            return "unknown interface";
        }
    }
}
