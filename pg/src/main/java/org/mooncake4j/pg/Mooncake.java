package org.mooncake4j.pg;

import java.util.List;
import org.mooncake4j.transfer.TransferEngine;

/**
 * Process-wide settings, the seeds' {@code pg.set_host_ip}, {@code pg.set_device_filter} and
 * {@code pg.set_transfer_engine}. Call them before the first {@link ProcessGroup#init}; later calls
 * affect only groups created afterwards (and never an engine already started). Thread-safe.
 */
public final class Mooncake {
    private static volatile String hostIp;
    private static volatile List<String> deviceFilter = List.of();
    private static TransferEngine engine;
    private static boolean engineOwned;
    private static int engineUsers;

    private Mooncake() {}

    /** The address peers use to reach this process (default: {@code MOONCAKE_HOST_IP}, else the first non-loopback IPv4). */
    public static void setHostIp(String ip) { hostIp = ip; }

    /** Restricts which network interfaces (NICs) are used; {@code MOONCAKE_DEVICE_FILTER=eth0,eth1} does the same. */
    public static void setDeviceFilter(List<String> devices) { deviceFilter = List.copyOf(devices); }

    /** Uses {@code engine} for every group created afterwards; it must outlive them all (the caller closes it). */
    public static synchronized void setTransferEngine(TransferEngine e) {
        engine = e;
        engineOwned = false;
    }

    static String hostIp() {
        return hostIp != null ? hostIp : System.getenv("MOONCAKE_HOST_IP");
    }

    static List<String> deviceFilter() {
        if (!deviceFilter.isEmpty()) return deviceFilter;
        String env = System.getenv("MOONCAKE_DEVICE_FILTER");
        if (env == null) env = System.getenv("MOONCAKE_PGTEST_DEVICE_FILTERS");
        return env == null || env.isBlank() ? List.of() : List.of(env.trim().split("\\s*,\\s*"));
    }

    /** The engine groups share: the one set with {@link #setTransferEngine}, or one started on first use. */
    static synchronized TransferEngine acquireEngine(java.util.function.Supplier<TransferEngine> starter) {
        if (engine == null) {
            engine = starter.get();
            engineOwned = true;
        }
        engineUsers++;
        return engine;
    }

    /** Closes the engine when the last group using an engine this class started lets go of it. */
    static synchronized void releaseEngine(TransferEngine e) {
        if (e != engine) return;
        if (--engineUsers == 0 && engineOwned) {
            engine.close();
            engine = null;
        }
    }
}
