package org.mooncake4j.core.internal;

/**
 * Conversions between float32 and the narrow float formats: bfloat16, float16 (IEEE binary16) and
 * float8 e4m3 ("fn": no infinities, 0x7f/0xff are NaN, max finite 448). float32 to narrow rounds to
 * nearest even; e4m3 saturates to +-448.
 */
public final class FloatFormats {
    private FloatFormats() {}

    public static float bf16ToFloat(short b) { return Float.intBitsToFloat((b & 0xffff) << 16); }

    public static short floatToBf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if ((bits & 0x7fffffff) > 0x7f800000) return (short) ((bits >>> 16) | 0x40); // quiet NaN
        int rounding = 0x7fff + ((bits >>> 16) & 1);
        return (short) ((bits + rounding) >>> 16);
    }

    public static float fp16ToFloat(short h) { return Float.float16ToFloat(h); }

    public static short floatToFp16(float f) { return Float.floatToFloat16(f); }

    private static final float[] E4M3_TO_FLOAT = new float[256];

    static {
        for (int b = 0; b < 256; b++) {
            int sign = (b >>> 7) & 1, exp = (b >>> 3) & 0xf, man = b & 7;
            float v;
            if (exp == 0xf && man == 7) v = Float.NaN;
            else if (exp == 0) v = man / 8f * (float) Math.pow(2, -6);
            else v = (1 + man / 8f) * (float) Math.pow(2, exp - 7);
            E4M3_TO_FLOAT[b] = sign == 1 ? -v : v;
        }
    }

    public static float e4m3ToFloat(byte b) { return E4M3_TO_FLOAT[b & 0xff]; }

    public static final float E4M3_MAX = 448f;

    public static byte floatToE4m3(float f) {
        if (Float.isNaN(f)) return 0x7f;
        int sign = f < 0 || (f == 0 && 1 / f < 0) ? 0x80 : 0;
        float a = Math.abs(f);
        if (a >= E4M3_MAX) return (byte) (sign | 0x7e);
        if (a < 0x1p-10f) return (byte) sign; // below half the smallest subnormal (2^-9)
        int e = Math.getExponent(a);
        if (e < -6) {
            // subnormal: value = m * 2^-9, m in 0..7
            int m = (int) Math.rint(a * 512f);
            return (byte) (sign | m); // m == 8 becomes exponent 1, mantissa 0: correct encoding
        }
        float scaled = a / (float) Math.pow(2, e) * 8f; // in [8, 16)
        int m = (int) Math.rint(scaled) - 8; // 0..8
        int exp = e + 7;
        if (m == 8) { m = 0; exp++; }
        if (exp > 15 || (exp == 15 && m == 7)) return (byte) (sign | 0x7e);
        return (byte) (sign | (exp << 3) | m);
    }

    /**
     * FP8 e4m3 with one float32 scale per 128 channels, for {@code hidden} bf16 values at
     * {@code x[offset..]}: {@code scale = amax / 448} over each block (1 for an all-zero block),
     * {@code q = e4m3(x / scale)}. Fills {@code q[0..hidden)} and {@code scales[0..hidden/128)}.
     */
    public static void quantizeE4m3Blocks(short[] x, int offset, int hidden, byte[] q, float[] scales) {
        for (int b = 0; b < hidden / 128; b++) {
            float amax = 0;
            for (int c = b * 128; c < b * 128 + 128; c++) amax = Math.max(amax, Math.abs(bf16ToFloat(x[offset + c])));
            float scale = amax == 0 ? 1f : amax / E4M3_MAX;
            scales[b] = scale;
            for (int c = b * 128; c < b * 128 + 128; c++) q[c] = floatToE4m3(bf16ToFloat(x[offset + c]) / scale);
        }
    }

    /**
     * The values {@code hidden} bf16 elements of {@code x} at {@code offset} take through the FP8 path
     * ({@link #quantizeE4m3Blocks}, then e4m3 value times its block's scale): what a receiver of an FP8
     * dispatch sees.
     */
    public static float[] throughE4m3Blocks(short[] x, int offset, int hidden) {
        byte[] q = new byte[hidden];
        float[] scales = new float[hidden / 128];
        quantizeE4m3Blocks(x, offset, hidden, q, scales);
        float[] v = new float[hidden];
        for (int c = 0; c < hidden; c++) v[c] = e4m3ToFloat(q[c]) * scales[c / 128];
        return v;
    }
}
