package org.mooncake4j.cli;

import java.util.Arrays;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;
import org.mooncake4j.pg.Work;
import picocli.CommandLine;

/**
 * The collectives pgbench measures, each with nccl-tests' buffer sizes and bus-bandwidth factor,
 * the operation itself, and a check of its result against values computed from known inputs.
 *
 * <p>Inputs are small integers, exact in every dtype down to fp8: data that is moved as is uses
 * {@code 1 + (i + 3·rank) mod 13}; data that is reduced uses {@code (rank + 1) · (1 + i mod 3)}, so
 * the expected reduction depends only on {@code i mod 3} and is computed once per size. Floating
 * results may differ from the exact value by a relative {@code ranks · 2^-mantissaBits}: nothing
 * while the partial results are exact (float32 integers up to 2^24), and the rounding of partial
 * sums in bf16 and fp16 beyond that. Integer results must match exactly (wrapping as the dtype does).
 *
 * <p>Stateless; the tensors passed in belong to the caller, and {@link #run} uses them on the calling thread.
 */
enum BenchCollective {
    ALL_REDUCE("all_reduce") {
        @Override double busBwFactor(int n) { return 2.0 * (n - 1) / n; }

        @Override Layout layout(long count, int n) { return new Layout(count, count, true); }

        @Override void fill(Buffers b, Setup s) { fillReduced(b.in(), s.rank()); }

        @Override void run(ProcessGroup g, Buffers b, Setup s) { g.allReduce(b.in(), s.op()); }

        @Override Work start(ProcessGroup g, Buffers b, Setup s) { return g.allReduceAsync(b.in(), s.op()); }

        @Override long countWrong(Buffers b, Setup s) { return wrongReduced(b.in(), 0, s); }
    },
    ALL_GATHER("all_gather") {
        @Override double busBwFactor(int n) { return (n - 1) / (double) n; }

        @Override Layout layout(long count, int n) {
            long per = Math.max(1, count / n);
            return new Layout(per, per * n, false);
        }

        @Override void fill(Buffers b, Setup s) { fillMoved(b.in(), s.rank(), 0); }

        @Override void run(ProcessGroup g, Buffers b, Setup s) { g.allGatherIntoTensor(b.out(), b.in()); }

        @Override Work start(ProcessGroup g, Buffers b, Setup s) { return g.allGatherIntoTensorAsync(b.out(), b.in()); }

        @Override long countWrong(Buffers b, Setup s) {
            long per = b.in().numel();
            long wrong = 0;
            for (int src = 0; src < s.ranks(); src++) wrong += wrongMoved(b.out(), src * per, per, src, 0);
            return wrong;
        }
    },
    BROADCAST("broadcast") {
        @Override double busBwFactor(int n) { return 1; }

        @Override Layout layout(long count, int n) { return new Layout(count, count, true); }

        @Override void fill(Buffers b, Setup s) {
            if (s.rank() == s.root()) fillMoved(b.in(), s.root(), 0);
            else b.in().segment().fill((byte) 0);
        }

        @Override void run(ProcessGroup g, Buffers b, Setup s) { g.broadcast(b.in(), s.root()); }

        @Override Work start(ProcessGroup g, Buffers b, Setup s) { return g.broadcastAsync(b.in(), s.root()); }

        @Override long countWrong(Buffers b, Setup s) { return wrongMoved(b.in(), 0, b.in().numel(), s.root(), 0); }
    },
    REDUCE_SCATTER("reduce_scatter") {
        @Override double busBwFactor(int n) { return (n - 1) / (double) n; }

        @Override Layout layout(long count, int n) {
            long per = Math.max(1, count / n);
            return new Layout(per * n, per, false);
        }

        @Override void fill(Buffers b, Setup s) { fillReduced(b.in(), s.rank()); }

        @Override void run(ProcessGroup g, Buffers b, Setup s) { g.reduceScatterTensor(b.out(), b.in(), s.op()); }

        @Override Work start(ProcessGroup g, Buffers b, Setup s) { return g.reduceScatterTensorAsync(b.out(), b.in(), s.op()); }

        /** Rank r keeps part r of the reduced input, so its element k is reduced input element r·per + k. */
        @Override long countWrong(Buffers b, Setup s) { return wrongReduced(b.out(), s.rank() * b.out().numel(), s); }
    },
    ALLTOALL("alltoall") {
        @Override double busBwFactor(int n) { return (n - 1) / (double) n; }

        @Override Layout layout(long count, int n) {
            long per = Math.max(1, count / n);
            return new Layout(per * n, per * n, false);
        }

        /** Part j of rank r's input goes to rank j; it is tagged with both ranks so a misrouted part is caught. */
        @Override void fill(Buffers b, Setup s) {
            long per = b.in().numel() / s.ranks();
            for (int dst = 0; dst < s.ranks(); dst++) fillMoved(b.in().slice(0, dst * per, (dst + 1) * per), s.rank(), 7 * dst);
        }

        @Override void run(ProcessGroup g, Buffers b, Setup s) { g.allToAllSingle(b.out(), b.in(), null, null); }

        @Override Work start(ProcessGroup g, Buffers b, Setup s) { return g.allToAllSingleAsync(b.out(), b.in(), null, null); }

        @Override long countWrong(Buffers b, Setup s) {
            long per = b.out().numel() / s.ranks();
            long wrong = 0;
            for (int src = 0; src < s.ranks(); src++) wrong += wrongMoved(b.out(), src * per, per, src, 7 * s.rank());
            return wrong;
        }
    },
    SENDRECV("sendrecv") {
        @Override double busBwFactor(int n) { return 1; }

        @Override Layout layout(long count, int n) { return new Layout(count, count, false); }

        @Override void fill(Buffers b, Setup s) { fillMoved(b.in(), s.rank(), 0); }

        /** A ring: send to the next rank and receive from the previous one, both in flight at once. */
        @Override void run(ProcessGroup g, Buffers b, Setup s) {
            int n = s.ranks();
            Work send = g.isend(b.in(), (s.rank() + 1) % n, 0);
            Work recv = g.irecv(b.out(), (s.rank() - 1 + n) % n, 0);
            send.await();
            recv.await();
        }

        @Override long countWrong(Buffers b, Setup s) {
            int prev = (s.rank() - 1 + s.ranks()) % s.ranks();
            return wrongMoved(b.out(), 0, b.out().numel(), prev, 0);
        }
    };

    /** Element counts of the input and output buffers; in place means one buffer serves as both. */
    record Layout(long inCount, long outCount, boolean inPlace) {
        /** The size nccl-tests reports: the larger of the two buffers. */
        long bytes(DType dtype) { return Math.max(inCount, outCount) * dtype.byteSize(); }
    }

    /** A size's buffers; the output is the input when the collective works in place. The owner closes them. */
    record Buffers(Tensor in, Tensor out) implements AutoCloseable {
        static Buffers allocate(Layout l, DType dtype) {
            Tensor in = Tensor.zeros(dtype, Device.CPU, l.inCount());
            return new Buffers(in, l.inPlace() ? in : Tensor.zeros(dtype, Device.CPU, l.outCount()));
        }

        /** Buffers in {@code g}'s registered memory ({@link ProcessGroup#allocate}), zero-filled. */
        static Buffers allocateRegistered(ProcessGroup g, Layout l, DType dtype) {
            Tensor in = g.allocate(dtype, l.inCount());
            return new Buffers(in, l.inPlace() ? in : g.allocate(dtype, l.outCount()));
        }

        /** Device copies of these buffers (same layout) on {@code device}. */
        Buffers to(Device device) {
            Tensor i = in.to(device);
            return new Buffers(i, out == in ? i : out.to(device));
        }

        /** Copies {@code src}'s contents into these buffers (any devices). */
        void copyFrom(Buffers src) {
            in.copyFrom(src.in);
            if (out != in) out.copyFrom(src.out);
        }

        @Override
        public void close() {
            in.close();
            if (out != in) out.close();
        }
    }

    /** This rank's view of the run: who it is, how many ranks, and the operation's parameters. */
    record Setup(int rank, int ranks, DType dtype, ReduceOp op, int root) {}

    private final String label;

    BenchCollective(String label) { this.label = label; }

    /** The nccl-tests name, e.g. {@code all_reduce}. */
    String label() { return label; }

    /** Whether the collective reduces (its table row shows the operator). */
    boolean reduces() { return this == ALL_REDUCE || this == REDUCE_SCATTER; }

    /** Ranks this collective needs: sendrecv sends to another rank (P2P to this rank is refused), the others run on one. */
    int minRanks() { return this == SENDRECV ? 2 : 1; }

    /** Whether a row's size is the whole tensor of one piece per rank (all_gather's output, reduce_scatter's input, alltoall's). */
    boolean perRankPieces() { return this == ALL_GATHER || this == REDUCE_SCATTER || this == ALLTOALL; }

    /** Whether the collective has a root (its table row shows it). */
    boolean rooted() { return this == BROADCAST; }

    /** busbw = algbw × this factor: the fraction of the data each rank's link must carry (nccl-tests' PERFORMANCE.md). */
    abstract double busBwFactor(int n);

    /** Buffer sizes for a sweep size of {@code count} elements on {@code n} ranks. */
    abstract Layout layout(long count, int n);

    /** Writes this rank's known input. */
    abstract void fill(Buffers b, Setup s);

    /** One operation (blocking). */
    abstract void run(ProcessGroup g, Buffers b, Setup s);

    /**
     * Starts the operation asynchronously and returns its Work; null when the collective has no
     * asynchronous form here (sendrecv, whose {@link #run} already overlaps its two sides), after
     * running it to completion.
     */
    Work start(ProcessGroup g, Buffers b, Setup s) {
        run(g, b, s);
        return null;
    }

    /**
     * Runs the operation {@code times} times: one after the other ({@link #run}), or {@code queued}
     * like PyTorch's loop over NCCL calls: every call started ({@link #start}), then one wait for all,
     * so the device backend has the next one queued while one runs.
     */
    final void repeat(ProcessGroup g, Buffers b, Setup s, int times, boolean queued) {
        if (!queued) {
            for (int i = 0; i < times; i++) run(g, b, s);
            return;
        }
        Work[] works = new Work[times];
        for (int i = 0; i < times; i++) works[i] = start(g, b, s);
        for (Work w : works) if (w != null) w.await();
    }

    /** How many elements of this rank's result differ from the expected values after one {@link #run} on filled buffers. */
    abstract long countWrong(Buffers b, Setup s);

    static BenchCollective parse(String name) {
        String k = name.trim().toLowerCase(Locale.ROOT).replace("-", "").replace("_", "");
        for (BenchCollective c : values()) if (c.label.replace("_", "").equals(k)) return c;
        throw new IllegalArgumentException("Unknown collective '" + name + "': use one of "
                + String.join(", ", Arrays.stream(values()).map(BenchCollective::label).toList()));
    }

    /** picocli converter accepting nccl-tests names. */
    static final class Converter implements CommandLine.ITypeConverter<BenchCollective> {
        @Override
        public BenchCollective convert(String value) {
            try {
                return parse(value);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.TypeConversionException(e.getMessage());
            }
        }
    }

    // ---- known inputs and their checks -------------------------------------------------------

    private static double moved(int src, long i, int salt) { return 1 + Math.floorMod(i + 3L * src + salt, 13L); }

    private static void fillMoved(Tensor t, int src, int salt) {
        for (long i = 0; i < t.numel(); i++) t.setDouble(i, moved(src, i, salt));
    }

    private static long wrongMoved(Tensor t, long offset, long count, int src, int salt) {
        long wrong = 0;
        for (long k = 0; k < count; k++) if (t.getDouble(offset + k) != moved(src, k, salt)) wrong++;
        return wrong;
    }

    /** Reduced input: {@code (rank + 1) · (1 + i mod 3)}. */
    private static void fillReduced(Tensor t, int rank) {
        for (long i = 0; i < t.numel(); i++) t.setDouble(i, (rank + 1) * (1 + i % 3));
    }

    private static long wrongReduced(Tensor t, long offset, Setup s) {
        Expected e = Expected.of(s);
        long wrong = 0;
        for (long k = 0; k < t.numel(); k++) if (!e.matches(t, k, (int) ((offset + k) % 3))) wrong++;
        return wrong;
    }

    /** The expected reduction of the three input classes, exact for integers and with a tolerance for floats. */
    private record Expected(boolean integer, long[] exactLong, double[] exactDouble, double tolerance) {
        static Expected of(Setup s) {
            long[] l = new long[3];
            double[] d = new double[3];
            try (Tensor scratch = Tensor.empty(s.dtype(), Device.CPU, 1)) {
                for (int q = 0; q < 3; q++) {
                    long acc = q + 1;
                    double accD = q + 1;
                    for (int r = 1; r < s.ranks(); r++) {
                        long v = (long) (r + 1) * (q + 1);
                        acc = switch (s.op()) {
                            case SUM, AVG -> acc + v;
                            case PRODUCT -> acc * v;
                            case MIN -> Math.min(acc, v);
                            case MAX -> Math.max(acc, v);
                            case BAND -> acc & v;
                            case BOR -> acc | v;
                            case BXOR -> acc ^ v;
                        };
                        accD = switch (s.op()) {
                            case PRODUCT -> accD * v;
                            case MIN, MAX, BAND, BOR, BXOR -> acc;
                            case SUM, AVG -> accD + v;
                        };
                    }
                    if (s.op() == ReduceOp.AVG) {
                        acc /= s.ranks();
                        accD /= s.ranks();
                    }
                    scratch.setLong(0, acc);
                    l[q] = scratch.getLong(0);
                    // beyond the dtype's largest finite value the right answer is infinity (e.g. a float16
                    // product over 8 ranks: 8! * 3^8 > 65504)
                    if (!s.dtype().isInteger()) scratch.setDouble(0, accD);
                    d[q] = !s.dtype().isInteger() && Double.isInfinite(scratch.getDouble(0)) ? Math.copySign(Double.POSITIVE_INFINITY, accD) : accD;
                }
            }
            return new Expected(s.dtype().isInteger(), l, d, s.ranks() * Math.ulp(1.0) * Math.pow(2, 52 - mantissaBits(s.dtype())));
        }

        boolean matches(Tensor t, long i, int q) {
            if (integer) return t.getLong(i) == exactLong[q];
            double got = t.getDouble(i);
            double want = exactDouble[q];
            if (Double.isInfinite(want)) return got == want;
            return Double.isFinite(got) && Math.abs(got - want) <= tolerance * Math.abs(want);
        }

        private static int mantissaBits(DType dt) {
            return switch (dt) {
                case FLOAT8_E4M3 -> 3;
                case BFLOAT16 -> 7;
                case FLOAT16 -> 10;
                case FLOAT32 -> 23;
                default -> 52;
            };
        }
    }
}
