package org.mooncake4j.cli;

import org.mooncake4j.core.internal.CompilerQueue;
import java.io.IOException;
import java.lang.management.CompilationMXBean;
import java.lang.management.ManagementFactory;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;
import picocli.CommandLine;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

/**
 * One rank of {@code pgbench}, started by {@link PgBenchCommand} through {@link WorkerLauncher}
 * (rank, world size and store come from the environment). For each size it allocates the buffers
 * once, checks one result against the known inputs (with {@code -c 1}), waits until the JIT
 * compiles nothing ({@link CompilerQueue}), runs the warmup (which also wakes the cores that the
 * wait let idle: a first call after an idle spell paid 1-3 ms on a 2-vCPU VM), meets the other
 * ranks at a barrier, times {@code iters} back-to-back operations with {@link System#nanoTime()}
 * (on a GPU queued, as PyTorch's loop over NCCL calls is: all started asynchronously, then one wait),
 * and takes the maximum of the per-iteration time over ranks (an all_reduce MAX of a float64).
 * Rank 0 prints the nccl-tests table as it goes and writes the result file. Exits with 1 on rank 0
 * when any element was wrong. Single-threaded; with {@code --cpu-bind auto} (the default) that
 * thread is bound to a CPU of its own when the host has one but fewer than two per rank
 * ({@link Waiter#bindCallingThread}).
 */
public final class PgBenchWorker {
    /** The worker's arguments: the shared benchmark flags plus where rank 0 writes the rows. */
    static final class Args {
        @Mixin
        BenchOptions options = new BenchOptions();

        @Option(names = "--results", required = true)
        Path results;
    }

    private PgBenchWorker() {}

    public static void main(String[] argv) throws IOException {
        Args a = CommandLine.populateCommand(new Args(), argv);
        System.exit(run(a.options, a.results));
    }

    static int run(BenchOptions o, Path results) throws IOException {
        DType dtype = o.dtype();
        ReduceOp op = o.op();
        BenchCollective c = o.collective;
        try (ProcessGroup g = ProcessGroup.builder().backend(o.backend).init();
             Tensor time = Tensor.zeros(DType.FLOAT64, Device.CPU, 1);
             Tensor wrongCount = Tensor.zeros(DType.INT64, Device.CPU, 1);
             Tensor word = Tensor.zeros(DType.INT64, Device.CPU, 1)) {
            Device dev = g.cudaDevice() >= 0 ? Device.cuda(g.cudaDevice()) : Device.CPU; // --device cuda goes with --backend mooncake
            // on the GPU, calls are queued as PyTorch's loop over NCCL calls queues them (one wait per row)
            boolean queued = !dev.isCpu();
            int rank = g.rank();
            int n = g.size();
            BenchCollective.Setup setup = new BenchCollective.Setup(rank, n, dtype, op, o.root);
            String binding = bindThread(o, Integer.parseInt(System.getenv().getOrDefault("LOCAL_RANK", String.valueOf(rank))));
            if (rank == 0) printPreamble(o, n, binding, queued);
            warmUpCompiler(g, o, c, dtype, setup, n, dev, time, wrongCount, word, queued);
            List<BenchResults.Row> rows = new ArrayList<>();
            long totalWrong = 0;
            for (long size : o.sizes()) {
                BenchCollective.Layout layout = c.layout(Math.max(1, size / dtype.byteSize()), n);
                long wrong = -1;
                double us;
                try (BenchCollective.Buffers b = buffers(g, o, layout, dtype, dev);
                     BenchCollective.Buffers d = dev.isCpu() ? b : b.to(dev)) {
                    if (o.check == 1) {
                        c.fill(b, setup);
                        if (d != b) d.copyFrom(b);
                        c.run(g, d, setup);
                        if (d != b) b.copyFrom(d);
                        wrong = c.countWrong(b, setup);
                    }
                    warmUpRow(g, c, d, setup, o.warmup, queued, rank, size, word);
                    g.barrier();
                    int iters = o.itersFor(layout.bytes(dtype), n);
                    long t0 = System.nanoTime();
                    c.repeat(g, d, setup, iters, queued);
                    us = (System.nanoTime() - t0) / 1e3 / iters;
                }
                time.setDouble(0, us);
                g.allReduce(time, ReduceOp.MAX);
                us = time.getDouble(0);
                if (wrong >= 0) {
                    wrongCount.setLong(0, wrong);
                    g.allReduce(wrongCount, ReduceOp.SUM);
                    wrong = wrongCount.getLong(0);
                    totalWrong += wrong;
                }
                long bytes = layout.bytes(dtype);
                double algbw = bytes / us / 1e3;
                BenchResults.Row row = new BenchResults.Row(c.label(), bytes, bytes / dtype.byteSize(), dtype.torchName(),
                        c.reduces() ? BenchOptions.opLabel(op) : "none", c.rooted() ? o.root : -1, n, us, algbw,
                        algbw * c.busBwFactor(n), wrong);
                rows.add(row);
                if (rank == 0) System.out.println(ResultTable.row(row));
            }
            if (rank == 0) {
                printFooter(rows, o.check == 1, totalWrong);
                BenchResults.write(results, rows);
            }
            g.barrier();
            return rank == 0 && totalWrong > 0 ? 1 : 0;
        }
    }

    /**
     * A row's warm-up: waits until the JIT compiles nothing, runs {@code warmup} calls, and repeats
     * both while any rank compiled during those calls (at most {@link #MAX_ROW_WARMUPS} times). A
     * compilation that a row's own calls start (a method whose counters cross the JIT's thresholds
     * only at this size) runs on a compiler thread beside the ranks; on a host with as many ranks as
     * cores it took 100 ms of a rank's core and made a 16 MiB all_reduce row on a 2-vCPU VM 2-3 times
     * slower when it fell into the timed calls.
     */
    private static void warmUpRow(ProcessGroup g, BenchCollective c, BenchCollective.Buffers d, BenchCollective.Setup setup, int warmup,
                                  boolean queued, int rank, long size, Tensor word) {
        for (int r = 0; ; r++) {
            CompilerQueue.awaitIdleBeforeTiming("pgbench: rank " + rank, "the " + size + "-byte row", "rerun it, or raise -w");
            long before = compileMillis();
            c.repeat(g, d, setup, warmup, queued);
            if (before < 0 || r + 1 >= MAX_ROW_WARMUPS) return;
            if (agreedMax(g, word, compileMillis() > before ? 1 : 0) == 0) return;
        }
    }

    /** This JVM's total JIT compilation time in ms, or -1 where it is not monitored. */
    private static long compileMillis() {
        CompilationMXBean jit = ManagementFactory.getCompilationMXBean();
        return jit != null && jit.isCompilationTimeMonitoringSupported() ? jit.getTotalCompilationTime() : -1;
    }

    /** The largest of every rank's {@code mine} (an all_reduce MAX through {@code word}), so that all ranks decide alike. */
    private static long agreedMax(ProcessGroup g, Tensor word, long mine) {
        word.setLong(0, mine);
        g.allReduce(word, ReduceOp.MAX);
        return word.getLong(0);
    }

    /** The most times {@link #warmUpRow} runs a row's warm-up. */
    static final int MAX_ROW_WARMUPS = 5;

    /**
     * Runs the collective a few thousand times at a small, a medium and a large size before any timing,
     * so the timed iterations run compiled code (the JIT compiles hot methods after thousands of calls,
     * on compiler threads that compete with the ranks for cores; native baselines such as Gloo need no
     * such warm-up), with the run's own bookkeeping in between (the barrier, the float64 MAX of the
     * time, the int64 SUM of wrong elements): compiled code that never saw them would be thrown away
     * at the first row (an uncommon trap) and compiled again during the timed rows. Then it repeats
     * rounds of the same sizes until a round compiles nothing on any rank ({@link CompilationMXBean#getTotalCompilationTime()} unchanged on every rank, agreed with an
     * all_reduce MAX), at most {@link #MAX_WARMUP_ROUNDS}: on a host with few cores a compilation still
     * under way would otherwise stall whole rows of the timed sizes. Every rank runs the same counts.
     */
    private static void warmUpCompiler(ProcessGroup g, BenchOptions o, BenchCollective c, DType dtype, BenchCollective.Setup setup, int n, Device dev,
                                       Tensor time, Tensor wrongCount, Tensor word, boolean queued) {
        // 256 KiB: 5000 calls, so that methods called once per call of the medium and large paths
        // (e.g. the in-place reduction of a registered all_reduce) pass the JIT's thresholds for its
        // optimizing compiler here rather than in some row (5000 invocations; a row's 26 never do).
        // Sizes beyond the sweep's largest are left out (their paths never run in a row), 64 B never.
        long[][] first = upTo(o.maxBytes, new long[][] {{64, 3000}, {256 * 1024, 5000}, {4 << 20, 20}});
        long[][] round = upTo(o.maxBytes, new long[][] {{64, 1000}, {256 * 1024, 20}, {4 << 20, 4}});
        long start = System.nanoTime();
        warmUp(g, o, c, dtype, setup, n, dev, first, time, wrongCount, word, queued);
        for (int r = 0; r < MAX_WARMUP_ROUNDS && compileMillis() >= 0; r++) {
            long before = compileMillis();
            warmUp(g, o, c, dtype, setup, n, dev, round, time, wrongCount, word, queued);
            // 1: compiled in this round; 2: the warm-up has taken its budget (on some rank): stop either way
            long mine = System.nanoTime() - start > WARMUP_TOTAL_BUDGET_NANOS ? 2 : compileMillis() > before ? 1 : 0;
            if (agreedMax(g, word, mine) != 1) break;
        }
        g.barrier();
    }

    /**
     * With {@code --cpu-bind auto}, binds the calling thread (the one that runs every benchmarked
     * call) where the library's spin policy needs it ({@link Waiter#bindCallingThread}). Returns the
     * preamble's description.
     */
    static String bindThread(BenchOptions o, int localRank) {
        return o.cpuBind.equals("none") ? "none (--cpu-bind none)" : Waiter.bindCallingThread(localRank);
    }

    /** The entries of a warm-up plan (byte sizes ascending) up to {@code maxBytes}, and always the first. */
    static long[][] upTo(long maxBytes, long[][] plan) {
        int k = 1;
        while (k < plan.length && plan[k][0] <= maxBytes) k++;
        return java.util.Arrays.copyOf(plan, k);
    }

    /** The warm-up before the sweep starts no further round after this long. */
    static final long WARMUP_TOTAL_BUDGET_NANOS = 30_000_000_000L;

    /** Calls between two checks of a warm-up size's time budget. */
    static final int WARMUP_BATCH = 250;
    /** A warm-up size stops early (on every rank) once it has taken this long. */
    static final long WARMUP_BUDGET_NANOS = 10_000_000_000L;

    /** The most extra warm-up rounds {@link #warmUpCompiler} runs while the JIT is still compiling. */
    static final int MAX_WARMUP_ROUNDS = 20;

    /**
     * Runs the collective {@code plan[i][1]} times at {@code plan[i][0]} bytes, for each i, and after
     * each size the bookkeeping of a timed row (barrier and reductions).
     */
    private static void warmUp(ProcessGroup g, BenchOptions o, BenchCollective c, DType dtype, BenchCollective.Setup setup, int n, Device dev, long[][] plan,
                               Tensor time, Tensor wrongCount, Tensor word, boolean queued) {
        for (long[] p : plan) {
            BenchCollective.Layout layout = c.layout(Math.max(1, p[0] / dtype.byteSize()), n);
            try (BenchCollective.Buffers b = buffers(g, o, layout, dtype, dev);
                 BenchCollective.Buffers d = dev.isCpu() ? b : b.to(dev)) {
                c.fill(b, setup);
                if (d != b) d.copyFrom(b);
                // in batches, stopping early (every rank alike: the slowest rank's time decides) once the
                // size took WARMUP_BUDGET_NANOS, e.g. with unbound ranks sharing cores (--cpu-bind none)
                long start = System.nanoTime();
                for (long done = 0; done < p[1]; ) {
                    int batch = (int) Math.min(WARMUP_BATCH, p[1] - done);
                    c.repeat(g, d, setup, batch, queued);
                    done += batch;
                    if (done >= p[1] || agreedMax(g, word, System.nanoTime() - start) > WARMUP_BUDGET_NANOS) break;
                }
            }
            for (int i = 0; i < 50; i++) {
                g.allReduce(time, ReduceOp.MAX);
                g.allReduce(wrongCount, ReduceOp.SUM);
                g.barrier();
            }
        }
        time.setDouble(0, 0);
        wrongCount.setLong(0, 0);
    }

    /** Host buffers: registered memory with {@code -R 1} on a host backend, else ordinary tensors (copied to the device for backend mooncake). */
    private static BenchCollective.Buffers buffers(ProcessGroup g, BenchOptions o, BenchCollective.Layout layout, DType dtype, Device dev) {
        return o.register == 1 && dev.isCpu() ? BenchCollective.Buffers.allocateRegistered(g, layout, dtype) : BenchCollective.Buffers.allocate(layout, dtype);
    }

    private static void printPreamble(BenchOptions o, int n, String binding, boolean queued) {
        System.out.printf(Locale.ROOT, "# pgbench (mooncake4j %s): %s, backend %s, device %s, %d ranks%n",
                Main.version(), o.collective.label(), o.backend, o.device, n);
        System.out.printf(Locale.ROOT, "# minBytes %d maxBytes %d step: %d(factor) warmup iters: %d iters: %s validation: %d dtype: %s%n",
                o.minBytes, o.maxBytes, o.stepFactor, o.warmup, o.torchIters ? "as PyTorch's baselines (200 / 50 / 10 for pieces below 1 MiB /"
                        + " below 64 MiB / from 64 MiB)" : String.valueOf(o.iters), o.check, o.dtype().torchName());
        if (o.device.equals("cpu")) System.out.println("# buffers: " + (o.register == 1 ? "registered (ProcessGroup.allocate)" : "ordinary tensors"));
        System.out.println("# cpu binding: " + binding);
        System.out.println("# calls: " + (queued ? "queued (each row's calls started asynchronously, one wait for all: as PyTorch queues NCCL calls)"
                : "one after the other (each call returns with its result)"));
        System.out.println("#");
        System.out.println(ResultTable.HEADER);
    }

    private static void printFooter(List<BenchResults.Row> rows, boolean checked, long totalWrong) {
        double avg = rows.stream().mapToDouble(BenchResults.Row::busbw).average().orElse(0);
        if (checked) System.out.println("# Out of bounds values : " + totalWrong + (totalWrong == 0 ? " OK" : " FAILED"));
        System.out.println("# Avg bus bandwidth    : " + ResultTable.bandwidth(avg));
        System.out.println("#");
    }
}
