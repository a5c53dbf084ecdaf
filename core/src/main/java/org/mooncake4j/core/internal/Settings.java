package org.mooncake4j.core.internal;

/** Tunables read from the environment, checked once with an error that says what is accepted. */
public final class Settings {
    private Settings() {}

    /**
     * The integer in environment variable {@code name}, or {@code fallback} when it is unset or blank.
     *
     * @param defaultText how the error names the default (e.g. "4", or how it is computed)
     * @throws IllegalArgumentException when the value is not an integer in [min, max]
     */
    public static int integer(String name, int fallback, int min, int max, String defaultText) {
        String v = System.getenv(name);
        if (v == null || v.isBlank()) return fallback;
        try {
            int x = Integer.parseInt(v.trim());
            if (x >= min && x <= max) return x;
        } catch (NumberFormatException ignored) {
            // reported below
        }
        throw new IllegalArgumentException(name + "=" + v + ": must be an integer from " + min + " to " + max + " (unset for the default, "
                + defaultText + ")");
    }
}
