package org.mooncake4j.cli;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.function.LongSupplier;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;
import org.mooncake4j.pg.Work;

/**
 * One rank of {@code mooncake4j demo}: runs every collective of the process group once on known
 * inputs, counts the elements of its own result that differ from the expected values, then times
 * a few more runs. The wrong counts are summed and the times maximized over ranks with
 * all_reduce, and rank 0 prints one table row per collective. Rank 0 exits with 1 when any check
 * failed; a collective that throws ends its rank with a stack trace (and the launcher stops the rest).
 *
 * <p>Single-threaded; it owns the tensors it allocates and frees them when done.
 */
public final class DemoWorker {
    private static final int TIMED_RUNS = 5;

    /** One demonstrated operation: its known inputs, the operation, and the check of this rank's result; {@code dtype} is null when no data moves. */
    private record Case(String collective, DType dtype, long elements, Runnable prepare, Runnable run, LongSupplier wrong) {}

    private final ProcessGroup g;
    private final int rank;
    private final int n;
    private final List<Tensor> owned = new ArrayList<>();

    private DemoWorker(ProcessGroup g) {
        this.g = g;
        this.rank = g.rank();
        this.n = g.size();
    }

    public static void main(String[] args) {
        int code;
        try (ProcessGroup g = ProcessGroup.builder().backend(ProcessGroup.BACKEND_CPU).init()) {
            DemoWorker w = new DemoWorker(g);
            try {
                code = w.runAll();
            } finally {
                w.owned.forEach(Tensor::close);
            }
        }
        System.exit(code);
    }

    private int runAll() {
        List<Case> cases = List.of(allReduceFloat(), allReduceLong(), broadcast(), allGather(), reduceScatter(), allToAllUneven(),
                gather(), scatter(), barrier(), p2pRing());
        Tensor wrong = tensor(DType.INT64, 1);
        Tensor time = tensor(DType.FLOAT64, 1);
        if (rank == 0) {
            System.out.println("# mooncake4j " + Main.version() + " demo: backend " + g.backend() + ", " + n + " ranks, every result checked on every rank");
            System.out.println(String.format(Locale.ROOT, "%-26s | %-8s | %9s | %-12s | %10s", "collective", "dtype", "elements", "result check", "time (us)"));
            System.out.println("-".repeat(26) + "-+-" + "-".repeat(8) + "-+-" + "-".repeat(9) + "-+-" + "-".repeat(12) + "-+-" + "-".repeat(10));
        }
        int failed = 0;
        for (Case c : cases) {
            c.prepare().run();
            c.run().run();
            wrong.setLong(0, c.wrong().getAsLong());
            long t0 = System.nanoTime();
            for (int i = 0; i < TIMED_RUNS; i++) c.run().run();
            time.setDouble(0, (System.nanoTime() - t0) / 1e3 / TIMED_RUNS);
            g.allReduce(wrong, ReduceOp.SUM);
            g.allReduce(time, ReduceOp.MAX);
            long bad = wrong.getLong(0);
            if (bad != 0) failed++;
            if (rank == 0) {
                System.out.println(String.format(Locale.ROOT, "%-26s | %-8s | %9d | %-12s | %10s", c.collective(), c.dtype() == null ? "-" : c.dtype().torchName(),
                        c.elements(), bad == 0 ? "OK" : "WRONG (" + bad + ")", ResultTable.time(time.getDouble(0))));
            }
        }
        g.barrier();
        if (rank == 0) {
            System.out.println(failed == 0 ? "# all " + cases.size() + " checks passed on " + n + " ranks"
                    : "# " + failed + " of " + cases.size() + " checks FAILED: the table shows which");
        }
        return rank == 0 && failed > 0 ? 1 : 0;
    }

    private Tensor tensor(DType dtype, long... shape) {
        Tensor t = Tensor.zeros(dtype, Device.CPU, shape);
        owned.add(t);
        return t;
    }

    private static long countMismatches(Tensor t, long offset, long count, java.util.function.LongToDoubleFunction expected) {
        long bad = 0;
        for (long k = 0; k < count; k++) if (t.getDouble(offset + k) != expected.applyAsDouble(k)) bad++;
        return bad;
    }

    private static void fill(Tensor t, java.util.function.LongToDoubleFunction value) {
        for (long i = 0; i < t.numel(); i++) t.setDouble(i, value.applyAsDouble(i));
    }

    /** Sum of (rank+1) over ranks. */
    private long rankSum() { return (long) n * (n + 1) / 2; }

    // ---- the cases -------------------------------------------------------------------------------

    /** 4 MiB: large enough for the pipelined path; integers in float32, so the sum is exact. */
    private Case allReduceFloat() {
        Tensor t = tensor(DType.FLOAT32, 1 << 20);
        return new Case("all_reduce (sum)", DType.FLOAT32, t.numel(),
                () -> fill(t, i -> (rank + 1) * (1 + i % 3)),
                () -> g.allReduce(t, ReduceOp.SUM),
                () -> countMismatches(t, 0, t.numel(), i -> (1 + i % 3) * rankSum()));
    }

    /** Values above 2^53: only an exact integer path gets the low bits right. */
    private Case allReduceLong() {
        Tensor t = tensor(DType.INT64, 4096);
        return new Case("all_reduce (sum)", DType.INT64, t.numel(),
                () -> { for (long i = 0; i < t.numel(); i++) t.setLong(i, (rank + 1L) * (1L << 50) + i + 1); },
                () -> g.allReduce(t, ReduceOp.SUM),
                () -> {
                    long bad = 0;
                    for (long i = 0; i < t.numel(); i++) if (t.getLong(i) != rankSum() * (1L << 50) + n * (i + 1)) bad++;
                    return bad;
                });
    }

    private Case broadcast() {
        int root = n - 1;
        Tensor t = tensor(DType.FLOAT32, 65536);
        return new Case("broadcast (root " + root + ")", DType.FLOAT32, t.numel(),
                () -> fill(t, i -> rank == root ? 1 + i % 1000 : 0),
                () -> g.broadcast(t, root),
                () -> countMismatches(t, 0, t.numel(), i -> 1 + i % 1000));
    }

    /** The list form: one output tensor per rank. */
    private Case allGather() {
        Tensor in = tensor(DType.FLOAT32, 16384);
        List<Tensor> out = new ArrayList<>();
        for (int r = 0; r < n; r++) out.add(tensor(DType.FLOAT32, 16384));
        return new Case("all_gather", DType.FLOAT32, in.numel(),
                () -> fill(in, i -> rank * 65536.0 + i),
                () -> g.allGather(out, in),
                () -> {
                    long bad = 0;
                    for (int s = 0; s < n; s++) {
                        int src = s;
                        bad += countMismatches(out.get(s), 0, in.numel(), i -> src * 65536.0 + i);
                    }
                    return bad;
                });
    }

    private Case reduceScatter() {
        long per = 8192;
        Tensor in = tensor(DType.FLOAT32, per * n);
        Tensor out = tensor(DType.FLOAT32, per);
        return new Case("reduce_scatter (sum)", DType.FLOAT32, in.numel(),
                () -> fill(in, i -> (rank + 1) * (1 + i % 5)),
                () -> g.reduceScatterTensor(out, in, ReduceOp.SUM),
                () -> countMismatches(out, 0, per, k -> (1 + (rank * per + k) % 5) * rankSum()));
    }

    /**
     * Uneven splits: rank r sends 1 + (r + j) mod 3 rows of 8 to rank j. Each value names its
     * sender, receiver, row and column, so a row in the wrong place is caught.
     */
    private Case allToAllUneven() {
        int width = 8;
        long[] inSplits = new long[n];
        long[] outSplits = new long[n];
        for (int j = 0; j < n; j++) {
            inSplits[j] = 1 + (rank + j) % 3;
            outSplits[j] = 1 + (j + rank) % 3;
        }
        long inRows = 0;
        long outRows = 0;
        for (int j = 0; j < n; j++) {
            inRows += inSplits[j];
            outRows += outSplits[j];
        }
        Tensor in = tensor(DType.FLOAT32, inRows, width);
        Tensor out = tensor(DType.FLOAT32, outRows, width);
        return new Case("all_to_all_single (uneven)", DType.FLOAT32, in.numel(),
                () -> {
                    long row = 0;
                    for (int j = 0; j < n; j++) {
                        for (long t = 0; t < inSplits[j]; t++, row++) {
                            for (int c = 0; c < width; c++) in.setDouble(row * width + c, rank * 10000 + j * 100 + t * 10 + c);
                        }
                    }
                },
                () -> g.allToAllSingle(out, in, outSplits, inSplits),
                () -> {
                    long bad = 0;
                    long row = 0;
                    for (int s = 0; s < n; s++) {
                        for (long t = 0; t < outSplits[s]; t++, row++) {
                            for (int c = 0; c < width; c++) if (out.getDouble(row * width + c) != s * 10000 + rank * 100 + t * 10 + c) bad++;
                        }
                    }
                    return bad;
                });
    }

    private Case gather() {
        Tensor in = tensor(DType.FLOAT32, 4096);
        List<Tensor> out = new ArrayList<>();
        if (rank == 0) for (int r = 0; r < n; r++) out.add(tensor(DType.FLOAT32, 4096));
        return new Case("gather (root 0)", DType.FLOAT32, in.numel(),
                () -> fill(in, i -> rank * 10000 + i),
                () -> g.gather(in, out, 0),
                () -> {
                    long bad = 0;
                    for (int s = 0; s < out.size(); s++) {
                        int src = s;
                        bad += countMismatches(out.get(s), 0, in.numel(), i -> src * 10000 + i);
                    }
                    return bad;
                });
    }

    private Case scatter() {
        Tensor out = tensor(DType.FLOAT32, 4096);
        List<Tensor> in = new ArrayList<>();
        if (rank == 0) for (int r = 0; r < n; r++) in.add(tensor(DType.FLOAT32, 4096));
        return new Case("scatter (root 0)", DType.FLOAT32, out.numel(),
                () -> {
                    for (int j = 0; j < in.size(); j++) {
                        int dst = j;
                        fill(in.get(j), i -> dst * 10000 + i);
                    }
                    fill(out, i -> -1);
                },
                () -> g.scatter(out, in, 0),
                () -> countMismatches(out, 0, out.numel(), i -> rank * 10000 + i));
    }

    /** Nothing to compare: returning at all on every rank is the result. */
    private Case barrier() {
        return new Case("barrier", null, 0, () -> { }, g::barrier, () -> 0);
    }

    /** isend to the next rank and irecv from the previous one, both in flight at once. */
    private Case p2pRing() {
        Tensor send = tensor(DType.FLOAT32, 65536);
        Tensor recv = tensor(DType.FLOAT32, 65536);
        int next = (rank + 1) % n;
        int prev = (rank - 1 + n) % n;
        return new Case("send/recv ring (tag 7)", DType.FLOAT32, send.numel(),
                () -> fill(send, i -> rank * 100000 + i % 50000),
                () -> {
                    Work s = g.isend(send, next, 7);
                    Work r = g.irecv(recv, prev, 7);
                    s.await();
                    r.await();
                },
                () -> countMismatches(recv, 0, recv.numel(), i -> prev * 100000 + i % 50000));
    }
}
