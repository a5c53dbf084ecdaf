package org.mooncake4j.cli;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.cuda.CudaCollectives;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.RankRemovedException;
import org.mooncake4j.pg.ReduceOp;
import org.mooncake4j.pg.Work;

/**
 * One rank of the GPU check of backend {@code mooncake} (run by {@code pg/gpu-pg.sh} through
 * {@code mooncake4j run}, one process per GPU, each on cuda:LOCAL_RANK). Modes:
 * <ul>
 * <li>{@code grid}: every collective of pgbench (all_reduce, all_gather, broadcast, reduce_scatter,
 *     alltoall, sendrecv) × dtype × reduce op × size on device tensors, each result copied back and
 *     checked element by element against the known inputs (exact for integers and copies, the
 *     dtype's rounding for float reductions); sizes from 1 element up, and 1 GiB for the float32
 *     kernels; then several async all-reduces in flight at once;</li>
 * <li>{@code kill}: the last rank exits abruptly (no shutdown, sockets and GPU mappings torn down by
 *     the OS) as the others enter an all-reduce; the survivors must finish it over themselves, agree
 *     on the mask, report the dropped rank, show it as 0 in the GPU-resident activeRanks, and keep
 *     working (the next all-reduce on a heap rebuilt over the survivors);</li>
 * <li>{@code killsync}: the last rank completes an all-reduce's data phase, skips the kernel's final
 *     sync step ({@link CudaCollectives#withholdFinalSync}) and exits abruptly; the survivors' kernels
 *     time out in that step with their results complete, so the agreement commits the all-reduce as
 *     computed over all ranks, and the next operation reports the rank dropped and runs without it;</li>
 * <li>{@code killqueued}: the survivors start eight all-reduces asynchronously, back to back (queued:
 *     each kernel is checked while the next one runs); the last rank starts the first three, waits
 *     for them and exits abruptly. The survivors' queued operations complete in order: the first
 *     three over all ranks, the fourth (timed out) redone and the ones queued behind it run again
 *     over the survivors, the fourth reporting the rank dropped, on every survivor alike;</li>
 * <li>{@code hang}: the last rank sleeps past the timeout instead; the survivors finish without it
 *     and it is fenced: its next operation fails with {@link RankRemovedException}.</li>
 * <li>{@code stop}: every rank runs all-reduces in a loop and the last rank's whole process is
 *     stopped with SIGSTOP in the middle of them (by a child shell it starts, which sends SIGCONT
 *     past three timeouts); the survivors finish the operation in flight over themselves, agree and
 *     report it dropped, and go on; the stopped rank, once continued, is fenced: the operation it
 *     was in (or its next one) fails with {@link RankRemovedException}.</li>
 * </ul>
 * Every rank prints {@code PASS}/{@code FAIL} lines; the exit status is 1 when anything failed. A group of
 * one rank runs {@code grid} without sendrecv (it prints {@code SKIP}); the other modes need two ranks or
 * more and refuse a group of one.
 */
public final class GpuCheckWorker {
    private GpuCheckWorker() {}

    private static int failures;
    private static int passes;

    public static void main(String[] args) throws Exception {
        String mode = args.length > 0 ? args[0] : "grid";
        int code;
        try (ProcessGroup g = ProcessGroup.builder().backend(ProcessGroup.BACKEND_CUDA).init()) {
            Device dev = Device.cuda(g.cudaDevice());
            switch (mode) {
                case "grid" -> grid(g, dev, args.length > 1 && args[1].equals("--big"));
                case "kill" -> kill(needsTwoRanks(g, mode), dev);
                case "killsync" -> killSync(needsTwoRanks(g, mode), dev);
                case "killqueued" -> killQueued(needsTwoRanks(g, mode), dev);
                case "hang" -> hang(needsTwoRanks(g, mode), dev);
                case "stop" -> stop(needsTwoRanks(g, mode), dev);
                default -> throw new IllegalArgumentException("mode " + mode + ": use grid, kill, killsync, killqueued, hang or stop");
            }
            System.out.printf(Locale.ROOT, "SUMMARY rank %d mode %s: %d passed, %d failed%n", g.rank(), mode, passes, failures);
            code = failures == 0 ? 0 : 1;
        }
        System.exit(code);
    }

    /** {@code g}, when it has another rank to go on after the last one fails. */
    private static ProcessGroup needsTwoRanks(ProcessGroup g, String mode) {
        if (g.size() >= 2) return g;
        throw new IllegalArgumentException("mode " + mode + " needs 2 or more ranks (the last rank fails and the others must go on); "
                + "this group has " + g.size() + ". Run it with --nproc-per-node 2 or more (ranks may share a GPU).");
    }

    private static void report(boolean ok, String what) {
        if (ok) passes++;
        else failures++;
        System.out.println((ok ? "PASS " : "FAIL ") + what);
    }

    // ---- grid ------------------------------------------------------------------------------

    private static final DType[] FLOATS = {DType.FLOAT32, DType.BFLOAT16, DType.FLOAT16, DType.FLOAT64};
    private static final DType[] INTS = {DType.INT32, DType.INT64, DType.INT8, DType.UINT8, DType.INT16};
    private static final long[] SIZES = {1, 3, 1000, 65_537, (1 << 20) + 5};

    private static void grid(ProcessGroup g, Device dev, boolean big) {
        int n = g.size();
        long t0 = System.nanoTime();
        for (BenchCollective c : BenchCollective.values()) {
            if (n < c.minRanks()) {
                System.out.println("SKIP " + c.label() + ": needs " + c.minRanks() + " ranks; this group has " + n);
                continue;
            }
            List<DType> dtypes = new ArrayList<>(Arrays.asList(FLOATS));
            dtypes.addAll(Arrays.asList(INTS));
            if (!c.reduces()) dtypes.add(DType.FLOAT8_E4M3);
            for (DType dt : dtypes) {
                for (ReduceOp op : c.reduces() ? opsFor(dt) : List.of(ReduceOp.SUM)) {
                    for (long count : SIZES) check(g, dev, c, dt, op, count * (c == BenchCollective.ALL_REDUCE ? 1 : n), n);
                }
            }
        }
        // the kernel paths at large sizes: 1 GiB all-reduce (float32 and bfloat16), 256 MiB for the others
        long gib = 1L << 30;
        check(g, dev, BenchCollective.ALL_REDUCE, DType.FLOAT32, ReduceOp.SUM, (big ? gib : gib / 8) / 4, n);
        check(g, dev, BenchCollective.ALL_REDUCE, DType.BFLOAT16, ReduceOp.SUM, (big ? gib : gib / 8) / 2, n);
        check(g, dev, BenchCollective.ALL_REDUCE, DType.FLOAT32, ReduceOp.AVG, (64L << 20) / 4 + 3, n);
        for (BenchCollective c : List.of(BenchCollective.ALL_GATHER, BenchCollective.REDUCE_SCATTER, BenchCollective.ALLTOALL)) {
            check(g, dev, c, DType.FLOAT32, ReduceOp.SUM, (256L << 20) / 4, n);
            check(g, dev, c, DType.BFLOAT16, ReduceOp.SUM, (64L << 20) / 2 + n, n);
        }
        asyncInFlight(g, dev);
        System.out.printf(Locale.ROOT, "grid finished in %.1f s%n", (System.nanoTime() - t0) / 1e9);
    }

    private static List<ReduceOp> opsFor(DType dt) {
        List<ReduceOp> ops = new ArrayList<>(List.of(ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG));
        if (dt.isInteger()) ops.addAll(List.of(ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR));
        return ops;
    }

    private static void check(ProcessGroup g, Device dev, BenchCollective c, DType dt, ReduceOp op, long count, int n) {
        BenchCollective.Setup setup = new BenchCollective.Setup(g.rank(), n, dt, op, n - 1);
        BenchCollective.Layout layout = c.layout(count, n);
        long wrong;
        String what = String.format(Locale.ROOT, "%s %s %s %d bytes", c.label(), dt.torchName(), c.reduces() ? BenchOptions.opLabel(op) : "-",
                layout.bytes(dt));
        try (BenchCollective.Buffers h = BenchCollective.Buffers.allocate(layout, dt); BenchCollective.Buffers d = h.to(dev)) {
            c.fill(h, setup);
            d.copyFrom(h);
            c.run(g, d, setup);
            h.copyFrom(d);
            wrong = c.countWrong(h, setup);
        } catch (RuntimeException e) {
            report(false, what + ": " + e);
            return;
        }
        try (Tensor w = Tensor.of(new long[] {wrong})) {
            g.allReduce(w, ReduceOp.SUM);
            wrong = w.getLong(0);
        }
        report(wrong == 0, what + (wrong == 0 ? "" : ": " + wrong + " wrong elements over all ranks"));
    }

    /** Four all-reduces in flight at once on different device tensors, then each checked. */
    private static void asyncInFlight(ProcessGroup g, Device dev) {
        int n = g.size();
        long[] counts = {1000, 1 << 20, 3, 4 << 20};
        List<Tensor> ts = new ArrayList<>();
        List<Work> works = new ArrayList<>();
        for (int i = 0; i < counts.length; i++) {
            float[] v = new float[(int) counts[i]];
            for (int k = 0; k < v.length; k++) v[k] = (g.rank() + 1) * (i + 1) + (k % 7);
            Tensor t = Tensor.of(v).to(dev);
            ts.add(t);
            works.add(g.allReduceAsync(t, ReduceOp.SUM));
        }
        long wrong = 0;
        for (int i = 0; i < counts.length; i++) {
            works.get(i).await();
            float[] got = ts.get(i).toFloatArray();
            for (int k = 0; k < got.length; k++) {
                float want = 0;
                for (int r = 0; r < n; r++) want += (r + 1) * (i + 1) + (k % 7);
                if (got[k] != want) wrong++;
            }
            ts.get(i).close();
        }
        report(wrong == 0, "4 async all_reduce in flight" + (wrong == 0 ? "" : ": " + wrong + " wrong elements on rank " + g.rank()));
    }

    // ---- failures ----------------------------------------------------------------------------

    private static final long FAULT_COUNT = (4 << 20) + 1; // two-shot sizes: the kernel path with a backup

    private static Tensor filled(Device dev, int rank) {
        float[] v = new float[(int) FAULT_COUNT];
        for (int k = 0; k < v.length; k++) v[k] = (rank + 1) + (k % 5);
        return Tensor.of(v).to(dev);
    }

    /** Wrong elements of an all-reduce over {@code members}. */
    private static long wrongSum(Tensor t, int[] members) {
        float[] got = t.toFloatArray();
        long wrong = 0;
        for (int k = 0; k < got.length; k++) {
            float want = 0;
            for (int r : members) want += (r + 1) + (k % 5);
            if (got[k] != want) wrong++;
        }
        return wrong;
    }

    private static int[] range(int n) {
        int[] a = new int[n];
        for (int i = 0; i < n; i++) a[i] = i;
        return a;
    }

    /** An all-reduce over all {@code n} ranks, checked, then a barrier: the common start of the failure modes. */
    private static void allReduceBeforeFailure(ProcessGroup g, Device dev, int n) {
        try (Tensor t = filled(dev, g.rank())) {
            g.allReduce(t, ReduceOp.SUM);
            report(wrongSum(t, range(n)) == 0, "all_reduce over all " + n + " ranks before the failure");
        }
        g.barrier();
    }

    private static void kill(ProcessGroup g, Device dev) {
        int n = g.size();
        int victim = n - 1;
        allReduceBeforeFailure(g, dev, n);
        if (g.rank() == victim) {
            System.out.println("rank " + victim + " exits abruptly now (halt: no shutdown, no goodbye)");
            System.out.flush();
            Runtime.getRuntime().halt(0);
        }
        survive(g, dev, n, victim, "killed");
    }

    private static void killSync(ProcessGroup g, Device dev) {
        int n = g.size();
        int victim = n - 1;
        allReduceBeforeFailure(g, dev, n);
        try (Tensor t = filled(dev, g.rank())) {
            if (g.rank() == victim) {
                CudaCollectives.withholdFinalSync(true);
                g.allReduce(t, ReduceOp.SUM);
                System.out.println("rank " + victim + " completed the all_reduce's data phase, skipped its final sync step, and exits"
                        + " abruptly now");
                System.out.flush();
                Runtime.getRuntime().halt(0);
            }
            long t0 = System.nanoTime();
            g.allReduce(t, ReduceOp.SUM);
            double ms = (System.nanoTime() - t0) / 1e6;
            long wrong = wrongSum(t, range(n));
            report(wrong == 0, String.format(Locale.ROOT, "all_reduce whose final sync step rank %d skipped: committed as computed over"
                    + " all %d ranks in %.0f ms (timeout %d ms)%s", victim, n, ms, g.timeout().toMillis(), wrong == 0 ? ""
                    : ": " + wrong + " elements differ from the sum over all ranks"));
            report(ms > g.timeout().toMillis() * 0.9 && ms < g.timeout().toMillis() * 3 + 5000, String.format(Locale.ROOT,
                    "it waited for the final sync step's timeout, within the bound: %.0f ms", ms));
            report(g.lastDroppedRanks().length == 0, "the committed operation reports no dropped rank: "
                    + Arrays.toString(g.lastDroppedRanks()) + " (the change is reported with the next operation, on every member alike)");
        }
        int[] survivors = Arrays.copyOf(range(n), n - 1);
        try (Tensor t = filled(dev, g.rank())) {
            g.allReduce(t, ReduceOp.SUM);
            report(wrongSum(t, survivors) == 0 && Arrays.equals(g.lastDroppedRanks(), new int[] {victim}),
                    "next all_reduce over the survivors " + Arrays.toString(survivors) + ", dropped reported: "
                    + Arrays.toString(g.lastDroppedRanks()));
            int[] mask = g.activeRanks().toIntArray();
            report(mask[victim] == 0, "GPU-resident activeRanks after the failure: " + Arrays.toString(mask));
        }
    }

    private static void killQueued(ProcessGroup g, Device dev) {
        int n = g.size();
        int victim = n - 1;
        int ops = 8;
        int[] survivors = Arrays.copyOf(range(n), n - 1);
        List<Tensor> ts = new ArrayList<>();
        try {
            for (int i = 0; i < ops; i++) ts.add(filled(dev, g.rank()));
            // warm: the same queue of operations over all ranks, checked
            List<Work> works = new ArrayList<>();
            for (Tensor t : ts) works.add(g.allReduceAsync(t, ReduceOp.SUM));
            long wrong = 0;
            for (int i = 0; i < ops; i++) {
                works.get(i).await();
                wrong += wrongSum(ts.get(i), range(n));
            }
            report(wrong == 0, ops + " queued all_reduces over all " + n + " ranks" + (wrong == 0 ? "" : ": " + wrong + " wrong elements"));
            for (int i = 0; i < ops; i++) {
                try (Tensor fresh = filled(dev, g.rank())) {
                    ts.get(i).copyFrom(fresh);
                }
            }
            g.barrier();
            works.clear();
            long t0 = System.nanoTime();
            // the victim starts only the first three (it never reaches the fourth), the others all eight
            for (int i = 0; i < (g.rank() == victim ? 3 : ops); i++) works.add(g.allReduceAsync(ts.get(i), ReduceOp.SUM));
            if (g.rank() == victim) {
                works.get(2).await();
                System.out.println("rank " + victim + " finished the first 3 of the " + ops + " queued all_reduces and exits abruptly now");
                System.out.flush();
                Runtime.getRuntime().halt(0);
            }
            int firstOverSurvivors = -1;
            boolean ordered = true;
            StringBuilder outcome = new StringBuilder();
            for (int i = 0; i < ops; i++) {
                works.get(i).await();
                boolean overAll = wrongSum(ts.get(i), range(n)) == 0;
                boolean overSurvivors = wrongSum(ts.get(i), survivors) == 0;
                int[] dropped = works.get(i).droppedRanks();
                outcome.append(overAll ? 'A' : overSurvivors ? 'S' : '?');
                if (overSurvivors && firstOverSurvivors < 0) firstOverSurvivors = i;
                if (!overAll && !overSurvivors) ordered = false;
                if (overAll && firstOverSurvivors >= 0) ordered = false;   // no result over all ranks after the switch
                if (i == firstOverSurvivors && !Arrays.equals(dropped, new int[] {victim})) ordered = false;
            }
            double ms = (System.nanoTime() - t0) / 1e6;
            report(ordered && firstOverSurvivors == 3, "queued all_reduces with rank " + victim + " killed after the third: " + outcome
                    + " (A over all ranks, S over the survivors " + Arrays.toString(survivors) + "), in " + Math.round(ms) + " ms");
            try (Tensor in = Tensor.of(new float[] {firstOverSurvivors}).to(dev); Tensor out = Tensor.zeros(DType.FLOAT32, dev, n)) {
                g.allGatherIntoTensor(out, in);
                float[] got = out.toFloatArray();
                boolean same = true;
                for (int r : survivors) same &= got[r] == firstOverSurvivors;
                report(same, "the survivors switch at the same operation: " + Arrays.toString(got));
            }
            int[] mask = g.activeRanks().toIntArray();
            report(mask[victim] == 0, "GPU-resident activeRanks after the failure: " + Arrays.toString(mask));
        } finally {
            for (Tensor t : ts) t.close();
        }
    }

    private static void hang(ProcessGroup g, Device dev) throws InterruptedException {
        int n = g.size();
        int victim = n - 1;
        g.barrier();
        if (g.rank() == victim) {
            long sleepMs = 3 * g.timeout().toMillis() + 2000;
            System.out.println("rank " + victim + " stops responding for " + sleepMs + " ms");
            Thread.sleep(sleepMs);
            try (Tensor t = filled(dev, g.rank())) {
                g.allReduce(t, ReduceOp.SUM);
                report(false, "the hung rank's all_reduce after waking was accepted; it should be fenced");
            } catch (RankRemovedException e) {
                report(true, "the hung rank is fenced: " + e.getMessage().substring(0, Math.min(120, e.getMessage().length())) + "...");
            }
            return;
        }
        survive(g, dev, n, victim, "hung");
        // stay alive until the victim has woken and been refused (its fencing needs the store only)
        Thread.sleep(3 * g.timeout().toMillis() + 4000);
    }

    private static void stop(ProcessGroup g, Device dev) throws Exception {
        int n = g.size();
        int victim = n - 1;
        long stoppedMs = 3 * g.timeout().toMillis() + 2000;
        long loopEnd = System.nanoTime() + (stoppedMs + 4 * g.timeout().toMillis()) * 1_000_000L;
        g.barrier();
        if (g.rank() == victim) {
            long pid = ProcessHandle.current().pid();
            System.out.println("rank " + victim + " (pid " + pid + ") is stopped with SIGSTOP in 300 ms, mid all_reduce loop, and continued "
                    + stoppedMs + " ms later");
            System.out.flush();
            new ProcessBuilder("sh", "-c", "sleep 0.3; kill -STOP " + pid + "; sleep " + stoppedMs / 1000.0 + "; kill -CONT " + pid)
                    .inheritIO().start();
        }
        int[] survivors = Arrays.copyOf(range(n), n - 1);
        int before = 0;
        try (Tensor t = filled(dev, g.rank())) {
            while (System.nanoTime() < loopEnd) {
                try {
                    g.allReduce(t, ReduceOp.SUM);
                } catch (RankRemovedException e) {
                    report(g.rank() == victim, "rank " + g.rank() + " is fenced after SIGCONT: "
                            + e.getMessage().substring(0, Math.min(120, e.getMessage().length())) + "...");
                    return;
                }
                int[] dropped = g.lastDroppedRanks();
                if (dropped.length > 0) {
                    // redone over the survivors (stopped before its data arrived), or committed as computed over all
                    // ranks (stopped in the sync step, with every member's data in): either, but the same everywhere
                    boolean overSurvivors = wrongSum(t, survivors) == 0;
                    boolean overAll = wrongSum(t, range(n)) == 0;
                    report(g.rank() != victim && Arrays.equals(dropped, new int[] {victim}) && (overSurvivors || overAll),
                            "all_reduce #" + (before + 1) + " with rank " + victim + " stopped: dropped " + Arrays.toString(dropped)
                            + ", result " + (overSurvivors ? "redone over " + Arrays.toString(survivors)
                            : overAll ? "committed as computed over all " + n + " ranks" : "WRONG"));
                    float code = overSurvivors ? 1f : overAll ? 2f : 3f;
                    try (Tensor in = Tensor.of(new float[] {code}).to(dev); Tensor out = Tensor.zeros(DType.FLOAT32, dev, n)) {
                        g.allGatherIntoTensor(out, in);
                        float[] got = out.toFloatArray();
                        boolean same = true;
                        for (int r : survivors) same &= got[r] == code;
                        report(same, "the survivors agree on that outcome: " + Arrays.toString(got) + " (1 redone, 2 committed)");
                    }
                    int[] mask = g.activeRanks().toIntArray();
                    report(mask[victim] == 0, "GPU-resident activeRanks after the stop: " + Arrays.toString(mask));
                    break;
                }
                if (before == 0 && wrongSum(t, range(n)) != 0) report(false, "first all_reduce over all ranks is wrong");
                before++;
                try (Tensor fresh = filled(dev, g.rank())) {
                    t.copyFrom(fresh);
                }
            }
        }
        if (g.rank() == victim) {
            report(false, "the stopped rank was never fenced: " + before + " all_reduces accepted");
            return;
        }
        report(before > 0, before + " all_reduces over all " + n + " ranks before the stop took effect");
        try (Tensor t = filled(dev, g.rank())) {
            g.allReduce(t, ReduceOp.SUM);
            report(wrongSum(t, survivors) == 0, "next all_reduce over the survivors (epoch " + g.epoch() + ")");
        }
        // stay alive until the stopped rank has been continued and refused (its fencing needs the store)
        Thread.sleep(Math.max(0, (loopEnd - System.nanoTime()) / 1_000_000L));
    }

    private static void survive(ProcessGroup g, Device dev, int n, int victim, String how) {
        int[] survivors = Arrays.copyOf(range(n), n - 1);
        try (Tensor t = filled(dev, g.rank())) {
            long t0 = System.nanoTime();
            g.allReduce(t, ReduceOp.SUM);
            double ms = (System.nanoTime() - t0) / 1e6;
            long wrong = wrongSum(t, survivors);
            report(wrong == 0, String.format(Locale.ROOT, "all_reduce with rank %d %s finished over %s in %.0f ms (timeout %d ms)%s", victim, how,
                    Arrays.toString(survivors), ms, g.timeout().toMillis(), wrong == 0 ? "" : ": " + wrong + " wrong elements"));
            report(ms < g.timeout().toMillis() * 3 + 5000, String.format(Locale.ROOT, "completion within the bound: %.0f ms", ms));
            report(Arrays.equals(g.lastDroppedRanks(), new int[] {victim}), "dropped ranks reported: " + Arrays.toString(g.lastDroppedRanks()));
            int[] mask = g.activeRanks().toIntArray();
            report(g.activeRanks().device().isCuda() && mask[victim] == 0, "GPU-resident activeRanks after the failure: " + Arrays.toString(mask)
                    + " on " + g.activeRanks().device());
        }
        try (Tensor t = filled(dev, g.rank())) {
            g.allReduce(t, ReduceOp.SUM);
            report(wrongSum(t, survivors) == 0, "next all_reduce over the survivors (heap rebuilt for epoch " + g.epoch() + ")");
        }
        try (Tensor in = Tensor.of(new float[] {g.rank() + 1f}).to(dev); Tensor out = Tensor.zeros(DType.FLOAT32, dev, n)) {
            g.allGatherIntoTensor(out, in);
            float[] got = out.toFloatArray();
            boolean ok = true;
            for (int r = 0; r < n; r++) ok &= got[r] == (r == victim ? 0f : r + 1f);
            report(ok, "all_gather_into_tensor after the failure (dropped rank's part zero): " + Arrays.toString(got));
        }
    }
}
