package org.mooncake4j.cli;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.CompilerQueue;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.cuda.CudaDevice;
import org.mooncake4j.ep.CombineResult;
import org.mooncake4j.ep.DispatchResult;
import org.mooncake4j.ep.EpBuffer;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;
import picocli.CommandLine;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

/**
 * One rank of {@code epbench}, started by {@link EpBenchCommand} through {@link WorkerLauncher}. It
 * builds an {@link EpBuffer} sized with {@link EpBuffer#sizeHint} for the run's shape, draws its tokens
 * (bf16, uniform in (-1, 1)) and its routing (each token picks {@code topk} distinct experts uniformly,
 * weights uniform and normalised to sum 1) from {@code seed + rank}, and puts them, the buffer's data
 * path ({@code new EpBuffer(group, bytes, device)}) and {@code activeRanks} on the run's device.
 *
 * <p>Timing: after the warm-up and a wait until the JIT compiles nothing ({@link CompilerQueue}; again
 * before the back-to-back loop), each iteration starts with a process-group barrier (outside the timed
 * region), then times {@code dispatch} and {@code combine} (zero-copy, on the dispatch's combine buffer
 * as the local experts left it) separately with {@link System#nanoTime()}, both with
 * {@code timeoutUs = -1} and no async or hook; with {@code --device cuda} each phase ends with a device
 * synchronize. Per iteration the slowest rank's time counts (an all_reduce MAX at the end); rank 0
 * reports the median, mean and minimum over iterations, and the logical bandwidth per rank
 * {@code bytes per valid selection × valid selections / time} (see {@link EpBenchOptions}), prints the
 * table and writes the result file.
 *
 * <p>Then the back-to-back loop, timed like {@code torch_baselines.py} times its all_to_all baseline:
 * one barrier, then {@code iters} iterations of dispatch + combine queued with asyncFinish = true (no
 * barrier, host wait or device synchronize between them: the calls' work runs in order on the
 * buffer's stream, as the baseline's all_to_all calls run in order on theirs), one wait for the last
 * combine at the end, one host timer over the loop; {@code loop_us_per_iteration} is the slowest
 * rank's loop time over {@code iters}.
 *
 * <p>Single-threaded; owns its group, buffer and tensors.
 */
public final class EpBenchWorker {
    static final String HEADER = String.format(Locale.ROOT, "%-16s | %9s | %10s | %11s | %11s | %11s | %13s | %11s",
            "phase", "bytes/sel", "selections", "median (us)", "mean (us)", "min (us)", "GB/s (median)", "GB/s (mean)");

    /** The worker's arguments: the benchmark flags plus where rank 0 writes the result file. */
    static final class Args {
        @Mixin
        EpBenchOptions options = new EpBenchOptions();

        @Option(names = "--results", required = true)
        Path results;
    }

    private EpBenchWorker() {}

    public static void main(String[] argv) throws IOException {
        Args a = CommandLine.populateCommand(new Args(), argv);
        int code;
        try {
            code = run(a.options, a.results);
        } catch (IllegalStateException | IllegalArgumentException e) {
            System.err.println(e.getMessage());
            for (Throwable c = e.getCause(); c != null; c = c.getCause()) System.err.println("  caused by: " + c);
            code = 1;
        }
        System.exit(code);
    }

    static int run(EpBenchOptions o, Path results) throws IOException {
        int localRank = Integer.parseInt(System.getenv().getOrDefault("LOCAL_RANK", "0"));
        try (ProcessGroup g = ProcessGroup.builder().backend(o.backend).init()) {
            int rank = g.rank(), n = g.worldSize();
            if (n != o.ranks) throw new IllegalStateException("epbench: WORLD_SIZE is " + n + " but --ranks is " + o.ranks);
            Device device = o.device(localRank);
            Inputs in;
            try {
                in = Inputs.draw(o, rank, device);
            } catch (RuntimeException e) {
                throw new IllegalStateException("epbench --device " + o.device + ": rank " + rank + " could not put its tensors on " + device + ": " + e.getMessage(), e);
            }
            double[] times = new double[2 * o.iters + 1];
            try (in; EpBuffer buf = new EpBuffer(g, EpBuffer.sizeHint(o.tokens, o.hidden, n, o.experts), device)) {
                for (int i = 0; i < o.warmup; i++) iteration(o, buf, in, device, null, 0);
                CompilerQueue.awaitIdleBeforeTiming("epbench: rank " + rank, "the per-phase iterations", "");
                for (int i = 0; i < o.iters; i++) {
                    g.barrier();
                    iteration(o, buf, in, device, times, i);
                }
                CompilerQueue.awaitIdleBeforeTiming("epbench: rank " + rank, "the back-to-back loop", "");
                g.barrier();
                long t0 = System.nanoTime();
                CombineResult last = null;
                for (int i = 0; i < o.iters; i++) last = combine(buf, in, dispatch(o, buf, in, true), true);
                last.event().currentStreamWait();
                sync(device);
                times[2 * o.iters] = (System.nanoTime() - t0) / 1e3 / o.iters;
            } catch (RuntimeException e) {
                if (device.isCpu()) throw e;
                throw new IllegalStateException("epbench --device cuda: the EpBuffer on " + device + " (rank " + rank + ") failed: " + e.getMessage(), e);
            }
            try (Tensor t = Tensor.of(times)) {
                g.allReduce(t, ReduceOp.MAX);
                times = t.toDoubleArray();
            }
            if (rank == 0) {
                Map<String, Object> report = report(o, n, times);
                print(report);
                Files.writeString(results, Json.write(report));
            }
            g.barrier();
            return 0;
        }
    }

    /**
     * The run's dispatch: {@code timeoutUs = -1}, no hook; {@code queued}: asyncFinish, as in the
     * back-to-back loop (no host wait per call: successive calls' work runs in order on the buffer's
     * stream, like the baseline's all_to_all calls on theirs), else it returns when its work is done.
     */
    private static DispatchResult dispatch(EpBenchOptions o, EpBuffer buf, Inputs in, boolean queued) {
        return buf.dispatch(in.x, in.topkIdx, in.active, o.tokens, o.experts, -1, o.fp8, queued, false);
    }

    /** The run's zero-copy combine of {@code d}, on the dispatch's combine buffer; {@code queued} as for dispatch. */
    private static CombineResult combine(EpBuffer buf, Inputs in, DispatchResult d, boolean queued) {
        Tensor y = buf.nextCombineBuffer(d.handle());
        return buf.combine(y, in.topkIdx, in.topkWeights, in.active, -1, d.handle(), true, queued, false, in.out);
    }

    /** One dispatch and combine; with {@code times}, their microseconds go to times[i] and times[iters + i]. */
    private static void iteration(EpBenchOptions o, EpBuffer buf, Inputs in, Device device, double[] times, int i) {
        long t0 = System.nanoTime();
        DispatchResult d = dispatch(o, buf, in, false);
        sync(device);
        long t1 = System.nanoTime();
        combine(buf, in, d, false);
        sync(device);
        long t2 = System.nanoTime();
        if (times != null) {
            times[i] = (t1 - t0) / 1e3;
            times[o.iters + i] = (t2 - t1) / 1e3;
        }
    }

    private static void sync(Device device) {
        if (device.isCuda()) CudaDevice.get(device.index()).synchronize();
    }

    /** The result file's content: the run's shape, then per phase its bytes, selections, times and bandwidths. */
    static Map<String, Object> report(EpBenchOptions o, int n, double[] times) {
        long selections = (long) o.tokens * o.topk;
        double[] dispatch = Arrays.copyOfRange(times, 0, o.iters), combine = Arrays.copyOfRange(times, o.iters, 2 * o.iters);
        double[] both = new double[o.iters];
        for (int i = 0; i < o.iters; i++) both[i] = dispatch[i] + combine[i];
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("tool", "epbench");
        r.put("version", Main.version());
        r.put("ranks", (long) n);
        r.put("device", o.device);
        r.put("backend", o.backend);
        r.put("tokens", (long) o.tokens);
        r.put("hidden", (long) o.hidden);
        r.put("topk", (long) o.topk);
        r.put("experts", (long) o.experts);
        r.put("fp8", o.fp8);
        r.put("iters", (long) o.iters);
        r.put("warmup", (long) o.warmup);
        r.put("seed", o.seed);
        r.put("timing", "per iteration: barrier, then dispatch and combine timed separately on each rank; the slowest rank's time per iteration");
        r.put("valid_selections_per_rank", selections);
        r.put("dispatch", phase(o.dispatchBytesPerSelection(), selections, dispatch));
        r.put("combine", phase(o.combineBytesPerSelection(), selections, combine));
        Map<String, Object> b = new LinkedHashMap<>();
        b.put("median_us", median(both));
        b.put("mean_us", mean(both));
        b.put("min_us", Arrays.stream(both).min().orElse(Double.NaN));
        r.put("dispatch_combine", b);
        r.put("loop_timing", "one barrier, then iters back-to-back dispatch + combine calls queued with asyncFinish (no barrier,"
                + " host wait or device synchronize between them), one wait at the end, one host timer; the slowest rank's time over iters");
        r.put("loop_us_per_iteration", times[2 * o.iters]);
        return r;
    }

    private static Map<String, Object> phase(long bytesPerSelection, long selections, double[] us) {
        Map<String, Object> p = new LinkedHashMap<>();
        double median = median(us), mean = mean(us);
        p.put("bytes_per_selection", bytesPerSelection);
        p.put("selections", selections);
        p.put("median_us", median);
        p.put("mean_us", mean);
        p.put("min_us", Arrays.stream(us).min().orElse(Double.NaN));
        p.put("gbps_median", gbps(bytesPerSelection * selections, median));
        p.put("gbps_mean", gbps(bytesPerSelection * selections, mean));
        List<Object> all = new ArrayList<>();
        for (double v : us) all.add(v);
        p.put("us", all);
        return p;
    }

    /** Bytes over microseconds in GB/s (10^9 bytes per second). */
    static double gbps(long bytes, double us) { return bytes / us / 1e3; }

    static double median(double[] v) {
        double[] s = v.clone();
        Arrays.sort(s);
        int m = s.length / 2;
        return s.length % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2;
    }

    static double mean(double[] v) { return Arrays.stream(v).average().orElse(Double.NaN); }

    @SuppressWarnings("unchecked")
    private static void print(Map<String, Object> r) {
        boolean fp8 = (Boolean) r.get("fp8");
        long hidden = (Long) r.get("hidden");
        System.out.printf(Locale.ROOT, "# epbench (mooncake4j %s): %d ranks, device %s, backend %s; %d tokens per rank, hidden %d, top-%d of %d experts, %s dispatch%n",
                r.get("version"), r.get("ranks"), r.get("device"), r.get("backend"), r.get("tokens"), hidden, r.get("topk"), r.get("experts"),
                fp8 ? "FP8" : "BF16");
        System.out.printf(Locale.ROOT, "# %d iterations after %d warm-up; a barrier before each (not timed); per iteration the slowest rank's time%n",
                r.get("iters"), r.get("warmup"));
        System.out.printf(Locale.ROOT, "# bytes per valid selection: dispatch %s, combine BF16 2*hidden; GB/s = bytes/sel x selections per rank / time%n",
                fp8 ? "FP8 hidden + hidden/128*4 + 16" : "BF16 2*hidden + 16 (the row and its 16-byte header)");
        System.out.println(HEADER);
        for (String name : List.of("dispatch", "combine")) {
            Map<String, Object> p = (Map<String, Object>) r.get(name);
            System.out.printf(Locale.ROOT, "%-16s | %9d | %10d | %11.2f | %11.2f | %11.2f | %13.3f | %11.3f%n", name, p.get("bytes_per_selection"),
                    p.get("selections"), p.get("median_us"), p.get("mean_us"), p.get("min_us"), p.get("gbps_median"), p.get("gbps_mean"));
        }
        Map<String, Object> b = (Map<String, Object>) r.get("dispatch_combine");
        System.out.printf(Locale.ROOT, "%-16s | %9s | %10s | %11.2f | %11.2f | %11.2f | %13s | %11s%n", "dispatch+combine", "-", "-", b.get("median_us"),
                b.get("mean_us"), b.get("min_us"), "-", "-");
        System.out.printf(Locale.ROOT, "# back-to-back loop (one barrier, %d dispatch + combine calls, one host timer, slowest rank): %.2f us per iteration%n",
                r.get("iters"), r.get("loop_us_per_iteration"));
    }

    /** One rank's tensors on the run's device, drawn on the host from {@code seed + rank}. */
    private record Inputs(Tensor x, Tensor topkIdx, Tensor topkWeights, Tensor active, Tensor out) implements AutoCloseable {
        static Inputs draw(EpBenchOptions o, int rank, Device device) {
            SplittableRandom r = new SplittableRandom(o.seed + rank);
            int t = o.tokens, h = o.hidden, k = o.topk, e = o.experts;
            try (Tensor x = Tensor.empty(DType.BFLOAT16, Device.CPU, t, h);
                 Tensor idx = Tensor.empty(DType.INT64, Device.CPU, t, k);
                 Tensor w = Tensor.empty(DType.FLOAT32, Device.CPU, t, k);
                 Tensor active = Tensor.ones(DType.INT32, Device.CPU, o.ranks)) {
                MemorySegment xs = x.segment(), is = idx.segment(), ws = w.segment();
                for (long i = 0; i < (long) t * h; i++) xs.set(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i, FloatFormats.floatToBf16((float) r.nextDouble(-1, 1)));
                int[] perm = new int[e];
                for (int tok = 0; tok < t; tok++) {
                    for (int q = 0; q < e; q++) perm[q] = q;
                    float sum = 0;
                    float[] wt = new float[k];
                    for (int q = 0; q < k; q++) {
                        int j = q + r.nextInt(e - q);
                        int tmp = perm[q];
                        perm[q] = perm[j];
                        perm[j] = tmp;
                        is.set(ValueLayout.JAVA_LONG_UNALIGNED, 8L * (tok * k + q), perm[q]);
                        sum += wt[q] = (float) r.nextDouble(0.05, 1);
                    }
                    for (int q = 0; q < k; q++) ws.set(ValueLayout.JAVA_FLOAT_UNALIGNED, 4L * (tok * k + q), wt[q] / sum);
                }
                return new Inputs(x.to(device), idx.to(device), w.to(device), active.to(device), Tensor.empty(DType.BFLOAT16, device, t, h));
            }
        }

        @Override
        public void close() {
            for (Tensor t : List.of(x, topkIdx, topkWeights, active, out)) t.close();
        }
    }
}
