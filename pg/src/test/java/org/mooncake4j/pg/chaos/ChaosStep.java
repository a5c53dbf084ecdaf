package org.mooncake4j.pg.chaos;

import java.util.SplittableRandom;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

/**
 * What iteration {@code index} of a chaos run does, derived only from the run's seed and the index,
 * so every rank (and the test) computes the same plan without talking to anyone.
 *
 * @param kind      the collective
 * @param dtype     element type of its tensors
 * @param op        reduction operator (reductions only; SUM otherwise)
 * @param count     elements: of the all-reduce tensor, of each rank's part (all-gather, reduce-scatter),
 *                  or the upper bound of one all-to-all piece; chosen so no buffer exceeds ~4 MB
 * @param rootPick  a broadcast picks its root as {@code members[rootPick % members.length]}
 * @param async     whether the {@code ...Async} form is used (and its {@code Work} reports the outcome)
 * @param dataSeed  seed of every rank's input for this iteration
 */
public record ChaosStep(long index, Kind kind, DType dtype, ReduceOp op, long count, int rootPick, boolean async, long dataSeed) {

    public enum Kind {
        ALL_REDUCE, BROADCAST, ALL_GATHER_INTO_TENSOR, REDUCE_SCATTER, ALL_TO_ALL_SINGLE, BARRIER;

        /** Whether every member ends with the same bytes (so the test can compare digests across ranks). */
        public boolean sameResultOnEveryRank() { return this != REDUCE_SCATTER && this != ALL_TO_ALL_SINGLE; }

        public String torchName() {
            return switch (this) {
                case ALL_REDUCE -> "all_reduce";
                case BROADCAST -> "broadcast";
                case ALL_GATHER_INTO_TENSOR -> "all_gather_into_tensor";
                case REDUCE_SCATTER -> "reduce_scatter_tensor";
                case ALL_TO_ALL_SINGLE -> "all_to_all_single";
                case BARRIER -> "barrier";
            };
        }

        public static Kind ofTorchName(String s) {
            for (Kind k : values()) if (k.torchName().equals(s)) return k;
            throw new IllegalArgumentException("unknown collective " + s);
        }
    }

    /** Which mix of collectives a run draws from. */
    public enum Profile {
        /** Every collective, dtype, operator and size from 1 element to ~4 MB. */
        MIXED,
        /** One-element int32 SUM all-reduces: the fault-to-completion latency is all detection and agreement. */
        TINY
    }

    private static final DType[] DTYPES = {DType.INT32, DType.INT64, DType.FLOAT32, DType.BFLOAT16};
    private static final ReduceOp[] OPS = {ReduceOp.SUM, ReduceOp.MAX, ReduceOp.PRODUCT};
    /** Largest buffer of one iteration. */
    static final long MAX_BYTES = 4L << 20;

    public static ChaosStep plan(long seed, long index, int worldSize, Profile profile) {
        SplittableRandom r = new SplittableRandom(ChaosData.mix(seed, index));
        long dataSeed = r.nextLong();
        if (profile == Profile.TINY) return new ChaosStep(index, Kind.ALL_REDUCE, DType.INT32, ReduceOp.SUM, 1, 0, false, dataSeed);
        int w = r.nextInt(100);
        Kind kind = w < 40 ? Kind.ALL_REDUCE : w < 52 ? Kind.BROADCAST : w < 64 ? Kind.ALL_GATHER_INTO_TENSOR
                : w < 76 ? Kind.REDUCE_SCATTER : w < 88 ? Kind.ALL_TO_ALL_SINGLE : Kind.BARRIER;
        DType dt = DTYPES[r.nextInt(DTYPES.length)];
        ReduceOp op = OPS[r.nextInt(OPS.length)];
        // log-uniform buffer size from one element to MAX_BYTES, split across ranks where a buffer holds every rank's part
        double bytes = Math.pow(2, r.nextDouble() * (63 - Long.numberOfLeadingZeros(MAX_BYTES)));
        int parts = kind == Kind.ALL_REDUCE || kind == Kind.BROADCAST ? 1 : worldSize;
        long count = Math.max(1, (long) (bytes / dt.byteSize() / parts));
        int rootPick = r.nextInt(1 << 20);
        boolean async = r.nextInt(4) == 0;
        if (kind != Kind.ALL_REDUCE && kind != Kind.REDUCE_SCATTER) op = ReduceOp.SUM;
        return new ChaosStep(index, kind, dt, op, count, rootPick, async, dataSeed);
    }

    /** Rows (elements) rank {@code src} sends to rank {@code dst} in an all-to-all-single: 0..count. */
    public long rows(int src, int dst) {
        return Long.remainderUnsigned(ChaosData.mix(ChaosData.mix(dataSeed, 0xA2A), (long) src * 64 + dst), count + 1);
    }

    /** A short description for the OP line: {@code all_reduce/float32/SUM/n=123}. */
    public String describe() {
        return kind.torchName() + "/" + dtype.torchName() + (kind == Kind.ALL_REDUCE || kind == Kind.REDUCE_SCATTER ? "/" + op : "")
                + "/n=" + count + (async ? "/async" : "");
    }
}
