package org.mooncake4j.ep.examples;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.function.IntPredicate;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.ep.CombineArithmetic;
import org.mooncake4j.ep.CombineResult;
import org.mooncake4j.ep.DispatchResult;
import org.mooncake4j.ep.EpBuffer;

/**
 * A small mixture-of-experts layer, run expert-parallel with {@link EpBuffer} or all in one process as
 * the reference.
 *
 * <p><b>Model.</b> Router: a float {@code [hidden, numExperts]} matrix; per token the logits
 * {@code x · router}, their softmax, the {@code topK} largest probabilities (ties to the lower expert
 * id) and those probabilities divided by their sum as the combine weights. Expert {@code e}: a
 * two-layer feed-forward block {@code y = W2ᵀ silu(W1ᵀ x)} with {@code W1 [hidden, ffn]} and
 * {@code W2 [ffn, hidden]}. Every weight is a bfloat16 value (held as float), drawn uniformly from
 * {@code ±sqrt(3 / fanIn)} by a {@link SplittableRandom} seeded from {@code (seed, matrix)}, so every
 * rank and the reference build the same weights without exchanging them. Arithmetic is float32.
 *
 * <p><b>Expert-parallel forward</b> ({@link #forward}): dispatch the bf16 tokens, apply each local
 * expert to its received rows {@code [0, recvCount[j])} of {@code recvX[j]} writing bf16 results into
 * {@link EpBuffer#nextCombineBuffer}, and combine with the router weights (zero-copy).
 *
 * <p><b>Reference</b> ({@link #reference}): the same experts applied in this process to the same bf16
 * tokens, summed in float32 with the router weights, over the experts a predicate keeps (all of them,
 * or all but a dead rank's).
 *
 * <p><b>Tolerance</b> ({@link #tolerance}). The expert-parallel output differs from the float32
 * reference only by bf16 rounding: each expert output {@code y_k} is rounded to bf16 before combine
 * (relative error at most {@code u = 2^-8}, bf16's unit roundoff with 8 significant bits); each expert
 * rank's partial sum is rounded to bf16 (at most {@code u (1 + u)} relative to its
 * {@code Σ w_k |y_k|}); the sums are accumulated in float32 on both sides, the partials and then their
 * sum (at most {@code (topK + 1) · 2^-24} relative to {@code Σ w_k |y_k|} each of the three); and the
 * sum is rounded to bf16 once ({@code u · |ref|}, plus {@code u} times the error before it). Per
 * element: {@code |out - ref| ≤ (2.02 u + 4 (topK + 1) 2^-24) · Σ_k w_k |y_k| + u · |ref| + 2^-133}
 * ({@code 2.02 u} covers {@code u + u (1 + u)} and the second-order terms; the last term covers bf16's
 * smallest subnormal spacing). The inputs need no term: bf16 dispatch delivers the tokens bit for bit.
 *
 * <p>Immutable after construction; safe to share between threads.
 */
public final class MoeLayer {
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    /** bf16's unit roundoff (8 significant bits, round to nearest even). */
    static final double BF16_UNIT_ROUNDOFF = 0x1p-8;

    private final int hidden, ffn, numExperts, topK;
    private final long seed;
    private final float[] router;
    private final float[][] w1, w2;

    /** Shape and seed of the layer; {@code topK ≤ numExperts}. */
    public record Config(int hidden, int ffn, int numExperts, int topK, long seed) {
        public Config {
            if (hidden <= 0 || ffn <= 0 || numExperts <= 0) throw new IllegalArgumentException("hidden, ffn and numExperts must be positive: " + this);
            if (topK <= 0 || topK > numExperts) throw new IllegalArgumentException("topK must be in [1, numExperts]: " + this);
        }
    }

    /**
     * Per-token routing: {@code topkIdx} int64 and {@code topkWeights} float32, both {@code [numTokens, topK]}
     * flattened row by row.
     */
    public record Routing(int numTokens, int topK, long[] topkIdx, float[] topkWeights) {
        /** {@code topkIdx} as an int64 {@code [numTokens, topK]} tensor, as {@link EpBuffer#dispatch} takes it. */
        public Tensor topkIdxTensor() { return Tensor.of(topkIdx).view(numTokens, topK); }

        /** {@code topkWeights} as a float32 {@code [numTokens, topK]} tensor, as {@link EpBuffer#combine} takes it. */
        public Tensor topkWeightsTensor() { return Tensor.of(topkWeights).view(numTokens, topK); }
    }

    public MoeLayer(Config c) {
        this.hidden = c.hidden();
        this.ffn = c.ffn();
        this.numExperts = c.numExperts();
        this.topK = c.topK();
        this.seed = c.seed();
        this.router = matrix(0, hidden, numExperts);
        this.w1 = new float[numExperts][];
        this.w2 = new float[numExperts][];
        for (int e = 0; e < numExperts; e++) {
            w1[e] = matrix(1 + 2L * e, hidden, ffn);
            w2[e] = matrix(2 + 2L * e, ffn, hidden);
        }
    }

    public int hidden() { return hidden; }

    public int numExperts() { return numExperts; }

    public int topK() { return topK; }

    /** A {@code [rows, cols]} matrix of bf16 values, uniform in {@code ±sqrt(3 / rows)}, from stream {@code id} of the seed. */
    private float[] matrix(long id, int rows, int cols) {
        SplittableRandom r = new SplittableRandom(seed * 0x9E3779B97F4A7C15L + id);
        float a = (float) Math.sqrt(3.0 / rows);
        float[] m = new float[rows * cols];
        for (int i = 0; i < m.length; i++) m[i] = roundBf16((float) r.nextDouble(-a, a));
        return m;
    }

    static float roundBf16(float v) { return FloatFormats.bf16ToFloat(FloatFormats.floatToBf16(v)); }

    /**
     * The {@code numTokens} tokens of rank {@code rank} in step {@code step}: bf16 {@code [numTokens, hidden]},
     * uniform in (-1, 1), from the seed, so any process can rebuild any rank's input.
     */
    public Tensor tokens(int rank, int step, int numTokens) {
        SplittableRandom r = new SplittableRandom(seed ^ (0xD1B54A32D192ED03L * (rank + 1)) ^ (0x94D049BB133111EBL * (step + 1)));
        Tensor x = Tensor.empty(DType.BFLOAT16, Device.CPU, numTokens, hidden);
        MemorySegment s = x.segment();
        for (long i = 0, n = (long) numTokens * hidden; i < n; i++) s.set(SHORT, 2 * i, FloatFormats.floatToBf16((float) r.nextDouble(-1, 1)));
        return x;
    }

    /** Softmax over the router logits, the top-k experts (ties to the lower id) and their probabilities renormalised to sum 1. */
    public Routing route(Tensor x) {
        int n = (int) x.size(0);
        long[] idx = new long[n * topK];
        float[] w = new float[n * topK];
        float[] in = new float[hidden], logits = new float[numExperts];
        boolean[] taken = new boolean[numExperts];
        for (int t = 0; t < n; t++) {
            row(x, t, in);
            Arrays.fill(logits, 0f);
            for (int h = 0; h < hidden; h++) {
                float v = in[h];
                for (int e = 0, o = h * numExperts; e < numExperts; e++) logits[e] += v * router[o + e];
            }
            float max = Float.NEGATIVE_INFINITY;
            for (float l : logits) max = Math.max(max, l);
            float sum = 0;
            for (int e = 0; e < numExperts; e++) sum += logits[e] = (float) Math.exp(logits[e] - max);
            Arrays.fill(taken, false);
            float picked = 0;
            for (int k = 0; k < topK; k++) {
                int best = -1;
                for (int e = 0; e < numExperts; e++) if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = e;
                taken[best] = true;
                idx[t * topK + k] = best;
                w[t * topK + k] = logits[best] / sum;
                picked += w[t * topK + k];
            }
            for (int k = 0; k < topK; k++) w[t * topK + k] /= picked;
        }
        return new Routing(n, topK, idx, w);
    }

    /** Token {@code t} of the bf16 {@code [*, hidden]} tensor {@code x} as floats. */
    private void row(Tensor x, long t, float[] dst) {
        MemorySegment s = x.segment();
        for (int h = 0; h < hidden; h++) dst[h] = FloatFormats.bf16ToFloat(s.get(SHORT, 2 * (t * hidden + h)));
    }

    /** {@code out = W2[e]ᵀ silu(W1[e]ᵀ in)}; {@code mid} is scratch of {@code ffn} floats. */
    public void expert(int e, float[] in, float[] mid, float[] out) {
        float[] a = w1[e], b = w2[e];
        Arrays.fill(mid, 0, ffn, 0f);
        for (int h = 0; h < hidden; h++) {
            float v = in[h];
            for (int f = 0, o = h * ffn; f < ffn; f++) mid[f] += v * a[o + f];
        }
        for (int f = 0; f < ffn; f++) mid[f] = mid[f] / (1f + (float) Math.exp(-mid[f]));
        Arrays.fill(out, 0, hidden, 0f);
        for (int f = 0; f < ffn; f++) {
            float v = mid[f];
            for (int h = 0, o = f * hidden; h < hidden; h++) out[h] += v * b[o + h];
        }
    }

    /**
     * The reference: per token {@code Σ_k w_k · expert_k(x)} in float32 over the selections whose expert
     * {@code keep} accepts; also fills {@code magnitude} (when not null) with {@code Σ_k w_k |y_k|} per
     * element, for {@link #tolerance}.
     *
     * @return float {@code [numTokens * hidden]}
     */
    public float[] reference(Tensor x, Routing routing, IntPredicate keep, float[] magnitude) {
        int n = routing.numTokens();
        float[] out = new float[n * hidden];
        float[] in = new float[hidden], mid = new float[ffn], y = new float[hidden];
        for (int t = 0; t < n; t++) {
            row(x, t, in);
            for (int k = 0; k < topK; k++) {
                int e = (int) routing.topkIdx()[t * topK + k];
                if (e < 0 || !keep.test(e)) continue;
                float w = routing.topkWeights()[t * topK + k];
                expert(e, in, mid, y);
                for (int h = 0; h < hidden; h++) {
                    out[t * hidden + h] += w * y[h];
                    if (magnitude != null) magnitude[t * hidden + h] += w * Math.abs(y[h]);
                }
            }
        }
        return out;
    }

    /** The bound on {@code |out - ref|} of one element derived in the class comment. */
    public double tolerance(float ref, float magnitude) {
        return (2.02 * BF16_UNIT_ROUNDOFF + 4.0 * (topK + 1) * 0x1p-24) * magnitude + BF16_UNIT_ROUNDOFF * Math.abs(ref) + 0x1p-133;
    }

    /**
     * The layer expert-parallel: dispatch {@code x} (bf16, no FP8), apply this rank's experts
     * ({@code numExperts / numRanks} of them, experts {@code rank · local + j}) to the received rows, and
     * combine with the router weights.
     *
     * @return bf16 {@code [numTokens, hidden]}, a new tensor the caller owns
     */
    public Tensor forward(EpBuffer buf, int rank, int numRanks, Tensor x, Routing routing, Tensor activeRanks, int maxTokensPerRank,
                          long timeoutUs) {
        Tensor idx = routing.topkIdxTensor(), weights = routing.topkWeightsTensor();
        DispatchResult d = buf.dispatch(x, idx, activeRanks, maxTokensPerRank, numExperts, timeoutUs, false, false, false);
        Tensor y = buf.nextCombineBuffer(d.handle());
        int local = numExperts / numRanks;
        int[] count = d.recvCount().toIntArray();
        long rows = (long) numRanks * maxTokensPerRank;
        MemorySegment rx = d.recvX().segment(), ys = y.segment();
        float[] in = new float[hidden], mid = new float[ffn], out = new float[hidden];
        for (int j = 0; j < local; j++) {
            for (int p = 0; p < count[j]; p++) {
                long row = j * rows + p;
                for (int h = 0; h < hidden; h++) in[h] = FloatFormats.bf16ToFloat(rx.get(SHORT, 2 * (row * hidden + h)));
                expert(rank * local + j, in, mid, out);
                for (int h = 0; h < hidden; h++) ys.set(SHORT, 2 * (row * hidden + h), FloatFormats.floatToBf16(out[h]));
            }
        }
        Tensor result = Tensor.empty(DType.BFLOAT16, Device.CPU, routing.numTokens(), hidden);
        CombineResult c = buf.combine(y, idx, weights, activeRanks, timeoutUs, d.handle(), true, false, false, result);
        c.event().currentStreamWait();
        idx.close();
        weights.close();
        return result;
    }

    /**
     * The combine arithmetic {@link EpBuffer} documents, replayed here: per token and per expert rank
     * (experts {@code r · numExperts / numRanks} on), in rank order, the partial
     * {@code p += w_k · bf16(y_k)} in float32 over that rank's kept selections in slot order, rounded to
     * bf16; {@code acc += p} in float32; {@code acc} rounded to bf16. The CPU path's output equals it bit
     * for bit.
     *
     * @return bf16 bits {@code [numTokens * hidden]}
     */
    public short[] combineArithmetic(Tensor x, Routing routing, IntPredicate keep, int numRanks) {
        if (numRanks < 1 || numExperts % numRanks != 0) {
            throw new IllegalArgumentException("numExperts (" + numExperts + ") must be a positive multiple of numRanks (" + numRanks + ")");
        }
        int local = numExperts / numRanks;
        int n = routing.numTokens();
        short[] out = new short[n * hidden];
        float[] in = new float[hidden], mid = new float[ffn], y = new float[hidden], acc = new float[hidden], part = new float[hidden];
        for (int t = 0; t < n; t++) {
            row(x, t, in);
            CombineArithmetic.sumToken(routing.topkIdx(), routing.topkWeights(), t * topK, topK, numRanks, local, keep, (k, e) -> {
                expert((int) e, in, mid, y);
                for (int h = 0; h < hidden; h++) y[h] = roundBf16(y[h]);
                return y;
            }, part, acc, hidden);
            for (int h = 0; h < hidden; h++) out[t * hidden + h] = FloatFormats.floatToBf16(acc[h]);
        }
        return out;
    }
}
