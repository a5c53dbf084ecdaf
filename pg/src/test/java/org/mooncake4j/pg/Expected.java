package org.mooncake4j.pg;

import java.util.Random;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/**
 * Deterministic per-rank test data and the reference reductions the multi-process tests check
 * against, computed independently of the library's reduction code.
 */
final class Expected {
    private Expected() {}

    /** The input of {@code rank} for a test case: values kept small enough that every op stays in range. */
    static Tensor input(DType dt, ReduceOp op, int rank, long seed, long count) {
        Tensor t = Tensor.empty(dt, Device.CPU, count);
        Random r = new Random(seed * 1_000_003L + rank * 7919L + dt.ordinal() * 31L + (op == null ? 0 : op.ordinal()));
        for (long i = 0; i < count; i++) {
            if (dt == DType.BOOL) {
                t.setLong(i, r.nextInt(4) == 0 ? 0 : 1);
            } else if (dt.isInteger()) {
                long v = switch (dt) {
                    case UINT8 -> op == ReduceOp.PRODUCT ? r.nextInt(3) : r.nextInt(60);
                    case INT8 -> op == ReduceOp.PRODUCT ? r.nextInt(7) - 3 : r.nextInt(60) - 30;
                    case INT16 -> op == ReduceOp.PRODUCT ? r.nextInt(7) - 3 : r.nextInt(16000) - 8000;
                    case INT32 -> op == ReduceOp.PRODUCT ? r.nextInt(61) - 30 : r.nextInt() >> 3;
                    default -> op == ReduceOp.PRODUCT ? r.nextInt(2001) - 1000 : r.nextLong() >> 3;
                };
                t.setLong(i, v);
            } else {
                double v = op == ReduceOp.PRODUCT ? 0.5 + r.nextDouble() : r.nextDouble() * 4 - 2;
                t.setDouble(i, v); // rounds to the dtype
            }
        }
        return t;
    }

    /** Reference reduction of element i over ranks 0..n-1 (integers exact with wrap-around; floats in double). */
    static double reduceFloat(ReduceOp op, double[] v) {
        double acc = v[0];
        for (int k = 1; k < v.length; k++) {
            acc = switch (op) {
                case SUM, AVG -> acc + v[k];
                case PRODUCT -> acc * v[k];
                case MIN -> Math.min(acc, v[k]);
                case MAX -> Math.max(acc, v[k]);
                default -> throw new IllegalArgumentException(op.name());
            };
        }
        return op == ReduceOp.AVG ? acc / v.length : acc;
    }

    static long reduceInt(DType dt, ReduceOp op, long[] v) {
        if (dt == DType.BOOL) {
            boolean acc = v[0] != 0;
            for (int k = 1; k < v.length; k++) {
                boolean b = v[k] != 0;
                acc = switch (op) {
                    case SUM, MAX, BOR -> acc || b;
                    case PRODUCT, MIN, BAND -> acc && b;
                    case BXOR -> acc ^ b;
                    default -> throw new IllegalArgumentException(op.name());
                };
            }
            return acc ? 1 : 0;
        }
        long acc = v[0];
        for (int k = 1; k < v.length; k++) {
            long b = v[k];
            acc = switch (op) {
                case SUM, AVG -> acc + b;
                case PRODUCT -> acc * b;
                case MIN -> dt == DType.UINT8 ? Math.min(acc & 0xff, b & 0xff) : Math.min(acc, b);
                case MAX -> dt == DType.UINT8 ? Math.max(acc & 0xff, b & 0xff) : Math.max(acc, b);
                case BAND -> acc & b;
                case BOR -> acc | b;
                case BXOR -> acc ^ b;
            };
            acc = wrap(dt, acc);
        }
        if (op == ReduceOp.AVG) acc = wrap(dt, acc / v.length);
        return acc;
    }

    static long wrap(DType dt, long v) {
        return switch (dt) {
            case UINT8 -> v & 0xff;
            case INT8 -> (byte) v;
            case INT16 -> (short) v;
            case INT32 -> (int) v;
            default -> v;
        };
    }

    /** Allowed error for a float reduction of n values with result magnitude |ref|. */
    static double tolerance(DType dt, ReduceOp op, double ref) {
        if (op == ReduceOp.MIN || op == ReduceOp.MAX) return 0; // the result is one of the inputs
        double rel = switch (dt) {
            case FLOAT64 -> 1e-12;
            case FLOAT32 -> 1e-5;
            case FLOAT16 -> 2e-3;
            case BFLOAT16 -> 1.6e-2;
            case FLOAT8_E4M3 -> 1.3e-1;
            default -> 0;
        };
        return rel * Math.max(1, Math.abs(ref));
    }

    static boolean valid(DType dt, ReduceOp op) {
        if (op == ReduceOp.BAND || op == ReduceOp.BOR || op == ReduceOp.BXOR) return dt.isInteger() || dt == DType.BOOL;
        return !(dt == DType.BOOL && op == ReduceOp.AVG);
    }
}
