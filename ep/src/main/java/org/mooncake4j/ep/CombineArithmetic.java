package org.mooncake4j.ep;

import java.util.Arrays;
import java.util.function.IntPredicate;
import org.mooncake4j.core.internal.FloatFormats;

/**
 * The combine arithmetic {@link EpBuffer} documents, for one token, for references and checks (the
 * data paths compute it on their own memory): for each expert rank in rank order that holds a kept
 * slot of the token, the partial {@code p = p + w[k] * y[k]} in float32 over its kept slots in slot
 * order, rounded to bf16; {@code acc = acc + p} in float32. A slot is kept when its expert id is in
 * {@code [0, numExperts)} and {@code keep} accepts it. The caller rounds {@code acc} to bf16.
 */
public final class CombineArithmetic {
    private CombineArithmetic() {}

    /** The row slot {@code k} (expert {@code expert}) contributes: bf16 values held as floats, read before the next call. */
    @FunctionalInterface
    public interface SlotRow {
        float[] row(int k, long expert);
    }

    /**
     * Sums the token whose top-k ids and weights start at {@code offset} of {@code topk} and
     * {@code weights} into {@code acc[0, hidden)} (overwritten), with {@code part} as scratch.
     */
    public static void sumToken(long[] topk, float[] weights, int offset, int topK, int numRanks, int localExperts, IntPredicate keep,
                                SlotRow rows, float[] part, float[] acc, int hidden) {
        long numExperts = (long) numRanks * localExperts;
        Arrays.fill(acc, 0, hidden, 0f);
        for (int r = 0; r < numRanks; r++) {
            boolean any = false;
            for (int k = 0; k < topK; k++) {
                long e = topk[offset + k];
                if (e < 0 || e >= numExperts || e / localExperts != r || !keep.test((int) e)) continue;
                if (!any) Arrays.fill(part, 0, hidden, 0f);
                any = true;
                float w = weights[offset + k];
                float[] y = rows.row(k, e);
                for (int c = 0; c < hidden; c++) part[c] += w * y[c];
            }
            if (any) for (int c = 0; c < hidden; c++) acc[c] += FloatFormats.bf16ToFloat(FloatFormats.floatToBf16(part[c]));
        }
    }
}
