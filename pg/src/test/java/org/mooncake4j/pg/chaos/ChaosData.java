package org.mooncake4j.pg.chaos;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

/**
 * Every rank's input for a {@link ChaosStep}, as a pure function of (step, rank, element), and the
 * reference result for any set of contributing ranks, computed here without the library's code.
 *
 * <p>Reduction inputs are chosen so that float32 accumulation is exact in any order: float32 values
 * are multiples of 2^-10 in [-2, 2] (a sum of four needs at most 14 significant bits), bfloat16
 * values are multiples of 2^-6 in [-2, 2] (exactly representable in bf16's 8 bits), and PRODUCT
 * factors have 3 significant bits ({@code ±{1, 1.25, 1.5, 1.75} x 2^{0,-1}}), so a product of four has
 * at most 12. The reference accumulates in rank order in float32 and rounds to bf16 once
 * (round-to-nearest-even), which is the library's contract; because the float32 accumulation is exact,
 * the comparison can be bitwise without depending on the order or width of the library's
 * accumulator — only the final rounding of bf16 results matters, and that must be to nearest-even.
 * Integers wrap exactly, so any integer result is compared bitwise too.
 *
 * <p>Data-movement inputs are raw pseudo-random bytes (NaN patterns included): they are compared as bytes.
 */
final class ChaosData {
    private static final ValueLayout.OfInt I32 = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong I64 = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final ValueLayout.OfFloat F32 = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final ValueLayout.OfShort I16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfLong I64_LE = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private ChaosData() {}

    /** A 64-bit mix of two values (SplitMix64's finalizer over their combination). */
    static long mix(long a, long b) {
        long z = a * 0x9E3779B97F4A7C15L + b + 0x632BE59BD9B4E019L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** The seed of one rank's values in a step; element e's random word is {@code mix(base, e)}. */
    private static long base(long dataSeed, int rank) { return mix(dataSeed, rank + 1); }

    // ---- reductions ------------------------------------------------------------------------

    /** Element {@code e} of a rank's reduction input (an int32 value widened, or an int64). */
    private static long intValue(ChaosStep s, long base, long e) {
        long w = mix(base, e);
        return s.dtype() == DType.INT32 ? (int) w : w;
    }

    /** Element {@code e} of a rank's reduction input, exactly representable in the step's dtype (see the class comment). */
    private static float floatValue(ChaosStep s, long base, long e) {
        long w = mix(base, e);
        if (s.op() == ReduceOp.PRODUCT) {
            float v = (1 + (w & 3) / 4f) * (((w >>> 2) & 1) == 0 ? 1f : 0.5f);
            return ((w >>> 3) & 1) == 0 ? v : -v;
        }
        return s.dtype() == DType.FLOAT32 ? (int) (((w >>> 32) * 4097) >>> 32) - 2048 : ((int) (((w >>> 32) * 255) >>> 32) - 127) * 16;
    }

    private static float scale(ChaosStep s) { return s.op() == ReduceOp.PRODUCT ? 1f : 1f / 1024; }

    /** Writes {@code count} reduction-input elements of {@code rank}, starting at element {@code first}, to {@code dst}. */
    static void fillReduction(MemorySegment dst, ChaosStep s, int rank, long first, long count) {
        long b = base(s.dataSeed(), rank);
        float k = scale(s);
        switch (s.dtype()) {
            case INT32 -> { for (long i = 0; i < count; i++) dst.set(I32, i * 4, (int) intValue(s, b, first + i)); }
            case INT64 -> { for (long i = 0; i < count; i++) dst.set(I64, i * 8, intValue(s, b, first + i)); }
            case FLOAT32 -> { for (long i = 0; i < count; i++) dst.set(F32, i * 4, floatValue(s, b, first + i) * k); }
            case BFLOAT16 -> {
                for (long i = 0; i < count; i++) dst.set(I16, i * 2, (short) (Float.floatToRawIntBits(floatValue(s, b, first + i) * k) >>> 16)); // exact
            }
            default -> throw new IllegalArgumentException(s.dtype().torchName());
        }
    }

    /**
     * The reduction over {@code ranks} (ascending) of elements {@code first..first+count-1} of their inputs, written to {@code dst}.
     */
    static void reduceReference(MemorySegment dst, ChaosStep s, int[] ranks, long first, long count) {
        long[] b = new long[ranks.length];
        for (int k = 0; k < ranks.length; k++) b[k] = base(s.dataSeed(), ranks[k]);
        ReduceOp op = s.op();
        float scale = scale(s);
        for (long i = 0; i < count; i++) {
            long e = first + i;
            switch (s.dtype()) {
                case INT32, INT64 -> {
                    long acc = intValue(s, b[0], e);
                    for (int k = 1; k < b.length; k++) {
                        long v = intValue(s, b[k], e);
                        acc = switch (op) {
                            case SUM -> acc + v;
                            case MAX -> Math.max(acc, v);
                            case PRODUCT -> acc * v;
                            default -> throw new IllegalArgumentException(op.name());
                        };
                    }
                    if (s.dtype() == DType.INT32) dst.set(I32, i * 4, (int) acc); // int32 wraps like the 64-bit ring, cut to 32 bits
                    else dst.set(I64, i * 8, acc);
                }
                case FLOAT32, BFLOAT16 -> {
                    float acc = floatValue(s, b[0], e) * scale;
                    for (int k = 1; k < b.length; k++) {
                        float v = floatValue(s, b[k], e) * scale;
                        acc = switch (op) {
                            case SUM -> acc + v;
                            case MAX -> Math.max(acc, v);
                            case PRODUCT -> acc * v;
                            default -> throw new IllegalArgumentException(op.name());
                        };
                    }
                    if (s.dtype() == DType.FLOAT32) dst.set(F32, i * 4, acc);
                    else dst.set(I16, i * 2, bf16RoundNearestEven(acc));
                }
                default -> throw new IllegalArgumentException(s.dtype().torchName());
            }
        }
    }

    /** float32 to bfloat16, round to nearest, ties to even (inputs here are finite). */
    static short bf16RoundNearestEven(float f) {
        int bits = Float.floatToRawIntBits(f);
        int lsb = (bits >>> 16) & 1;
        return (short) ((bits + 0x7FFF + lsb) >>> 16);
    }

    // ---- data movement ---------------------------------------------------------------------

    /**
     * Writes bytes {@code from..from+len-1} of {@code rank}'s byte stream for this step to {@code dst} at
     * {@code dstOffset}. Byte j of the stream is byte {@code j % 8} (little-endian) of word {@code j / 8}.
     */
    static void fillBytes(MemorySegment dst, long dstOffset, ChaosStep s, int rank, long from, long len) {
        long b = base(s.dataSeed() ^ 0x5EED, rank);
        long j = from, end = from + len;
        for (; j < end && (j & 7) != 0; j++) dst.set(ValueLayout.JAVA_BYTE, dstOffset + j - from, (byte) (mix(b, j >>> 3) >>> ((j & 7) * 8)));
        for (; j + 8 <= end; j += 8) dst.set(I64_LE, dstOffset + j - from, mix(b, j >>> 3));
        for (; j < end; j++) dst.set(ValueLayout.JAVA_BYTE, dstOffset + j - from, (byte) (mix(b, j >>> 3) >>> ((j & 7) * 8)));
    }

    /** Describes element {@code e} of a result for a mismatch report. */
    static String element(MemorySegment seg, DType dt, long e) {
        long o = e * dt.byteSize();
        if (o + dt.byteSize() > seg.byteSize()) return "<out of range>";
        return switch (dt) {
            case INT32 -> Integer.toString(seg.get(I32, o));
            case INT64 -> Long.toString(seg.get(I64, o));
            case FLOAT32 -> seg.get(F32, o) + " (0x" + Integer.toHexString(seg.get(I32, o)) + ")";
            case BFLOAT16 -> Float.intBitsToFloat(seg.get(I16, o) << 16) + " (0x" + Integer.toHexString(seg.get(I16, o) & 0xffff) + ")";
            default -> "0x" + Integer.toHexString(seg.get(ValueLayout.JAVA_BYTE, o) & 0xff);
        };
    }
}
