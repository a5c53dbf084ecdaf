package org.mooncake4j.pg.collective;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.pg.ReduceOp;

/**
 * Checks {@link Reduction} bit for bit against a reference written independently here, element by
 * element in plain scalar code: integers in long (exact modulo 2^64, hence modulo any narrower width)
 * or BigInteger (int64 sums and products), floats folded in source order in float32 (float64 for
 * float64) with the narrow formats decoded and encoded by {@link FloatFormats}. Sources sit at odd
 * byte offsets with guard bytes around the destination, which must stay untouched.
 */
class ReductionTest {
    private static final ValueLayout.OfByte BYTE = ValueLayout.JAVA_BYTE;
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final byte GUARD = 0x5a;
    private static final int GUARD_BYTES = 24;

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        for (DType dtype : DType.values()) {
            for (ReduceOp op : ReduceOp.values()) {
                if (!valid(dtype, op)) continue;
                for (int n : new int[] {1, 2, 3, 4, 8}) {
                    for (long count : new long[] {1, 7, 1000, 100003}) out.add(Arguments.of(dtype, op, n, count));
                }
            }
        }
        return out.stream();
    }

    private static boolean valid(DType dtype, ReduceOp op) {
        boolean bitwise = op == ReduceOp.BAND || op == ReduceOp.BOR || op == ReduceOp.BXOR;
        if (dtype.isFloatingPoint()) return !bitwise;
        return !(dtype == DType.BOOL && op == ReduceOp.AVG);
    }

    @ParameterizedTest(name = "{0} {1} n={2} count={3}")
    @MethodSource("cases")
    void matchesReference(DType dtype, ReduceOp op, int n, long count) {
        long seed = dtype.ordinal() * 1_000_003L + op.ordinal() * 10_007L + n * 101L + count;
        try (Arena arena = Arena.ofConfined()) {
            Random rnd = new Random(seed);
            int es = dtype.byteSize();
            long bytes = count * es;
            MemorySegment[] srcs = new MemorySegment[n];
            long[] offs = new long[n];
            for (int k = 0; k < n; k++) {
                offs[k] = rnd.nextInt(16); // unaligned on purpose
                srcs[k] = arena.allocate(offs[k] + bytes + 8);
                fill(dtype, op, srcs[k], offs[k], count, rnd);
            }
            long dstOff = GUARD_BYTES + rnd.nextInt(8);
            MemorySegment dst = arena.allocate(dstOff + bytes + GUARD_BYTES);
            dst.fill(GUARD);

            Reduction.reduce(dtype, op, srcs, offs, n, dst, dstOff, count);

            assertGuardsIntact(dst, dstOff, bytes);
            assertMatches(dtype, op, srcs, offs, n, dst, dstOff, count);
        }
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("aliasCases")
    void destinationMayAliasFirstSource(DType dtype, ReduceOp op) {
        int n = 4;
        long count = 10_001;
        try (Arena arena = Arena.ofConfined()) {
            Random rnd = new Random(42 + dtype.ordinal() * 31L + op.ordinal());
            long bytes = count * dtype.byteSize();
            long[] offs = new long[n];
            for (int k = 0; k < n; k++) offs[k] = 3 + k;
            MemorySegment[] srcs = filledSources(arena, dtype, op, offs, count, rnd);
            MemorySegment[] copies = new MemorySegment[n];
            for (int k = 0; k < n; k++) {
                copies[k] = arena.allocate(offs[k] + bytes);
                copies[k].copyFrom(srcs[k]);
            }
            Reduction.reduce(dtype, op, srcs, offs, n, srcs[0], offs[0], count);
            assertMatches(dtype, op, copies, offs, n, srcs[0], offs[0], count);

            // the last source as destination works too: each block is read before it is written
            for (int k = 0; k < n; k++) srcs[k].copyFrom(copies[k]);
            Reduction.reduce(dtype, op, srcs, offs, n, srcs[n - 1], offs[n - 1], count);
            assertMatches(dtype, op, copies, offs, n, srcs[n - 1], offs[n - 1], count);
        }
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("aliasCases")
    void inPlaceReductionGivesTheSameBitsAndKeepsTheOverwrittenSource(DType dtype, ReduceOp op) {
        int n = 3;
        // more than one piece (Reduction.IN_PLACE_PIECE_BYTES) and not a whole number of them
        long count = 3 * Reduction.IN_PLACE_PIECE_BYTES / dtype.byteSize() + 777;
        try (Arena arena = Arena.ofConfined()) {
            Random rnd = new Random(77 + dtype.ordinal() * 31L + op.ordinal());
            long bytes = count * dtype.byteSize();
            long[] offs = new long[n];
            for (int k = 0; k < n; k++) offs[k] = 5 + k;
            MemorySegment[] srcs = filledSources(arena, dtype, op, offs, count, rnd);
            MemorySegment reference = arena.allocate(bytes);
            Reduction.reduce(dtype, op, srcs, offs, n, reference, 0, count);
            for (int own = 0; own < n; own++) {
                MemorySegment original = arena.allocate(bytes);
                MemorySegment.copy(srcs[own], offs[own], original, 0, bytes);
                long backupOff = GUARD_BYTES + 3;
                MemorySegment backup = arena.allocate(backupOff + bytes + GUARD_BYTES);
                backup.fill(GUARD);
                long[] pieces = new long[n];
                Reduction.reduceInPlace(dtype, op, srcs, offs, n, own, backup, backupOff, count, pieces);
                assertGuardsIntact(backup, backupOff, bytes);
                assertThat(backup.asSlice(backupOff, bytes).mismatch(original)).as("backup of source %d", own).isEqualTo(-1);
                assertThat(srcs[own].asSlice(offs[own], bytes).mismatch(reference)).as("result in source %d", own).isEqualTo(-1);
                MemorySegment.copy(original, 0, srcs[own], offs[own], bytes);   // back to the inputs for the next own
            }
            assertThatThrownBy(() -> Reduction.reduceInPlace(dtype, op, srcs, offs, n, n, reference, 0, count, new long[n]))
                    .hasMessageContaining("own = 3 is not one of the 3 sources");
            assertThatThrownBy(() -> Reduction.reduceInPlace(dtype, op, srcs, offs, n, 0, reference, 0, count, new long[1]))
                    .hasMessageContaining("pieceOffsets has 1 entries; it needs 3");
        }
    }

    /** One source per entry of {@code offs}, with {@code count} random elements from that byte offset on. */
    private static MemorySegment[] filledSources(Arena arena, DType dtype, ReduceOp op, long[] offs, long count, Random rnd) {
        MemorySegment[] srcs = new MemorySegment[offs.length];
        for (int k = 0; k < offs.length; k++) {
            srcs[k] = arena.allocate(offs[k] + count * dtype.byteSize());
            fill(dtype, op, srcs[k], offs[k], count, rnd);
        }
        return srcs;
    }

    static Stream<Arguments> aliasCases() {
        return Stream.of(DType.values()).flatMap(d -> Stream.of(ReduceOp.values()).filter(o -> valid(d, o)).map(o -> Arguments.of(d, o)));
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {2, 3, 4})
    void largeFloat32SumsTakeTheStreamingPathAndMatch(int n) {
        // big enough for Reduction.DIRECT_MIN_BYTES, and not a whole number of blocks
        long count = Reduction.DIRECT_MIN_BYTES / (4L * (n + 1)) + 999;
        try (Arena arena = Arena.ofConfined()) {
            Random rnd = new Random(1000 + n);
            long bytes = count * 4;
            MemorySegment[] srcs = new MemorySegment[n];
            MemorySegment[] copies = new MemorySegment[n];
            long[] offs = new long[n];
            for (int k = 0; k < n; k++) {
                offs[k] = 1 + 2 * k;
                srcs[k] = arena.allocate(offs[k] + bytes);
                fill(DType.FLOAT32, ReduceOp.SUM, srcs[k], offs[k], count, rnd);
                copies[k] = arena.allocate(offs[k] + bytes);
                copies[k].copyFrom(srcs[k]);
            }
            long dstOff = GUARD_BYTES + 5;
            MemorySegment dst = arena.allocate(dstOff + bytes + GUARD_BYTES);
            dst.fill(GUARD);
            Reduction.reduce(DType.FLOAT32, ReduceOp.SUM, srcs, offs, n, dst, dstOff, count);
            assertGuardsIntact(dst, dstOff, bytes);
            assertMatches(DType.FLOAT32, ReduceOp.SUM, copies, offs, n, dst, dstOff, count);
            Reduction.reduce(DType.FLOAT32, ReduceOp.SUM, srcs, offs, n, srcs[n - 1], offs[n - 1], count);
            assertMatches(DType.FLOAT32, ReduceOp.SUM, copies, offs, n, srcs[n - 1], offs[n - 1], count);
        }
    }

    @Test
    void float32SumKeepsSourceOrder() {
        // (1e8 + 1) - 1e8 is 0 in float32 in this order, 1 if reassociated as 1e8 - 1e8 + 1
        try (Arena arena = Arena.ofConfined()) {
            float[][] values = {{1e8f}, {1f}, {-1e8f}};
            MemorySegment[] srcs = new MemorySegment[3];
            for (int k = 0; k < 3; k++) srcs[k] = arena.allocateFrom(ValueLayout.JAVA_FLOAT, values[k]);
            MemorySegment dst = arena.allocate(4);
            Reduction.reduce(DType.FLOAT32, ReduceOp.SUM, srcs, new long[3], 3, dst, 0, 1);
            assertThat(dst.get(ValueLayout.JAVA_FLOAT, 0)).isEqualTo(0f);
        }
    }

    @Test
    void bfloat16AccumulatesInFloat32AndRoundsOnce() {
        // 256 + 1 + 1 in bf16: pairwise rounding gives 256 (256 + 1 ties to even each time),
        // float32 accumulation gives 258, which bf16 represents exactly.
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment[] srcs = new MemorySegment[3];
            float[] values = {256f, 1f, 1f};
            for (int k = 0; k < 3; k++) {
                srcs[k] = arena.allocate(2);
                srcs[k].set(SHORT, 0, FloatFormats.floatToBf16(values[k]));
            }
            MemorySegment dst = arena.allocate(2);
            Reduction.reduce(DType.BFLOAT16, ReduceOp.SUM, srcs, new long[3], 3, dst, 0, 1);
            assertThat(FloatFormats.bf16ToFloat(dst.get(SHORT, 0))).isEqualTo(258f);
        }
    }

    @Test
    void everyE4m3CodeRoundTrips() {
        // n = 1 decodes and re-encodes: every finite code comes back, both NaN codes become 0x7f
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocate(256 + 3);
            for (int c = 0; c < 256; c++) src.set(BYTE, 3 + c, (byte) c);
            MemorySegment dst = arena.allocate(256);
            Reduction.reduce(DType.FLOAT8_E4M3, ReduceOp.SUM, new MemorySegment[] {src}, new long[] {3}, 1, dst, 0, 256);
            for (int c = 0; c < 256; c++) {
                int expected = (c & 0x7f) == 0x7f ? 0x7f : c;
                assertThat(dst.get(BYTE, c) & 0xff).as("code 0x%02x", c).isEqualTo(expected);
            }
        }
    }

    @Test
    void boolNormalizesNonZeroBytes() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocateFrom(BYTE, (byte) 2, (byte) 0, (byte) -1, (byte) 0x80, (byte) 1, (byte) 0, (byte) 7, (byte) 0, (byte) 9);
            MemorySegment b = arena.allocateFrom(BYTE, (byte) 1, (byte) 0, (byte) 4, (byte) 0, (byte) 0, (byte) 0x10, (byte) 7, (byte) 0, (byte) 3);
            MemorySegment dst = arena.allocate(9);
            MemorySegment[] srcs = {a, b};
            Reduction.reduce(DType.BOOL, ReduceOp.BAND, srcs, new long[2], 2, dst, 0, 9);
            assertThat(dst.toArray(BYTE)).containsExactly(1, 0, 1, 0, 0, 0, 1, 0, 1);
            Reduction.reduce(DType.BOOL, ReduceOp.BXOR, srcs, new long[2], 2, dst, 0, 9);
            assertThat(dst.toArray(BYTE)).containsExactly(0, 0, 0, 1, 1, 1, 0, 0, 0);
            Reduction.reduce(DType.BOOL, ReduceOp.SUM, srcs, new long[2], 2, dst, 0, 9);
            assertThat(dst.toArray(BYTE)).containsExactly(1, 0, 1, 1, 1, 1, 1, 0, 1);
        }
    }

    @Test
    void integerAverageTruncatesTheWrappedSum() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocateFrom(INT, -7, 7, Integer.MAX_VALUE);
            MemorySegment b = arena.allocateFrom(INT, 0, 0, 1);
            MemorySegment dst = arena.allocate(12);
            Reduction.reduce(DType.INT32, ReduceOp.AVG, new MemorySegment[] {a, b}, new long[2], 2, dst, 0, 3);
            // -7/2 and 7/2 truncate toward zero; MAX_VALUE + 1 wraps to MIN_VALUE before dividing
            assertThat(dst.toArray(INT)).containsExactly(-3, 3, Integer.MIN_VALUE / 2);
        }
    }

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"INT32", "INT16", "INT8", "UINT8"})
    void averageOverMillionsOfSourcesStaysExact(DType dtype) {
        // from 2^22 sources on, integer AVG divides with idiv instead of through double
        int n = (1 << 22) + 3;
        long count = 5;
        try (Arena arena = Arena.ofConfined()) {
            Random rnd = new Random(dtype.ordinal());
            MemorySegment[] distinct = new MemorySegment[3];
            for (int k = 0; k < 3; k++) {
                distinct[k] = arena.allocate(count * dtype.byteSize());
                fill(dtype, ReduceOp.AVG, distinct[k], 0, count, rnd);
            }
            MemorySegment[] srcs = new MemorySegment[n];
            for (int k = 0; k < n; k++) srcs[k] = distinct[k % 3];
            MemorySegment dst = arena.allocate(count * dtype.byteSize());
            Reduction.reduce(dtype, ReduceOp.AVG, srcs, new long[n], n, dst, 0, count);
            assertMatches(dtype, ReduceOp.AVG, srcs, new long[n], n, dst, 0, count);
        }
    }

    @Test
    void averageOfEqualInt32sOverMillionsOfSourcesIsThatValue() {
        // 511 * (2^22 + 3) still fits in an int, so the average of n copies of v is exactly v
        int n = (1 << 22) + 3;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocateFrom(INT, 100, -100, 511, -511, 0);
            MemorySegment[] srcs = new MemorySegment[n];
            java.util.Arrays.fill(srcs, src);
            MemorySegment dst = arena.allocate(20);
            Reduction.reduce(DType.INT32, ReduceOp.AVG, srcs, new long[n], n, dst, 0, 5);
            assertThat(dst.toArray(INT)).containsExactly(100, -100, 511, -511, 0);
        }
    }

    @Test
    void minMaxPropagateNaN() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = arena.allocateFrom(ValueLayout.JAVA_FLOAT, Float.NaN, 1f, -0f);
            MemorySegment b = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 1f, Float.NaN, 0f);
            MemorySegment dst = arena.allocate(12);
            MemorySegment[] srcs = {a, b};
            Reduction.reduce(DType.FLOAT32, ReduceOp.MIN, srcs, new long[2], 2, dst, 0, 3);
            float[] min = dst.toArray(ValueLayout.JAVA_FLOAT);
            Reduction.reduce(DType.FLOAT32, ReduceOp.MAX, srcs, new long[2], 2, dst, 0, 3);
            float[] max = dst.toArray(ValueLayout.JAVA_FLOAT);
            assertThat(min[0]).isNaN();
            assertThat(min[1]).isNaN();
            assertThat(Float.floatToRawIntBits(min[2])).isEqualTo(Float.floatToRawIntBits(-0f));
            assertThat(max[0]).isNaN();
            assertThat(max[1]).isNaN();
            assertThat(Float.floatToRawIntBits(max[2])).isEqualTo(Float.floatToRawIntBits(0f));
        }
    }

    // ---- conversions against FloatFormats --------------------------------------------------

    @Test
    void narrowingConversionsMatchFloatFormats() {
        // Every float32 takes ~30 s; a stride through all bit patterns plus dense windows around
        // every boundary of both formats covers each branch of the branch-free code.
        for (long b = 0; b <= 0xffffffffL; b += 4099) checkConversions((int) b);
        int[] centers = {
            0, 0x00000001, 0x007fffff, 0x00800000,                // zero, float subnormals
            0x3a800000, 0x3b000000, 0x3c000000, 0x3c800000,        // 2^-10, 2^-9, 2^-7, 2^-6: e4m3 subnormal edges
            0x3f800000, 0x43e00000, 0x43f00000, 0x7f7fffff,       // 1, 448, 480, max float
            0x7f800000, 0x7f800001, 0x7fc00000, 0x7fffffff};      // infinity, NaNs
        for (int c : centers) {
            for (int d = -70_000; d <= 70_000; d++) {
                checkConversions(c + d);
                checkConversions((c + d) | 0x80000000);
            }
        }
        // bf16 rounding: every top half with the low half at and around the tie
        for (int top = 0; top < 0x10000; top++) {
            for (int low : new int[] {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff}) checkConversions((top << 16) | low);
        }
    }

    private static void checkConversions(int bits) {
        float f = Float.intBitsToFloat(bits);
        int code = Reduction.e4m3Code(bits, Float.floatToRawIntBits(Math.abs(f) + 0x1p14f));
        assertThat((byte) code).as("e4m3 of %08x", bits).isEqualTo(FloatFormats.floatToE4m3(f));
        assertThat((short) (Reduction.bf16Rounded(bits) >>> 16)).as("bf16 of %08x", bits).isEqualTo(FloatFormats.floatToBf16(f));
    }

    @Test
    void packedLaneComparisonsAreExact() {
        Random rnd = new Random(7);
        for (int a = 0; a < 256; a++) {
            for (int b = 0; b < 256; b++) {
                int lane = (a * 7 + b) & 7;
                long mask = 0xffL << (8 * lane);
                long x = (rnd.nextLong() & ~mask) | ((long) a << (8 * lane));
                long y = (rnd.nextLong() & ~mask) | ((long) b << (8 * lane));
                assertThat((Reduction.geMask8(x, y) >>> (8 * lane)) & 0xff).isEqualTo(a >= b ? 0xffL : 0L);
            }
        }
        for (int i = 0; i < 2_000_000; i++) {
            int a = rnd.nextInt(0x10000), b = i % 3 == 0 ? a : rnd.nextInt(0x10000), lane = i & 3;
            long mask = 0xffffL << (16 * lane);
            long x = (rnd.nextLong() & ~mask) | ((long) a << (16 * lane));
            long y = (rnd.nextLong() & ~mask) | ((long) b << (16 * lane));
            assertThat((Reduction.geMask16(x, y) >>> (16 * lane)) & 0xffff).isEqualTo(a >= b ? 0xffffL : 0L);
        }
    }

    // ---- errors -----------------------------------------------------------------------------

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"FLOAT16", "BFLOAT16", "FLOAT32", "FLOAT64", "FLOAT8_E4M3"})
    void bitwiseOpsAreRejectedForFloats(DType dtype) {
        for (ReduceOp op : new ReduceOp[] {ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR}) {
            String message = "ReduceOp " + op + " is not defined for " + dtype.torchName()
                    + ": bitwise reductions need an integer or bool dtype.";
            assertThatThrownBy(() -> Reduction.validate(dtype, op))
                    .isInstanceOf(IllegalArgumentException.class).hasMessage(message);
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment seg = arena.allocate(16);
                assertThatThrownBy(() -> Reduction.reduce(dtype, op, new MemorySegment[] {seg}, new long[1], 1, seg, 0, 1))
                        .isInstanceOf(IllegalArgumentException.class).hasMessage(message);
            }
        }
    }

    @Test
    void floatMessageUsesTorchNames() {
        assertThatThrownBy(() -> Reduction.validate(DType.FLOAT32, ReduceOp.BAND))
                .hasMessage("ReduceOp BAND is not defined for float32: bitwise reductions need an integer or bool dtype.");
        assertThatThrownBy(() -> Reduction.validate(DType.FLOAT8_E4M3, ReduceOp.BXOR))
                .hasMessage("ReduceOp BXOR is not defined for float8_e4m3fn: bitwise reductions need an integer or bool dtype.");
    }

    @Test
    void averageIsRejectedForBool() {
        assertThatThrownBy(() -> Reduction.validate(DType.BOOL, ReduceOp.AVG))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("AVG is not defined for bool");
    }

    @Test
    void validPairsPass() {
        for (DType d : DType.values()) {
            for (ReduceOp o : ReduceOp.values()) if (valid(d, o)) Reduction.validate(d, o);
        }
    }

    @Test
    void badArgumentsFailBeforeWriting() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocate(64);
            MemorySegment dst = arena.allocate(64);
            dst.fill(GUARD);
            MemorySegment[] srcs = {src, src};
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 0, dst, 0, 4))
                    .isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 3, dst, 0, 4))
                    .isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[] {0, 8}, 2, dst, 0, 15))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("srcs[1]");
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 2, dst, 4, 16))
                    .isInstanceOf(IndexOutOfBoundsException.class).hasMessageContaining("dst");
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 2, dst, 0, -1))
                    .isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 2, dst.asReadOnly(), 0, 4))
                    .isInstanceOf(IllegalArgumentException.class);
            for (long i = 0; i < 64; i++) assertThat(dst.get(BYTE, i)).isEqualTo(GUARD);
            Reduction.reduce(DType.INT32, ReduceOp.SUM, srcs, new long[2], 2, dst, 0, 0); // count 0: nothing
            for (long i = 0; i < 64; i++) assertThat(dst.get(BYTE, i)).isEqualTo(GUARD);
        }
    }

    // ---- throughput (printed, not asserted) -------------------------------------------------

    @Test
    void printsFloat32SumThroughput() {
        long bytes = 16L << 20;
        long count = bytes / 4;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment[] srcs = new MemorySegment[8];
            for (int k = 0; k < 8; k++) {
                srcs[k] = arena.allocate(bytes, 64);
                for (long i = 0; i < count; i++) srcs[k].setAtIndex(ValueLayout.JAVA_FLOAT, i, (i % 1013) * 0.25f + k);
            }
            MemorySegment dst = arena.allocate(bytes, 64);
            MemorySegment copy = arena.allocate(bytes, 64);
            long[] offs = new long[8];
            double memcpy = bestSeconds(() -> copy.copyFrom(srcs[0]), 5);
            System.out.printf("memcpy 16 MiB: %.2f GB/s%n", bytes / memcpy / 1e9);
            for (int n : new int[] {2, 4, 8}) {
                double t = bestSeconds(() -> Reduction.reduce(DType.FLOAT32, ReduceOp.SUM, srcs, offs, n, dst, 0, count), 5);
                System.out.printf("float32 SUM n=%d, 16 MiB: %.2f GB/s written, %.2f GB/s read%n",
                        n, bytes / t / 1e9, n * bytes / t / 1e9);
            }
        }
    }

    private static double bestSeconds(Runnable r, int reps) {
        for (int i = 0; i < 3; i++) r.run();
        double best = Double.MAX_VALUE;
        for (int i = 0; i < reps; i++) {
            long t = System.nanoTime();
            r.run();
            best = Math.min(best, (System.nanoTime() - t) / 1e9);
        }
        return best;
    }

    // ---- inputs -----------------------------------------------------------------------------

    /** Random elements, with the values each dtype needs to reach its corner cases. */
    private static void fill(DType dtype, ReduceOp op, MemorySegment seg, long off, long count, Random rnd) {
        int es = dtype.byteSize();
        for (long i = 0; i < count; i++) {
            long at = off + i * es;
            switch (dtype) {
                case BOOL -> seg.set(BYTE, at, rnd.nextInt(20) == 0 ? (byte) rnd.nextInt() : (byte) rnd.nextInt(2));
                case UINT8, INT8 -> seg.set(BYTE, at, (byte) rnd.nextInt());
                case INT16 -> seg.set(SHORT, at, (short) rnd.nextInt());
                case INT32 -> seg.set(INT, at, rnd.nextInt());
                case INT64 -> seg.set(LONG, at, rnd.nextLong());
                case FLOAT32 -> seg.set(INT, at, Float.floatToRawIntBits(randomFloat(op, rnd)));
                case FLOAT64 -> seg.set(LONG, at, Double.doubleToRawLongBits(randomDouble(op, rnd)));
                case BFLOAT16 -> seg.set(SHORT, at, rnd.nextInt(8) == 0 ? (short) rnd.nextInt() : FloatFormats.floatToBf16(randomFloat(op, rnd)));
                case FLOAT16 -> seg.set(SHORT, at, rnd.nextInt(8) == 0 ? (short) rnd.nextInt() : FloatFormats.floatToFp16(randomFloat(op, rnd)));
                case FLOAT8_E4M3 -> seg.set(BYTE, at, rnd.nextInt(4) == 0 ? (byte) rnd.nextInt() : FloatFormats.floatToE4m3(randomFloat(op, rnd) / 8));
            }
        }
    }

    private static final float[] SPECIAL_FLOATS = {
        Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, 0f, -0f, Float.MIN_VALUE, -Float.MIN_VALUE,
        Float.MIN_NORMAL, Float.MAX_VALUE, -Float.MAX_VALUE, 1f, -1f};

    /** Mostly values of widely mixed magnitude (so that any reassociation would show), some specials. */
    private static float randomFloat(ReduceOp op, Random rnd) {
        int kind = rnd.nextInt(100);
        if (kind < 3) return SPECIAL_FLOATS[rnd.nextInt(SPECIAL_FLOATS.length)];
        if (kind < 8) return Float.intBitsToFloat(rnd.nextInt());
        if (op == ReduceOp.PRODUCT) return (float) ((rnd.nextBoolean() ? 1 : -1) * Math.exp(rnd.nextGaussian() * 2));
        return (float) (rnd.nextGaussian() * Math.pow(10, rnd.nextInt(7) - 3));
    }

    private static double randomDouble(ReduceOp op, Random rnd) {
        int kind = rnd.nextInt(100);
        if (kind < 3) return SPECIAL_FLOATS[rnd.nextInt(SPECIAL_FLOATS.length)];
        if (kind < 8) return Double.longBitsToDouble(rnd.nextLong());
        if (op == ReduceOp.PRODUCT) return (rnd.nextBoolean() ? 1 : -1) * Math.exp(rnd.nextGaussian() * 20);
        return rnd.nextGaussian() * Math.pow(10, rnd.nextInt(31) - 15);
    }

    // ---- the reference ----------------------------------------------------------------------

    private static void assertGuardsIntact(MemorySegment dst, long dstOff, long bytes) {
        for (long i = 0; i < dstOff; i++) assertThat(dst.get(BYTE, i)).as("guard byte %d before dst", i).isEqualTo(GUARD);
        for (long i = dstOff + bytes; i < dst.byteSize(); i++) assertThat(dst.get(BYTE, i)).as("guard byte %d after dst", i).isEqualTo(GUARD);
    }

    private static void assertMatches(DType dtype, ReduceOp op, MemorySegment[] srcs, long[] offs, int n,
                                      MemorySegment dst, long dstOff, long count) {
        int es = dtype.byteSize();
        long[] raw = new long[n];
        for (long i = 0; i < count; i++) {
            for (int k = 0; k < n; k++) raw[k] = readRaw(dtype, srcs[k], offs[k] + i * es);
            long expected = reference(dtype, op, raw, n);
            long actual = readRaw(dtype, dst, dstOff + i * es);
            if (!sameResult(dtype, expected, actual)) {
                StringBuilder in = new StringBuilder();
                for (int k = 0; k < n; k++) in.append(k == 0 ? "" : ", ").append(Long.toHexString(raw[k]));
                throw new AssertionError(dtype + " " + op + " n=" + n + " count=" + count + " element " + i
                        + ": inputs [" + in + "], expected 0x" + Long.toHexString(expected) + " but was 0x" + Long.toHexString(actual));
            }
        }
    }

    /** The element's bits, zero-extended. */
    private static long readRaw(DType dtype, MemorySegment seg, long at) {
        return switch (dtype.byteSize()) {
            case 1 -> seg.get(BYTE, at) & 0xffL;
            case 2 -> seg.get(SHORT, at) & 0xffffL;
            case 4 -> seg.get(INT, at) & 0xffffffffL;
            default -> seg.get(LONG, at);
        };
    }

    /** Equal bits, except that any NaN matches any NaN for the float formats that keep payloads. */
    private static boolean sameResult(DType dtype, long expected, long actual) {
        if (expected == actual) return true;
        return switch (dtype) {
            case FLOAT32 -> Float.isNaN(Float.intBitsToFloat((int) expected)) && Float.isNaN(Float.intBitsToFloat((int) actual));
            case FLOAT64 -> Double.isNaN(Double.longBitsToDouble(expected)) && Double.isNaN(Double.longBitsToDouble(actual));
            case BFLOAT16 -> Float.isNaN(FloatFormats.bf16ToFloat((short) expected)) && Float.isNaN(FloatFormats.bf16ToFloat((short) actual));
            case FLOAT16 -> Float.isNaN(Float.float16ToFloat((short) expected)) && Float.isNaN(Float.float16ToFloat((short) actual));
            default -> false; // integers, bool and e4m3 (whose only NaN output is 0x7f) compare exactly
        };
    }

    private static long reference(DType dtype, ReduceOp op, long[] raw, int n) {
        return switch (dtype) {
            case BOOL -> referenceBool(op, raw, n);
            case UINT8, INT8, INT16, INT32 -> referenceNarrowInt(dtype, op, raw, n);
            case INT64 -> referenceInt64(op, raw, n);
            case FLOAT64 -> referenceDouble(op, raw, n);
            default -> referenceNarrowFloat(dtype, op, raw, n);
        };
    }

    private static long referenceBool(ReduceOp op, long[] raw, int n) {
        boolean any = false, all = true, parity = false;
        for (int k = 0; k < n; k++) {
            boolean t = raw[k] != 0;
            any |= t;
            all &= t;
            parity ^= t;
        }
        boolean r = switch (op) {
            case SUM, MAX, BOR -> any;
            case PRODUCT, MIN, BAND -> all;
            case BXOR -> parity;
            default -> throw new AssertionError(op);
        };
        return r ? 1 : 0;
    }

    /** Up to 32 bits: long arithmetic wraps modulo 2^64, so truncating it is exact modular arithmetic. */
    private static long referenceNarrowInt(DType dtype, ReduceOp op, long[] raw, int n) {
        int bits = dtype.byteSize() * 8;
        long mask = (1L << bits) - 1;
        boolean unsigned = dtype == DType.UINT8;
        long[] v = new long[n];
        for (int k = 0; k < n; k++) v[k] = unsigned ? raw[k] : (raw[k] << (64 - bits)) >> (64 - bits); // sign-extend
        long r = v[0];
        for (int k = 1; k < n; k++) {
            r = switch (op) {
                case SUM, AVG -> r + v[k];
                case PRODUCT -> r * v[k];
                case MIN -> Math.min(r, v[k]);
                case MAX -> Math.max(r, v[k]);
                case BAND -> r & v[k];
                case BOR -> r | v[k];
                case BXOR -> r ^ v[k];
            };
        }
        if (op == ReduceOp.AVG) {
            long wrapped = unsigned ? r & mask : ((r & mask) << (64 - bits)) >> (64 - bits);
            r = wrapped / n; // Java's long division truncates toward zero, like torch/NCCL
        }
        return r & mask;
    }

    private static long referenceInt64(ReduceOp op, long[] raw, int n) {
        if (op == ReduceOp.SUM || op == ReduceOp.PRODUCT || op == ReduceOp.AVG) {
            BigInteger r = BigInteger.valueOf(raw[0]);
            for (int k = 1; k < n; k++) r = op == ReduceOp.PRODUCT ? r.multiply(BigInteger.valueOf(raw[k])) : r.add(BigInteger.valueOf(raw[k]));
            long wrapped = r.longValue(); // the low 64 bits: two's complement wrap-around
            return op == ReduceOp.AVG ? BigInteger.valueOf(wrapped).divide(BigInteger.valueOf(n)).longValueExact() : wrapped;
        }
        long r = raw[0];
        for (int k = 1; k < n; k++) {
            r = switch (op) {
                case MIN -> Math.min(r, raw[k]);
                case MAX -> Math.max(r, raw[k]);
                case BAND -> r & raw[k];
                case BOR -> r | raw[k];
                case BXOR -> r ^ raw[k];
                default -> throw new AssertionError(op);
            };
        }
        return r;
    }

    private static long referenceDouble(ReduceOp op, long[] raw, int n) {
        double r = Double.longBitsToDouble(raw[0]);
        for (int k = 1; k < n; k++) {
            double x = Double.longBitsToDouble(raw[k]);
            r = switch (op) {
                case SUM, AVG -> r + x;
                case PRODUCT -> r * x;
                case MIN -> minOf(r, x);
                case MAX -> maxOf(r, x);
                default -> throw new AssertionError(op);
            };
        }
        if (op == ReduceOp.AVG) r /= n;
        return Double.doubleToRawLongBits(r);
    }

    /** float32, bfloat16, float16, e4m3: decode, fold in float32 in source order, encode once. */
    private static long referenceNarrowFloat(DType dtype, ReduceOp op, long[] raw, int n) {
        float r = decode(dtype, raw[0]);
        for (int k = 1; k < n; k++) {
            float x = decode(dtype, raw[k]);
            r = switch (op) {
                case SUM, AVG -> r + x;
                case PRODUCT -> r * x;
                case MIN -> (float) minOf(r, x);
                case MAX -> (float) maxOf(r, x);
                default -> throw new AssertionError(op);
            };
        }
        if (op == ReduceOp.AVG) r /= n;
        return switch (dtype) {
            case FLOAT32 -> Float.floatToRawIntBits(r) & 0xffffffffL;
            case BFLOAT16 -> FloatFormats.floatToBf16(r) & 0xffffL;
            case FLOAT16 -> FloatFormats.floatToFp16(r) & 0xffffL;
            default -> FloatFormats.floatToE4m3(r) & 0xffL;
        };
    }

    private static float decode(DType dtype, long raw) {
        return switch (dtype) {
            case FLOAT32 -> Float.intBitsToFloat((int) raw);
            case BFLOAT16 -> FloatFormats.bf16ToFloat((short) raw);
            case FLOAT16 -> FloatFormats.fp16ToFloat((short) raw);
            default -> FloatFormats.e4m3ToFloat((byte) raw);
        };
    }

    /** torch.minimum: NaN if either is NaN, and -0 below +0. (Written out, not Math.min.) */
    private static double minOf(double a, double b) {
        if (a != a || b != b) return Double.NaN;
        if (a == 0 && b == 0) return isNegativeZero(a) ? a : b;
        return a < b ? a : b;
    }

    private static double maxOf(double a, double b) {
        if (a != a || b != b) return Double.NaN;
        if (a == 0 && b == 0) return isNegativeZero(a) ? b : a;
        return a > b ? a : b;
    }

    private static boolean isNegativeZero(double z) { return Double.doubleToRawLongBits(z) == Double.doubleToRawLongBits(-0.0); }
}
