package org.mooncake4j.transfer;

import java.util.Locale;

/**
 * Which transport an engine uses to reach peers' segments. {@link #AUTO} picks per peer: shm when the
 * peer runs on this host and its segment file is visible here, tcp otherwise. Forcing one (like
 * Mooncake's {@code MC_FORCE_*}) is for tests and for hosts where shm must be avoided. The default
 * comes from the environment variable {@code MOONCAKE_TRANSPORT} ({@code auto}, {@code shm} or
 * {@code tcp}).
 */
public enum TransportChoice {
    AUTO, SHM, TCP;

    static final String ENV = "MOONCAKE_TRANSPORT";

    /** The choice named by {@code MOONCAKE_TRANSPORT}, or {@link #AUTO} when it is unset. */
    public static TransportChoice fromEnvironment() {
        String v = System.getenv(ENV);
        return v == null || v.isBlank() ? AUTO : parse(v, ENV);
    }

    /** Parses {@code auto}, {@code shm} or {@code tcp} (any case); {@code source} names where the text came from. */
    public static TransportChoice parse(String text, String source) {
        return switch (text.trim().toLowerCase(Locale.ROOT)) {
            case "auto" -> AUTO;
            case "shm" -> SHM;
            case "tcp" -> TCP;
            default -> throw new TransferException(source + "='" + text + "' is not a transport: use auto, shm or tcp.");
        };
    }
}
