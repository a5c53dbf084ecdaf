package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.internal.CpuAffinity;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.pg.ReduceOp;

/**
 * The element-wise reduction kernels behind all-reduce, reduce and reduce-scatter:
 * {@code dst[i] = srcs[0][i] op srcs[1][i] op ... op srcs[n-1][i]}.
 *
 * <p>Determinism: sources are always combined left to right in index order, and the rounding rules
 * are fixed, so every rank that reduces the same inputs gets bitwise-identical bytes.
 * <ul>
 *   <li>float32 accumulates in float32 and float64 in float64, with no reassociation.</li>
 *   <li>bfloat16, float16 and float8 e4m3 accumulate in float32 across all n sources and round once
 *       at the end (to nearest even, e4m3 saturating to +-448), exactly as {@link FloatFormats} does.</li>
 *   <li>AVG is SUM then one division by n: floats divide the float32/float64 accumulator (before the
 *       final narrowing); integers divide the wrapped sum, truncating toward zero (unsigned for
 *       uint8), like NCCL's ncclAvg.</li>
 *   <li>Integers wrap (two's complement). uint8 compares unsigned for MIN/MAX.</li>
 *   <li>bool treats any non-zero byte as true and writes 0 or 1: SUM/MAX/BOR are logical or,
 *       PRODUCT/MIN/BAND logical and, BXOR is xor.</li>
 *   <li>MIN/MAX propagate NaN (like torch.minimum/maximum) and order -0.0 below +0.0.</li>
 * </ul>
 *
 * <p>Speed. What JDK 25's C2 auto-vectorizes decides the shape of this code:
 * <ul>
 *   <li>Loops over Java arrays, and loops that read one segment into an array, vectorize. A loop
 *       that reads two native segments and writes a third does not (C2 cannot rule out partial
 *       overlap), nor does any float load or store through a segment (an int load plus a bit move),
 *       nor any widening or narrowing between byte/short and int, nor per-lane variable shifts.</li>
 *   <li>So each call works in blocks of {@link #BLOCK} elements held in pooled Java arrays: source 0
 *       is bulk-copied into an accumulator array; every further source is combined straight from its
 *       segment (integers) or bulk-copied, widened if needed, into a second array and combined there
 *       (floats); the block is narrowed and bulk-copied to {@code dst}. Narrow formats are converted
 *       with branch-free integer code on whole ints (two bf16 or four e4m3 per int) and bulk copies
 *       that reinterpret int bits as float bits. bool, and MIN/MAX on 8/16-bit integers, run as
 *       SIMD-within-a-long on 64-bit words.</li>
 *   <li>Every hot loop is its own small method, so each is compiled (and profiled) on its own and a
 *       run of one dtype or op cannot leave another's loop deoptimized.</li>
 * </ul>
 * Measured on one AVX2 core, in cache, float32 SUM runs at about 25 GB/s of source bytes read, 1.2x
 * to 2x as fast as element loops over the segments. The exception: float32 SUM of 2 to 4 sources
 * too big for any cache runs as one fused element loop, which streams from DRAM faster (see
 * {@link #DIRECT_MIN_BYTES}).
 *
 * <p>Aliasing: {@code dst} may be the same memory at the same offset as any source (srcs[0] in
 * particular): each block of every source is read before that block of {@code dst} is written.
 * Partial overlaps (same memory, different offsets) are not supported.
 */
public final class Reduction {
    private Reduction() {}

    /** Elements per block: 2048 floats (8 KiB) per array keeps the working arrays within L1/L2. */
    static final int BLOCK = 2048;

    /**
     * float32 SUM of 2 to 4 sources whose bytes (sources and destination together) reach this size
     * runs as one scalar loop straight over the segments ({@link #sumFloatsDirect}) instead of
     * through the arrays. Such a working set is unlikely to be in cache, and from DRAM the one loop
     * that streams all sources at once measured 1.4x (n = 2) to 1.6x (n = 3, 4) faster on 16 MiB
     * sources, while from cache (1 MiB sources) the vectorized array path is 1.2x to 1.7x faster (at
     * 4 MiB sources, in a 32 MiB L3, the two were about even). For 5 or more sources the two measured
     * the same from DRAM. Settable with the system property {@code mooncake4j.reduction.directMinBytes}.
     */
    static final long DIRECT_MIN_BYTES = Long.getLong("mooncake4j.reduction.directMinBytes", 32L << 20);

    private static final ValueLayout.OfByte BYTE = ValueLayout.JAVA_BYTE;
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final ValueLayout.OfDouble DOUBLE = ValueLayout.JAVA_DOUBLE_UNALIGNED;

    // ---- validation -------------------------------------------------------------------------

    /**
     * Rejects op/dtype pairs that have no meaning: bitwise reductions on floating-point dtypes and
     * AVG on bool.
     */
    public static void validate(DType dtype, ReduceOp op) {
        Objects.requireNonNull(dtype, "dtype");
        Objects.requireNonNull(op, "op");
        if (dtype.isFloatingPoint() && (op == ReduceOp.BAND || op == ReduceOp.BOR || op == ReduceOp.BXOR)) {
            throw new IllegalArgumentException("ReduceOp " + op + " is not defined for " + dtype.torchName()
                    + ": bitwise reductions need an integer or bool dtype.");
        }
        if (dtype == DType.BOOL && op == ReduceOp.AVG) {
            throw new IllegalArgumentException("ReduceOp AVG is not defined for bool: averaging needs a numeric dtype.");
        }
    }

    // ---- entry point ------------------------------------------------------------------------

    /**
     * {@code dst[i] = srcs[0][i] op ... op srcs[n-1][i]} for i in [0, count), combined in source order.
     *
     * @param srcs       the first {@code n} entries are the sources
     * @param srcOffsets byte offset of element 0 in each source
     * @param n          number of sources, at least 1
     * @param dstOffset  byte offset of element 0 in {@code dst}
     * @param count      number of elements
     */
    public static void reduce(DType dtype, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                              MemorySegment dst, long dstOffset, long count) {
        validate(dtype, op);
        checkArguments(dtype, srcs, srcOffsets, n, dst, dstOffset, count);
        if (count == 0) return;
        if (dtype == DType.FLOAT32 && op == ReduceOp.SUM && n >= 2 && n <= 4
                && count * Float.BYTES * (n + 1) >= DIRECT_MIN_BYTES) {
            sumFloatsDirect(srcs, srcOffsets, n, dst, dstOffset, count);
            return;
        }
        Scratch s = acquire();
        try {
            reduceThrough(s, dtype, op, srcs, srcOffsets, n, dst, dstOffset, count);
        } finally {
            release(s);
        }
    }

    /** The array path of {@link #reduce} with its working arrays {@code s}, on arguments already checked. */
    private static void reduceThrough(Scratch s, DType dtype, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                      MemorySegment dst, long dstOffset, long count) {
        switch (dtype) {
            case FLOAT32, BFLOAT16, FLOAT16, FLOAT8_E4M3 -> reduceFloat(s, dtype, op, srcs, srcOffsets, n, dst, dstOffset, count);
            case FLOAT64 -> reduceDouble(s, op, srcs, srcOffsets, n, dst, dstOffset, count);
            case INT64 -> reduceLong(s, op, srcs, srcOffsets, n, dst, dstOffset, count);
            case INT32 -> reduceInt(s, op, srcs, srcOffsets, n, dst, dstOffset, count);
            case INT16, INT8, UINT8 -> {
                if (op == ReduceOp.MIN || op == ReduceOp.MAX) reducePackedMinMax(s, dtype, op, srcs, srcOffsets, n, dst, dstOffset, count);
                else if (dtype == DType.INT16) reduceShort(s, op, srcs, srcOffsets, n, dst, dstOffset, count);
                else reduceByte(s, op, dtype == DType.UINT8, srcs, srcOffsets, n, dst, dstOffset, count);
            }
            case BOOL -> reduceBool(s, op, srcs, srcOffsets, n, dst, dstOffset, count);
        }
    }

    /**
     * {@code srcs[own][i] = srcs[0][i] op ... op srcs[n-1][i]} in place for i in [0, count), after
     * copying {@code srcs[own][i]} to {@code backup}: the same bits as {@link #reduce} into another
     * buffer, with the overwritten input kept. Piece by piece: each piece is copied to the backup and
     * then reduced while it is still in cache. Meant for working sets that fit in cache (for streaming
     * ones from DRAM, the backup's extra write stream made this slower than {@link #reduce} into another
     * buffer: 7.8 against 4.6 ms for two 32 MiB float32 sources on a 2-vCPU VM). {@code pieceOffsets}
     * (at least {@code n} entries, not {@code srcOffsets}) is working space, so the call allocates nothing.
     */
    public static void reduceInPlace(DType dtype, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n, int own,
                                     MemorySegment backup, long backupOffset, long count, long[] pieceOffsets) {
        validate(dtype, op);
        if (own < 0 || own >= n) throw new IllegalArgumentException("own = " + own + " is not one of the " + n + " sources");
        if (pieceOffsets.length < n) throw new IllegalArgumentException("pieceOffsets has " + pieceOffsets.length + " entries; it needs " + n);
        MemorySegment dst = srcs[own];
        long dstOffset = srcOffsets[own];
        checkArguments(dtype, srcs, srcOffsets, n, dst, dstOffset, count);
        checkArguments(dtype, srcs, srcOffsets, n, backup, backupOffset, count);
        int es = dtype.byteSize();
        long piece = IN_PLACE_PIECE_BYTES / es;
        Scratch s = acquire();
        try {
            for (long e = 0; e < count; e += piece) {
                long len = Math.min(piece, count - e), rel = e * es;
                MemorySegment.copy(dst, dstOffset + rel, backup, backupOffset + rel, len * es);
                for (int k = 0; k < n; k++) pieceOffsets[k] = srcOffsets[k] + rel;
                // a piece is far below DIRECT_MIN_BYTES: always the array path, as reduce would take
                reduceThrough(s, dtype, op, srcs, pieceOffsets, n, dst, dstOffset + rel, len);
            }
        } finally {
            release(s);
        }
    }

    /** {@link #reduceInPlace} copies and reduces pieces of this many bytes (within L2). */
    static final long IN_PLACE_PIECE_BYTES = 64 * 1024;

    /** Checks everything up front, so a bad call fails before any byte of dst is written. */
    private static void checkArguments(DType dtype, MemorySegment[] srcs, long[] srcOffsets, int n,
                                       MemorySegment dst, long dstOffset, long count) {
        Objects.requireNonNull(srcs, "srcs");
        Objects.requireNonNull(srcOffsets, "srcOffsets");
        Objects.requireNonNull(dst, "dst");
        if (n < 1 || n > srcs.length || n > srcOffsets.length) {
            throw new IllegalArgumentException("n = " + n + " sources, but srcs has " + srcs.length
                    + " and srcOffsets " + srcOffsets.length + " entries; n must be at least 1 and at most both");
        }
        if (count < 0) throw new IllegalArgumentException("count = " + count + " is negative");
        long bytes = Math.multiplyExact(count, (long) dtype.byteSize());
        for (int k = 0; k < n; k++) {
            MemorySegment src = srcs[k];
            if (src == null) throw new NullPointerException("srcs[" + k + "] is null");
            checkRange(src, srcOffsets[k], bytes, "srcs[", k);
        }
        checkRange(dst, dstOffset, bytes, "dst", -1);
        if (dst.isReadOnly()) throw new IllegalArgumentException("dst is a read-only segment");
    }

    private static void checkRange(MemorySegment seg, long offset, long bytes, String what, int k) {
        if (offset < 0 || offset > seg.byteSize() - bytes) {
            String name = k < 0 ? what : what + k + "]";
            throw new IndexOutOfBoundsException(name + ": " + bytes + " bytes at offset " + offset
                    + " do not fit in a segment of " + seg.byteSize() + " bytes");
        }
    }

    // ---- float32 / bfloat16 / float16 / float8 e4m3: float32 accumulator ---------------------

    private static void reduceFloat(Scratch s, DType dtype, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets,
                                    int n, MemorySegment dst, long dstOffset, long count) {
        int es = dtype.byteSize();
        float[] acc = s.acc, x = s.x;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e * es;
            load(s, dtype, srcs[0], srcOffsets[0] + rel, acc, len);
            for (int k = 1; k < n; k++) {
                load(s, dtype, srcs[k], srcOffsets[k] + rel, x, len);
                switch (op) {
                    case SUM, AVG -> sum(acc, x, len);
                    case PRODUCT -> product(acc, x, len);
                    case MIN -> min(acc, x, len);
                    case MAX -> max(acc, x, len);
                    default -> throw new AssertionError(op); // bitwise ops are rejected by validate
                }
            }
            if (op == ReduceOp.AVG) divide(acc, n, len);
            switch (dtype) {
                case FLOAT32 -> MemorySegment.copy(acc, 0, dst, FLOAT, dstOffset + rel, len);
                case BFLOAT16 -> storeBf16(s, dst, dstOffset + rel, len);
                case FLOAT16 -> storeFp16(s, dst, dstOffset + rel, len);
                default -> storeE4m3(s, dst, dstOffset + rel, len);
            }
        }
    }

    /**
     * float32 SUM of 2 to 4 sources in one pass of fused scalar loops over the segments, for working
     * sets too big for cache (see {@link #DIRECT_MIN_BYTES}). Each element's sources are all read
     * before its result is written, so dst may alias any source at the same offset.
     */
    private static void sumFloatsDirect(MemorySegment[] srcs, long[] srcOffsets, int n, MemorySegment dst,
                                        long dstOffset, long count) {
        MemorySegment a = srcs[0], b = srcs[1];
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e << 2;
            long ao = srcOffsets[0] + rel, bo = srcOffsets[1] + rel, d = dstOffset + rel;
            switch (n) {
                case 2 -> sum2(a, ao, b, bo, dst, d, len);
                case 3 -> sum3(a, ao, b, bo, srcs[2], srcOffsets[2] + rel, dst, d, len);
                default -> sum4(a, ao, b, bo, srcs[2], srcOffsets[2] + rel, srcs[3], srcOffsets[3] + rel, dst, d, len);
            }
        }
    }

    private static void sum2(MemorySegment a, long ao, MemorySegment b, long bo, MemorySegment d, long dOff, int len) {
        for (int j = 0; j < len; j++) {
            long q = (long) j << 2;
            d.set(FLOAT, dOff + q, a.get(FLOAT, ao + q) + b.get(FLOAT, bo + q));
        }
    }

    private static void sum3(MemorySegment a, long ao, MemorySegment b, long bo, MemorySegment c, long co,
                             MemorySegment d, long dOff, int len) {
        for (int j = 0; j < len; j++) {
            long q = (long) j << 2;
            d.set(FLOAT, dOff + q, a.get(FLOAT, ao + q) + b.get(FLOAT, bo + q) + c.get(FLOAT, co + q));
        }
    }

    private static void sum4(MemorySegment a, long ao, MemorySegment b, long bo, MemorySegment c, long co,
                             MemorySegment e, long eo, MemorySegment d, long dOff, int len) {
        for (int j = 0; j < len; j++) {
            long q = (long) j << 2;
            d.set(FLOAT, dOff + q, a.get(FLOAT, ao + q) + b.get(FLOAT, bo + q) + c.get(FLOAT, co + q) + e.get(FLOAT, eo + q));
        }
    }

    /** Widens {@code len} elements of {@code seg} at byte offset {@code off} into {@code out}. */
    private static void load(Scratch s, DType dtype, MemorySegment seg, long off, float[] out, int len) {
        switch (dtype) {
            case FLOAT32 -> MemorySegment.copy(seg, FLOAT, off, out, 0, len);
            case BFLOAT16 -> loadBf16(s, seg, off, out, len);
            case FLOAT16 -> loadFp16(s, seg, off, out, len);
            default -> loadE4m3(s, seg, off, out, len);
        }
    }

    private static void sum(float[] acc, float[] x, int len) { for (int j = 0; j < len; j++) acc[j] += x[j]; }

    private static void product(float[] acc, float[] x, int len) { for (int j = 0; j < len; j++) acc[j] *= x[j]; }

    private static void min(float[] acc, float[] x, int len) { for (int j = 0; j < len; j++) acc[j] = Math.min(acc[j], x[j]); }

    private static void max(float[] acc, float[] x, int len) { for (int j = 0; j < len; j++) acc[j] = Math.max(acc[j], x[j]); }

    private static void divide(float[] acc, int n, int len) {
        float d = n; // exact: n is a count of ranks, far below 2^24
        for (int j = 0; j < len; j++) acc[j] /= d;
    }

    // bfloat16. A bf16 is the top half of a float32. Read two at a time as one int, make float bits
    // of its low and high halves in two int[], and let bulk copies reinterpret those as floats. The
    // block thus holds its elements permuted (all low halves, then all high halves); every source
    // gets the same permutation, the ops are element-wise, and storeBf16 undoes it.

    private static void loadBf16(Scratch s, MemorySegment seg, long off, float[] out, int len) {
        int half = len >>> 1;
        int[] lo = s.lo, hi = s.hi;
        for (int j = 0; j < half; j++) {
            int w = seg.get(INT, off + ((long) j << 2));
            lo[j] = w << 16;
            hi[j] = w & 0xffff0000;
        }
        MemorySegment.copy(s.loSeg, FLOAT, 0, out, 0, half);
        MemorySegment.copy(s.hiSeg, FLOAT, 0, out, half, half);
        if ((len & 1) != 0) out[len - 1] = FloatFormats.bf16ToFloat(seg.get(SHORT, off + ((long) (len - 1) << 1)));
    }

    private static void storeBf16(Scratch s, MemorySegment seg, long off, int len) {
        int half = len >>> 1;
        int[] lo = s.lo, hi = s.hi;
        MemorySegment.copy(s.accSeg, INT, 0, lo, 0, half);
        MemorySegment.copy(s.accSeg, INT, (long) half << 2, hi, 0, half);
        for (int j = 0; j < half; j++) lo[j] = (bf16Rounded(lo[j]) >>> 16) | (bf16Rounded(hi[j]) & 0xffff0000);
        MemorySegment.copy(lo, 0, seg, INT, off, half);
        if ((len & 1) != 0) {
            int r = bf16Rounded(Float.floatToRawIntBits(s.acc[len - 1]));
            seg.set(SHORT, off + ((long) (len - 1) << 1), (short) (r >>> 16));
        }
    }

    /**
     * float32 bits rounded to bfloat16, result in the top 16 bits (the low 16 are junk): round to
     * nearest even; a NaN keeps its top bits with the quiet bit set. Same as FloatFormats.floatToBf16
     * (the tests check every float32), but branch-free so that the loop around it vectorizes.
     */
    static int bf16Rounded(int bits) {
        int nan = (0x7f800000 - (bits & 0x7fffffff)) >> 31; // all ones iff NaN
        return ((bits + 0x7fff + ((bits >>> 16) & 1)) & ~nan) | ((bits | 0x400000) & nan);
    }

    // float16: Float.float16ToFloat and floatToFloat16 vectorize (F16C) over short[] <-> float[].

    private static void loadFp16(Scratch s, MemorySegment seg, long off, float[] out, int len) {
        short[] h = s.halves;
        MemorySegment.copy(seg, SHORT, off, h, 0, len);
        for (int j = 0; j < len; j++) out[j] = Float.float16ToFloat(h[j]);
    }

    private static void storeFp16(Scratch s, MemorySegment seg, long off, int len) {
        short[] h = s.halves;
        float[] in = s.acc;
        for (int j = 0; j < len; j++) h[j] = Float.floatToFloat16(in[j]);
        MemorySegment.copy(h, 0, seg, SHORT, off, len);
    }

    // float8 e4m3fn. Four codes per int; byte k of int j of the block sits at k * quarter + j
    // (a permutation undone by storeE4m3). A table lookup does not vectorize, so codes are decoded
    // arithmetically: every value is significand * scale, both exact, with the significand (0..15)
    // an int and the scale (a signed power of two, or NaN) float bits reinterpreted by a bulk copy.

    private static void loadE4m3(Scratch s, MemorySegment seg, long off, float[] out, int len) {
        int quarter = len >>> 2, whole = quarter << 2;
        int[] significands = s.bits, scales = s.bits2;
        e4m3Split(seg, off, 0, quarter, significands, scales, 0);
        e4m3Split(seg, off, 8, quarter, significands, scales, quarter);
        e4m3Split(seg, off, 16, quarter, significands, scales, 2 * quarter);
        e4m3Split(seg, off, 24, quarter, significands, scales, 3 * quarter);
        MemorySegment.copy(s.bits2Seg, FLOAT, 0, out, 0, whole);
        scaleBy(out, significands, whole);
        for (int j = whole; j < len; j++) out[j] = FloatFormats.e4m3ToFloat(seg.get(BYTE, off + j));
    }

    /**
     * Splits the e4m3fn codes in byte {@code shift / 8} of each of {@code quarter} ints at {@code off}
     * into an integer significand (0..15) and the float bits of a scale (+-2^(e-10), or NaN for the
     * codes 0x7f and 0xff) so that {@code value = significand * scale}; -0.0 keeps its sign in the scale.
     */
    private static void e4m3Split(MemorySegment seg, long off, int shift, int quarter, int[] significands,
                                  int[] scales, int base) {
        for (int j = 0; j < quarter; j++) {
            int code = (seg.get(INT, off + ((long) j << 2)) >>> shift) & 0xff;
            int exp = (code >>> 3) & 0xf;
            significands[base + j] = (code & 7) | (((exp + 15) >> 4) << 3); // implicit 1 unless subnormal
            int scale = ((117 + Math.max(exp, 1)) << 23) | ((code & 0x80) << 24);
            int nan = -(((code & 0x7f) + 1) >> 7);                         // all ones for 0x7f and 0xff
            scales[base + j] = (scale & ~nan) | (0x7fc00000 & nan);
        }
    }

    private static void scaleBy(float[] scales, int[] significands, int len) {
        for (int j = 0; j < len; j++) scales[j] = (float) significands[j] * scales[j];
    }

    private static void storeE4m3(Scratch s, MemorySegment seg, long off, int len) {
        int quarter = len >>> 2, whole = quarter << 2;
        float[] in = s.acc;
        absPlus2p14(in, s.x, whole);
        int[] bits = s.bits, shiftedBits = s.bits2, packed = s.lo;
        MemorySegment.copy(s.accSeg, INT, 0, bits, 0, whole);
        MemorySegment.copy(s.xSeg, INT, 0, shiftedBits, 0, whole);
        e4m3Codes(bits, shiftedBits, whole);
        for (int j = 0; j < quarter; j++) {
            packed[j] = bits[j] | bits[quarter + j] << 8 | bits[2 * quarter + j] << 16 | bits[3 * quarter + j] << 24;
        }
        MemorySegment.copy(packed, 0, seg, INT, off, quarter);
        for (int j = whole; j < len; j++) seg.set(BYTE, off + j, FloatFormats.floatToE4m3(in[j]));
    }

    private static void absPlus2p14(float[] in, float[] out, int len) {
        for (int j = 0; j < len; j++) out[j] = Math.abs(in[j]) + 0x1p14f;
    }

    private static void e4m3Codes(int[] bits, int[] absPlus2p14Bits, int len) {
        for (int j = 0; j < len; j++) bits[j] = e4m3Code(bits[j], absPlus2p14Bits[j]);
    }

    /**
     * The e4m3fn code (0..255) of a float32 given as its bits and the bits of {@code |f| + 2^14}:
     * round to nearest even, saturate to +-448 (infinities too), NaN to 0x7f. Same as
     * FloatFormats.floatToE4m3 (the tests check every float32), but branch-free and without per-lane
     * variable shifts, so that the loop around it vectorizes.
     */
    static int e4m3Code(int bits, int absPlus2p14Bits) {
        int abs = bits & 0x7fffffff;
        int sign = (bits >>> 24) & 0x80;
        // normal range [2^-6, 448): round the 23-bit mantissa to 3 bits (a carry bumps the exponent),
        // then rebias the exponent from 127 to 7
        int normal = ((abs + 0x7ffff + ((abs >>> 20) & 1)) >>> 20) - (120 << 3);
        // below 2^-6 the code is |f| / 2^-9 rounded to nearest even; adding 2^14 (whose ulp is 2^-9)
        // made the float adder do that rounding, and the result is the count of ulps above 2^14
        int subnormal = absPlus2p14Bits - 0x46800000;
        int isSubnormal = (abs - 0x3c800000) >> 31;         // all ones iff abs < 2^-6
        int code = Math.min((subnormal & isSubnormal) | (normal & ~isSubnormal), 0x7e); // saturate
        int nan = (0x7f800000 - abs) >> 31;                 // all ones iff NaN
        return ((sign | code) & ~nan) | (0x7f & nan);
    }

    // ---- float64 ----------------------------------------------------------------------------

    private static void reduceDouble(Scratch s, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                     MemorySegment dst, long dstOffset, long count) {
        double[] acc = s.dacc, x = s.dx;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e << 3;
            MemorySegment.copy(srcs[0], DOUBLE, srcOffsets[0] + rel, acc, 0, len);
            for (int k = 1; k < n; k++) {
                MemorySegment.copy(srcs[k], DOUBLE, srcOffsets[k] + rel, x, 0, len);
                switch (op) {
                    case SUM, AVG -> sum(acc, x, len);
                    case PRODUCT -> product(acc, x, len);
                    case MIN -> min(acc, x, len);
                    case MAX -> max(acc, x, len);
                    default -> throw new AssertionError(op);
                }
            }
            if (op == ReduceOp.AVG) divide(acc, n, len);
            MemorySegment.copy(acc, 0, dst, DOUBLE, dstOffset + rel, len);
        }
    }

    private static void sum(double[] acc, double[] x, int len) { for (int j = 0; j < len; j++) acc[j] += x[j]; }

    private static void product(double[] acc, double[] x, int len) { for (int j = 0; j < len; j++) acc[j] *= x[j]; }

    private static void min(double[] acc, double[] x, int len) { for (int j = 0; j < len; j++) acc[j] = Math.min(acc[j], x[j]); }

    private static void max(double[] acc, double[] x, int len) { for (int j = 0; j < len; j++) acc[j] = Math.max(acc[j], x[j]); }

    private static void divide(double[] acc, int n, int len) {
        double d = n;
        for (int j = 0; j < len; j++) acc[j] /= d;
    }

    // ---- int64 / int32 / int16 / int8 / uint8: combined straight from each source segment --------

    private static void reduceLong(Scratch s, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                   MemorySegment dst, long dstOffset, long count) {
        long[] acc = s.lacc;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e << 3;
            MemorySegment.copy(srcs[0], LONG, srcOffsets[0] + rel, acc, 0, len);
            for (int k = 1; k < n; k++) {
                MemorySegment src = srcs[k];
                long o = srcOffsets[k] + rel;
                switch (op) {
                    case SUM, AVG -> sum(acc, src, o, len);
                    case PRODUCT -> product(acc, src, o, len);
                    case MIN -> min(acc, src, o, len);
                    case MAX -> max(acc, src, o, len);
                    case BAND -> and(acc, src, o, len);
                    case BOR -> or(acc, src, o, len);
                    case BXOR -> xor(acc, src, o, len);
                }
            }
            if (op == ReduceOp.AVG) divide(acc, n, len);
            MemorySegment.copy(acc, 0, dst, LONG, dstOffset + rel, len);
        }
    }

    private static void sum(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] += s.get(LONG, o + ((long) j << 3)); }

    private static void product(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] *= s.get(LONG, o + ((long) j << 3)); }

    private static void min(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] = Math.min(a[j], s.get(LONG, o + ((long) j << 3))); }

    private static void max(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] = Math.max(a[j], s.get(LONG, o + ((long) j << 3))); }

    private static void and(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] &= s.get(LONG, o + ((long) j << 3)); }

    private static void or(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] |= s.get(LONG, o + ((long) j << 3)); }

    private static void xor(long[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] ^= s.get(LONG, o + ((long) j << 3)); }

    private static void divide(long[] a, int n, int len) { for (int j = 0; j < len; j++) a[j] /= n; } // truncates toward zero

    private static void reduceInt(Scratch s, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                  MemorySegment dst, long dstOffset, long count) {
        int[] acc = s.bits;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e << 2;
            MemorySegment.copy(srcs[0], INT, srcOffsets[0] + rel, acc, 0, len);
            for (int k = 1; k < n; k++) {
                MemorySegment src = srcs[k];
                long o = srcOffsets[k] + rel;
                switch (op) {
                    case SUM, AVG -> sum(acc, src, o, len);
                    case PRODUCT -> product(acc, src, o, len);
                    case MIN -> min(acc, src, o, len);
                    case MAX -> max(acc, src, o, len);
                    case BAND -> and(acc, src, o, len);
                    case BOR -> or(acc, src, o, len);
                    case BXOR -> xor(acc, src, o, len);
                }
            }
            if (op == ReduceOp.AVG) divide(acc, n, len);
            MemorySegment.copy(acc, 0, dst, INT, dstOffset + rel, len);
        }
    }

    private static void sum(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] += s.get(INT, o + ((long) j << 2)); }

    private static void product(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] *= s.get(INT, o + ((long) j << 2)); }

    private static void min(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] = Math.min(a[j], s.get(INT, o + ((long) j << 2))); }

    private static void max(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] = Math.max(a[j], s.get(INT, o + ((long) j << 2))); }

    private static void and(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] &= s.get(INT, o + ((long) j << 2)); }

    private static void or(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] |= s.get(INT, o + ((long) j << 2)); }

    private static void xor(int[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] ^= s.get(INT, o + ((long) j << 2)); }

    /**
     * Truncating division by the source count. In double it is exact and several times faster than
     * idiv: |a / n| < 2^31 rounds with an error below 2^-23, while a quotient that is not a whole
     * number is at least 1/n from one; so for n below 2^22 truncating the double gives a / n.
     */
    private static void divide(int[] a, int n, int len) {
        if (n >= EXACT_DOUBLE_DIVISOR) {
            for (int j = 0; j < len; j++) a[j] /= n;
        } else {
            double d = n;
            for (int j = 0; j < len; j++) a[j] = (int) (a[j] / d);
        }
    }

    /** Divisors below this give exact truncating division of 32-bit (or narrower) ints through double. */
    private static final int EXACT_DOUBLE_DIVISOR = 1 << 22;

    /** int16 for every op but MIN/MAX (see {@link #reducePackedMinMax}). */
    private static void reduceShort(Scratch s, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                    MemorySegment dst, long dstOffset, long count) {
        short[] acc = s.halves;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            long rel = e << 1;
            MemorySegment.copy(srcs[0], SHORT, srcOffsets[0] + rel, acc, 0, len);
            for (int k = 1; k < n; k++) {
                MemorySegment src = srcs[k];
                long o = srcOffsets[k] + rel;
                switch (op) {
                    case SUM, AVG -> sum(acc, src, o, len);
                    case PRODUCT -> product(acc, src, o, len);
                    case BAND -> and(acc, src, o, len);
                    case BOR -> or(acc, src, o, len);
                    case BXOR -> xor(acc, src, o, len);
                    default -> throw new AssertionError(op);
                }
            }
            if (op == ReduceOp.AVG) divide(acc, n, len);
            MemorySegment.copy(acc, 0, dst, SHORT, dstOffset + rel, len);
        }
    }

    private static void sum(short[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] += s.get(SHORT, o + ((long) j << 1)); }

    private static void product(short[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] *= s.get(SHORT, o + ((long) j << 1)); }

    private static void and(short[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] &= s.get(SHORT, o + ((long) j << 1)); }

    private static void or(short[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] |= s.get(SHORT, o + ((long) j << 1)); }

    private static void xor(short[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] ^= s.get(SHORT, o + ((long) j << 1)); }

    private static void divide(short[] a, int n, int len) { // exact through double, as for int32
        if (n >= EXACT_DOUBLE_DIVISOR) {
            for (int j = 0; j < len; j++) a[j] = (short) (a[j] / n);
        } else {
            double d = n;
            for (int j = 0; j < len; j++) a[j] = (short) (int) (a[j] / d);
        }
    }

    /** int8 and uint8 for every op but MIN/MAX (see {@link #reducePackedMinMax}). */
    private static void reduceByte(Scratch s, ReduceOp op, boolean unsigned, MemorySegment[] srcs, long[] srcOffsets,
                                   int n, MemorySegment dst, long dstOffset, long count) {
        byte[] acc = s.bytes;
        for (long e = 0; e < count; e += BLOCK) {
            int len = (int) Math.min(BLOCK, count - e);
            MemorySegment.copy(srcs[0], BYTE, srcOffsets[0] + e, acc, 0, len);
            for (int k = 1; k < n; k++) {
                MemorySegment src = srcs[k];
                long o = srcOffsets[k] + e;
                switch (op) {
                    case SUM, AVG -> sum(acc, src, o, len);
                    case PRODUCT -> product(acc, src, o, len);
                    case BAND -> and(acc, src, o, len);
                    case BOR -> or(acc, src, o, len);
                    case BXOR -> xor(acc, src, o, len);
                    default -> throw new AssertionError(op);
                }
            }
            if (op == ReduceOp.AVG) {
                if (unsigned) divideUnsigned(acc, n, len);
                else divide(acc, n, len);
            }
            MemorySegment.copy(acc, 0, dst, BYTE, dstOffset + e, len);
        }
    }

    private static void sum(byte[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] += s.get(BYTE, o + j); }

    private static void product(byte[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] *= s.get(BYTE, o + j); }

    private static void and(byte[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] &= s.get(BYTE, o + j); }

    private static void or(byte[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] |= s.get(BYTE, o + j); }

    private static void xor(byte[] a, MemorySegment s, long o, int len) { for (int j = 0; j < len; j++) a[j] ^= s.get(BYTE, o + j); }

    private static void divide(byte[] a, int n, int len) { // exact through double, as for int32
        if (n >= EXACT_DOUBLE_DIVISOR) {
            for (int j = 0; j < len; j++) a[j] = (byte) (a[j] / n);
        } else {
            double d = n;
            for (int j = 0; j < len; j++) a[j] = (byte) (int) (a[j] / d);
        }
    }

    private static void divideUnsigned(byte[] a, int n, int len) {
        if (n >= EXACT_DOUBLE_DIVISOR) {
            for (int j = 0; j < len; j++) a[j] = (byte) ((a[j] & 0xff) / n);
        } else {
            double d = n;
            for (int j = 0; j < len; j++) a[j] = (byte) (int) ((a[j] & 0xff) / d);
        }
    }

    // ---- MIN/MAX of int16, int8, uint8: SIMD within a long ----------------------------------
    //
    // C2 vectorizes no form of an 8- or 16-bit min/max (they all widen to int), so these work on
    // 64-bit words of 8 or 4 lanes with carry-free lane arithmetic, which does vectorize. A tail of
    // fewer than 8 bytes at the very end is done element by element.

    private static final long HIGH8 = 0x8080808080808080L;
    private static final long HIGH16 = 0x8000800080008000L;

    private static void reducePackedMinMax(Scratch s, DType dtype, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets,
                                           int n, MemorySegment dst, long dstOffset, long count) {
        boolean bytes = dtype != DType.INT16;
        long high = bytes ? HIGH8 : HIGH16;
        long flip = dtype == DType.UINT8 ? 0 : high; // signed lanes compare as unsigned once the sign bit is flipped
        boolean isMax = op == ReduceOp.MAX;
        long total = count * dtype.byteSize();
        long[] acc = s.lacc;
        long b = 0;
        for (; total - b >= 8; b += (long) BLOCK << 3) {
            int words = (int) Math.min(BLOCK, (total - b) >>> 3);
            MemorySegment.copy(srcs[0], LONG, srcOffsets[0] + b, acc, 0, words);
            for (int k = 1; k < n; k++) {
                if (bytes) minMax8(acc, srcs[k], srcOffsets[k] + b, words, flip, isMax);
                else minMax16(acc, srcs[k], srcOffsets[k] + b, words, flip, isMax);
            }
            MemorySegment.copy(acc, 0, dst, LONG, dstOffset + b, words);
        }
        b = Math.min(b, total) & ~7L; // start of the tail: everything before it was done in whole words
        for (; b < total; b += dtype.byteSize()) {
            int v = lane(dtype, srcs[0], srcOffsets[0] + b);
            for (int k = 1; k < n; k++) {
                int w = lane(dtype, srcs[k], srcOffsets[k] + b);
                v = isMax ? Math.max(v, w) : Math.min(v, w);
            }
            if (bytes) dst.set(BYTE, dstOffset + b, (byte) v);
            else dst.set(SHORT, dstOffset + b, (short) v);
        }
    }

    private static int lane(DType dtype, MemorySegment seg, long off) {
        return switch (dtype) {
            case INT16 -> seg.get(SHORT, off);
            case INT8 -> seg.get(BYTE, off);
            default -> seg.get(BYTE, off) & 0xff;
        };
    }

    private static void minMax8(long[] acc, MemorySegment src, long off, int words, long flip, boolean isMax) {
        if (isMax) {
            for (int j = 0; j < words; j++) {
                long a = acc[j], v = src.get(LONG, off + ((long) j << 3));
                long ge = geMask8(a ^ flip, v ^ flip);
                acc[j] = (a & ge) | (v & ~ge);
            }
        } else {
            for (int j = 0; j < words; j++) {
                long a = acc[j], v = src.get(LONG, off + ((long) j << 3));
                long ge = geMask8(a ^ flip, v ^ flip);
                acc[j] = (v & ge) | (a & ~ge);
            }
        }
    }

    private static void minMax16(long[] acc, MemorySegment src, long off, int words, long flip, boolean isMax) {
        if (isMax) {
            for (int j = 0; j < words; j++) {
                long a = acc[j], v = src.get(LONG, off + ((long) j << 3));
                long ge = geMask16(a ^ flip, v ^ flip);
                acc[j] = (a & ge) | (v & ~ge);
            }
        } else {
            for (int j = 0; j < words; j++) {
                long a = acc[j], v = src.get(LONG, off + ((long) j << 3));
                long ge = geMask16(a ^ flip, v ^ flip);
                acc[j] = (v & ge) | (a & ~ge);
            }
        }
    }

    /**
     * 0xff in each byte lane where {@code a >= b} as unsigned bytes, else 0. The low 7 bits compare by
     * {@code (a | 0x80) - (b & 0x7f)}, whose top bit is set iff a's are at least b's and which never
     * borrows from the next lane; the top bits then decide unless they are equal.
     */
    static long geMask8(long a, long b) {
        long d = (a | HIGH8) - (b & ~HIGH8);
        long ge = ((a & ~b) | (~(a ^ b) & d)) & HIGH8;
        long ones = ge >>> 7;
        return (ones << 8) - ones; // 0x01 -> 0xff per lane, without carries between lanes
    }

    /** As {@link #geMask8} for 16-bit lanes: 0xffff where {@code a >= b} as unsigned shorts. */
    static long geMask16(long a, long b) {
        long d = (a | HIGH16) - (b & ~HIGH16);
        long ge = ((a & ~b) | (~(a ^ b) & d)) & HIGH16;
        long ones = ge >>> 15;
        return (ones << 16) - ones;
    }

    // ---- bool: SIMD within a long -----------------------------------------------------------

    private static final long LOW7 = 0x7f7f7f7f7f7f7f7fL;

    private static void reduceBool(Scratch s, ReduceOp op, MemorySegment[] srcs, long[] srcOffsets, int n,
                                   MemorySegment dst, long dstOffset, long count) {
        long[] acc = s.lacc;
        long b = 0;
        for (; count - b >= 8; b += (long) BLOCK << 3) {
            int words = (int) Math.min(BLOCK, (count - b) >>> 3);
            truth(acc, srcs[0], srcOffsets[0] + b, words);
            for (int k = 1; k < n; k++) {
                MemorySegment src = srcs[k];
                long o = srcOffsets[k] + b;
                switch (op) {
                    case SUM, MAX, BOR -> orTruth(acc, src, o, words);
                    case PRODUCT, MIN, BAND -> andTruth(acc, src, o, words);
                    case BXOR -> xorTruth(acc, src, o, words);
                    case AVG -> throw new AssertionError(op); // rejected by validate
                }
            }
            MemorySegment.copy(acc, 0, dst, LONG, dstOffset + b, words);
        }
        b = Math.min(b, count) & ~7L; // start of the tail: everything before it was done in whole words
        for (; b < count; b++) {
            int v = truth(srcs[0].get(BYTE, srcOffsets[0] + b));
            for (int k = 1; k < n; k++) {
                int w = truth(srcs[k].get(BYTE, srcOffsets[k] + b));
                v = switch (op) {
                    case SUM, MAX, BOR -> v | w;
                    case BXOR -> v ^ w;
                    default -> v & w;
                };
            }
            dst.set(BYTE, dstOffset + b, (byte) v);
        }
    }

    /** 1 in each byte lane that is non-zero, else 0: bit 7 of ((x & 0x7f) + 0x7f) | x, moved to bit 0. */
    private static long truth(long x) { return ((((x & LOW7) + LOW7) | x) & HIGH8) >>> 7; }

    private static int truth(byte x) { return x != 0 ? 1 : 0; }

    private static void truth(long[] a, MemorySegment s, long o, int words) { for (int j = 0; j < words; j++) a[j] = truth(s.get(LONG, o + ((long) j << 3))); }

    private static void orTruth(long[] a, MemorySegment s, long o, int words) { for (int j = 0; j < words; j++) a[j] |= truth(s.get(LONG, o + ((long) j << 3))); }

    private static void andTruth(long[] a, MemorySegment s, long o, int words) { for (int j = 0; j < words; j++) a[j] &= truth(s.get(LONG, o + ((long) j << 3))); }

    private static void xorTruth(long[] a, MemorySegment s, long o, int words) { for (int j = 0; j < words; j++) a[j] ^= truth(s.get(LONG, o + ((long) j << 3))); }

    // ---- pooled working arrays --------------------------------------------------------------

    /** The working arrays of one reduction in progress (about 90 KiB). */
    private static final class Scratch {
        final float[] acc = new float[BLOCK];
        final float[] x = new float[BLOCK];
        final double[] dacc = new double[BLOCK];
        final double[] dx = new double[BLOCK];
        final long[] lacc = new long[BLOCK];
        final int[] bits = new int[BLOCK];
        final int[] bits2 = new int[BLOCK];
        final int[] lo = new int[BLOCK / 2];
        final int[] hi = new int[BLOCK / 2];
        final short[] halves = new short[BLOCK];
        final byte[] bytes = new byte[BLOCK];
        // Views of arrays as segments, made once, for the bulk copies that reinterpret bits.
        final MemorySegment loSeg = MemorySegment.ofArray(lo);
        final MemorySegment hiSeg = MemorySegment.ofArray(hi);
        final MemorySegment bits2Seg = MemorySegment.ofArray(bits2);
        final MemorySegment accSeg = MemorySegment.ofArray(acc);
        final MemorySegment xSeg = MemorySegment.ofArray(x);
    }

    /*
     * A small lock-free pool rather than a ThreadLocal: reductions may run on virtual threads, and a
     * ThreadLocal would give each of them its own arrays. Slots are 16 references apart so that
     * threads working on neighbouring slots do not share a cache line. A thread starts at a slot
     * picked by its id, so a platform thread usually gets its own arrays back (still warm in cache).
     * Taking and returning allocate nothing; only a miss (all probed slots empty) makes new arrays.
     */
    private static final int SPREAD = 16;
    /** A power of two, at least twice the processor count (and at least 8). */
    private static final int SLOTS = Integer.highestOneBit(Math.max(4, 2 * CpuAffinity.processCpus() - 1)) << 1;
    private static final int PROBES = 4;
    private static final AtomicReferenceArray<Scratch> POOL = new AtomicReferenceArray<>(SLOTS * SPREAD);

    private static Scratch acquire() {
        int start = (int) Thread.currentThread().threadId();
        for (int p = 0; p < PROBES; p++) {
            int i = ((start + p) & (SLOTS - 1)) * SPREAD;
            if (POOL.getPlain(i) != null) {
                Scratch s = POOL.getAndSet(i, null);
                if (s != null) return s;
            }
        }
        return new Scratch();
    }

    private static void release(Scratch s) {
        int start = (int) Thread.currentThread().threadId();
        for (int p = 0; p < PROBES; p++) {
            int i = ((start + p) & (SLOTS - 1)) * SPREAD;
            if (POOL.getPlain(i) == null && POOL.compareAndSet(i, null, s)) return;
        }
        // every probed slot is full: drop these arrays to the garbage collector
    }
}
