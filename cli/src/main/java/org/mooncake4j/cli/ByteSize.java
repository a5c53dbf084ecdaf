package org.mooncake4j.cli;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import picocli.CommandLine;

/**
 * Byte counts as nccl-tests writes them: a whole number with an optional binary suffix
 * ({@code 8}, {@code 1K}, {@code 64M}, {@code 2G}; K = 1024). Stateless.
 */
final class ByteSize {
    private ByteSize() {}

    /** Parses {@code 8}, {@code 1K}, {@code 64m}, {@code 1G} (a trailing {@code B} is allowed: {@code 64MB}, {@code 8B}). */
    static long parse(String text) {
        String s = text == null ? "" : text.trim().toUpperCase(Locale.ROOT);
        if (s.endsWith("B")) s = s.substring(0, s.length() - 1);
        if (s.isEmpty()) throw new IllegalArgumentException("Empty byte size: write a number with an optional K, M or G suffix, e.g. 8, 1K, 64M");
        int shift = switch (s.charAt(s.length() - 1)) {
            case 'K' -> 10;
            case 'M' -> 20;
            case 'G' -> 30;
            case 'T' -> 40;
            default -> 0;
        };
        String digits = shift == 0 ? s : s.substring(0, s.length() - 1);
        long value;
        try {
            value = Long.parseLong(digits);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("Invalid byte size '" + text + "': write a whole number with an optional K, M or G suffix, e.g. 8, 1K, 64M");
        }
        if (value < 0) throw new IllegalArgumentException("Invalid byte size '" + text + "': it must not be negative");
        if (value > (Long.MAX_VALUE >> shift)) throw new IllegalArgumentException("Byte size '" + text + "' is too large");
        return value << shift;
    }

    /** The shortest exact form: {@code 8}, {@code 1K}, {@code 64M}; plain bytes when no suffix is exact. */
    static String format(long bytes) {
        String[] suffixes = {"", "K", "M", "G", "T"};
        int i = 0;
        long v = bytes;
        while (i < suffixes.length - 1 && v != 0 && v % 1024 == 0) {
            v /= 1024;
            i++;
        }
        return v + suffixes[i];
    }

    /** nccl-tests' size sweep: {@code min}, {@code min*factor}, ... while not above {@code max}. */
    static List<Long> sweep(long min, long max, long factor) {
        if (min <= 0) throw new IllegalArgumentException("minimum size must be at least 1 byte, got " + min);
        if (max < min) throw new IllegalArgumentException("maximum size " + format(max) + " is below the minimum size " + format(min));
        if (factor < 2) throw new IllegalArgumentException("step factor must be at least 2, got " + factor);
        List<Long> sizes = new ArrayList<>();
        for (long s = min; ; s *= factor) {
            sizes.add(s);
            if (s > max / factor) break; // the next size would pass max (checked without overflow)
        }
        return sizes;
    }

    /** picocli converter for byte-size options. */
    static final class Converter implements CommandLine.ITypeConverter<Long> {
        @Override
        public Long convert(String value) {
            try {
                return parse(value);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.TypeConversionException(e.getMessage());
            }
        }
    }
}
