package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;

/**
 * Single-process reference for the multi-process EP tests: every rank's inputs for a round (derived
 * from the seed, so any rank can rebuild any other's), the FP8 quantization and the expert function,
 * written independently of the library's data path.
 */
final class EpReference {
    static final int M = 8, H = 256, K = 3;

    final int numRanks, numExperts, local;

    EpReference(int numRanks) {
        this.numRanks = numRanks;
        this.local = 3;
        this.numExperts = local * numRanks;
    }

    /** One rank's inputs: token counts differ by rank and round (0 and M included); about 1 in 8 selections masked. */
    record Inputs(int numTokens, short[] x, long[] topk, float[] weights) {
        Tensor xTensor() { return fill(Tensor.empty(DType.BFLOAT16, Device.CPU, numTokens, H), x); }

        Tensor topkTensor() {
            Tensor t = Tensor.empty(DType.INT64, Device.CPU, numTokens, K);
            MemorySegment.copy(topk, 0, t.segment(), ValueLayout.JAVA_LONG_UNALIGNED, 0, topk.length);
            return t;
        }

        Tensor weightTensor() {
            Tensor t = Tensor.empty(DType.FLOAT32, Device.CPU, numTokens, K);
            MemorySegment.copy(weights, 0, t.segment(), ValueLayout.JAVA_FLOAT_UNALIGNED, 0, weights.length);
            return t;
        }
    }

    static Tensor fill(Tensor t, short[] v) {
        MemorySegment.copy(v, 0, t.segment(), ValueLayout.JAVA_SHORT_UNALIGNED, 0, v.length);
        return t;
    }

    Inputs inputs(int round, int rank) {
        Random rnd = new Random(1_000_003L * round + 7919L * rank + 17);
        int n = (round + 3 * rank) % (M + 1);
        short[] x = new short[n * H];
        for (int i = 0; i < x.length; i++) x[i] = FloatFormats.floatToBf16((float) rnd.nextGaussian() * (1 + i % 7));
        long[] topk = new long[n * K];
        for (int i = 0; i < topk.length; i++) topk[i] = rnd.nextInt(8) == 0 ? -1 : rnd.nextInt(numExperts);
        float[] w = new float[n * K];
        for (int i = 0; i < w.length; i++) w[i] = rnd.nextFloat();
        return new Inputs(n, x, topk, w);
    }

    /** Whether token t selects expert e in a slot before k (then it was sent once, for the first slot). */
    static boolean firstSelection(long[] topk, int t, int k) {
        for (int q = 0; q < k; q++) if (topk[t * K + q] == topk[t * K + k]) return false;
        return true;
    }

    /** scale = amax / 448 per 128 channels (1 for an all-zero block); q = e4m3(x / scale). */
    static void quantize(short[] x, int offset, byte[] q, float[] scales) {
        FloatFormats.quantizeE4m3Blocks(x, offset, H, q, scales);
    }

    /** The value an expert sees for channel c of token t of {@code in}: the bf16 value, or the dequantized fp8 one. */
    static float[] seen(Inputs in, int t, boolean fp8) {
        if (fp8) return FloatFormats.throughE4m3Blocks(in.x(), t * H, H);
        float[] v = new float[H];
        for (int c = 0; c < H; c++) v[c] = FloatFormats.bf16ToFloat(in.x()[t * H + c]);
        return v;
    }

    /** The test's expert: y = bf16(v * (1 + e / 4) + 0.5). */
    static short expert(long e, float v) { return FloatFormats.floatToBf16(v * (1f + 0.25f * e) + 0.5f); }

    /** The combined output of {@code in}'s tokens: {@link CombineArithmetic} over the unmasked selections of active ranks, rounded to bf16. */
    short[] combined(Inputs in, boolean fp8, int[] active) {
        short[] out = new short[in.numTokens() * H];
        float[] acc = new float[H], part = new float[H], y = new float[H];
        for (int t = 0; t < in.numTokens(); t++) {
            float[] v = seen(in, t, fp8);
            CombineArithmetic.sumToken(in.topk(), in.weights(), t * K, K, numRanks, local, e -> active[e / local] != 0, (k, e) -> {
                for (int c = 0; c < H; c++) y[c] = FloatFormats.bf16ToFloat(expert(e, v[c]));
                return y;
            }, part, acc, H);
            for (int c = 0; c < H; c++) out[t * H + c] = FloatFormats.floatToBf16(acc[c]);
        }
        return out;
    }
}
