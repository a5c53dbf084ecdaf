package org.mooncake4j.ep.gpu;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Random;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.cuda.CudaEvent;
import org.mooncake4j.cuda.CudaStream;
import org.mooncake4j.ep.CombineArithmetic;
import org.mooncake4j.ep.CombineResult;
import org.mooncake4j.ep.DispatchResult;
import org.mooncake4j.ep.EpBuffer;
import org.mooncake4j.pg.MooncakeBackendOptions;
import org.mooncake4j.pg.ProcessGroup;

/**
 * The acceptance check of EpBuffer's CUDA path on a GPU host, one process per GPU (RANK, WORLD_SIZE,
 * LOCAL_RANK, MASTER_ADDR, MASTER_PORT; the group is a mooncake-cpu process group, the EP buffer lives
 * on cuda:LOCAL_RANK).
 *
 * <pre>
 *   EpGpuCheck [check|timing|fail|failrows]
 * </pre>
 *
 * check: the grid fp8 on/off x zero-copy x async x hook, with all ranks active and with the last rank
 * marked inactive up front; 128 tokens, hidden 7168, top-8, 288 experts (rounded down to a multiple of
 * the world size), 10 selections masked with -1. Every recvCount and received row is compared with the
 * host reference (bf16 bit for bit, fp8 bytes and scales bit for bit against the CPU quantization), and
 * the combine, with each expert returning its input, against the float32 sum in slot order of
 * w * (the row the expert saw), rounded to bf16 (for bf16 inputs: x times the sum of valid weights).
 * fail: the last rank exits before dispatch; the others dispatch with timeoutUs = 1 s and must see its
 * activeRanks entry become 0, its tokens absent and its experts dropped from the combine.
 * failrows: the same checks, but the last rank fails in the middle of its dispatch: its counts and rows
 * are sent, their flags never are (CudaEpPath.WITHHOLD_ROW_FLAGS), so the others have started placing
 * its rows when they give up on it.
 * timing: 128 tokens per rank, FP8 dispatch, BF16 combine; WARMUP (default 2000) untimed iterations so
 * that the host path runs compiled code, then ITERS iterations queued back
 * to back (async, no host wait between them) with CUDA events around each phase on the buffer's
 * stream; one JSON line with per-phase GPU microseconds, logical bandwidth and wall time per iteration.
 * With -Dmooncake4j.ep.profile=pdl it also prints each phase's kernel span (from its send's first block
 * to its receive's end, by %globaltimer) and bandwidth, and when each source's counts arrived.
 * Prints one {@code PASS}/{@code FAIL} line per check; exit status 0 when all passed.
 */
public final class EpGpuCheck {
    static final int M = 128, H = 7168, K = 8, MASKED = 10;

    private final ProcessGroup pg;
    private final int rank, n, local, numExperts;
    private final Device dev;
    private int failures;

    private EpGpuCheck(ProcessGroup pg, int localRank) {
        this.pg = pg;
        this.rank = pg.rank();
        this.n = pg.worldSize();
        this.numExperts = 288 / n * n;
        this.local = numExperts / n;
        this.dev = Device.cuda(org.mooncake4j.cuda.CudaDevice.ordinalForLocalRank(localRank));
    }

    public static void main(String[] args) {
        int rank = Integer.parseInt(env("RANK", "0"));
        int ws = Integer.parseInt(env("WORLD_SIZE", "1"));
        int localRank = Integer.parseInt(env("LOCAL_RANK", Integer.toString(rank)));
        String mode = args.length > 0 ? args[0] : "check";
        int status;
        try {
            // failrows: the last rank's dispatch sends its counts and rows but not the rows' flags
            if (mode.equals("failrows") && rank == ws - 1) System.setProperty("mooncake4j.ep.fault.withholdRowFlags", "true");
            ProcessGroup pg = ProcessGroup.init("mooncake-cpu", rank, ws, new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, ws)));
            EpGpuCheck c = new EpGpuCheck(pg, localRank);
            switch (mode) {
                case "check" -> c.grid();
                case "fail" -> c.failure(false);
                case "failrows" -> c.failure(true);
                case "timing" -> c.timing(Integer.parseInt(env("ITERS", "200")));
                default -> throw new IllegalArgumentException("mode " + mode + ": use check, fail, failrows or timing");
            }
            status = c.failures == 0 ? 0 : 1;
            if (!(mode.startsWith("fail") && rank == ws - 1)) pg.barrier();
            pg.close();
        } catch (Throwable t) {
            System.out.println("FAIL rank " + rank + " " + mode + ": " + t);
            t.printStackTrace(System.out);
            status = 1;
        }
        System.out.println((status == 0 ? "ALL PASSED" : "SOME FAILED") + " rank " + rank + " " + mode);
        System.out.flush();
        System.exit(status);
    }

    private static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null || v.isBlank() ? d : v;
    }

    private void report(String name, boolean ok, String detail) {
        if (!ok) failures++;
        System.out.println((ok ? "PASS " : "FAIL ") + "rank " + rank + " " + name + (detail.isEmpty() ? "" : " (" + detail + ")"));
    }

    // ---- inputs and reference --------------------------------------------------------------------

    record Inputs(short[] x, long[] topk, float[] w) {}

    /** Rank s's inputs of round {@code round}: any rank can rebuild any other's. */
    Inputs inputs(int round, int s) {
        Random rnd = new Random(7_919L * round + 104_729L * s + 3);
        short[] x = new short[M * H];
        for (int i = 0; i < x.length; i++) x[i] = FloatFormats.floatToBf16((float) rnd.nextGaussian() * (1 + (i % 5)));
        long[] topk = new long[M * K];
        for (int t = 0; t < M; t++) {
            int[] perm = rnd.ints(0, numExperts).distinct().limit(K).toArray();
            for (int k = 0; k < K; k++) topk[t * K + k] = perm[k];
        }
        for (int q = 0; q < MASKED; q++) topk[rnd.nextInt(M * K)] = -1;
        float[] w = new float[M * K];
        for (int i = 0; i < w.length; i++) w[i] = rnd.nextFloat();
        return new Inputs(x, topk, w);
    }

    private Tensor onDevice(Tensor host) {
        try (host) { return host.to(dev); }
    }

    private Tensor xTensor(Inputs in) {
        Tensor t = Tensor.empty(DType.BFLOAT16, Device.CPU, M, H);
        MemorySegment.copy(in.x(), 0, t.segment(), ValueLayout.JAVA_SHORT_UNALIGNED, 0, in.x().length);
        return onDevice(t);
    }

    private Tensor topkTensor(Inputs in) {
        Tensor t = Tensor.empty(DType.INT64, Device.CPU, M, K);
        MemorySegment.copy(in.topk(), 0, t.segment(), ValueLayout.JAVA_LONG_UNALIGNED, 0, in.topk().length);
        return onDevice(t);
    }

    private Tensor weightTensor(Inputs in) {
        Tensor t = Tensor.empty(DType.FLOAT32, Device.CPU, M, K);
        MemorySegment.copy(in.w(), 0, t.segment(), ValueLayout.JAVA_FLOAT_UNALIGNED, 0, in.w().length);
        return onDevice(t);
    }

    /** What an expert sees of token t: the bf16 values, or the dequantized fp8 ones. */
    static float[] seen(Inputs in, int t, boolean fp8) {
        if (fp8) return FloatFormats.throughE4m3Blocks(in.x(), t * H, H);
        float[] v = new float[H];
        for (int c = 0; c < H; c++) v[c] = FloatFormats.bf16ToFloat(in.x()[t * H + c]);
        return v;
    }

    static boolean first(long[] topk, int t, int k) {
        for (int q = 0; q < k; q++) if (topk[t * K + q] == topk[t * K + k]) return false;
        return true;
    }

    // ---- one round ---------------------------------------------------------------------------------

    /** One dispatch + identity experts + combine on device tensors; every result compared on the host. */
    private void round(EpBuffer buf, int round, boolean fp8, boolean zeroCopy, boolean async, boolean hook, int[] mask, long timeoutUs,
                       String name) {
        Inputs in = inputs(round, rank);
        Tensor x = xTensor(in), topk = topkTensor(in), w = weightTensor(in);
        Tensor active = onDevice(Tensor.of(mask.clone()));
        DispatchResult d = buf.dispatch(x, topk, active, M, numExperts, timeoutUs, fp8, async, hook);
        if (hook) d.hook().run();
        d.event().currentStreamWait();
        int[] got = active.toIntArray();
        int[] want = expectedMask(mask);
        boolean maskOk = Arrays.equals(got, want);
        int[] count = d.recvCount().toIntArray();
        String recv = checkReceived(round, fp8, d, want, count);
        report(name + " dispatch", maskOk && recv.isEmpty(), maskOk ? recv : "activeRanks " + Arrays.toString(got) + ", expected " + Arrays.toString(want));
        // identity experts: y = what the expert saw, as bf16
        long rows = (long) n * M;
        Tensor y = zeroCopy ? buf.nextCombineBuffer(d.handle()) : Tensor.zeros(DType.BFLOAT16, dev, local, rows, H);
        Tensor yHost = fp8 ? Tensor.zeros(DType.BFLOAT16, Device.CPU, local, rows, H) : null;
        if (fp8) {
            MemorySegment rx = validRows(d.recvX(), H, count), sc = validRows(d.recvScales(), 4L * (H / 128), count);
            long[] at = rowStarts(count);
            for (int j = 0; j < local; j++) {
                for (int p = 0; p < count[j]; p++) {
                    long row = (long) j * rows + p, packed = at[j] + p;
                    for (int c = 0; c < H; c++) {
                        float v = FloatFormats.e4m3ToFloat(rx.get(ValueLayout.JAVA_BYTE, packed * H + c))
                                * sc.get(ValueLayout.JAVA_FLOAT_UNALIGNED, (packed * (H / 128) + c / 128) * 4);
                        yHost.segment().set(ValueLayout.JAVA_SHORT_UNALIGNED, (row * H + c) * 2, FloatFormats.floatToBf16(v));
                    }
                }
            }
            y.copyFrom(yHost);
        } else {
            y.copyFrom(d.recvX());
        }
        CombineResult c = buf.combine(y, topk, w, active, timeoutUs, d.handle(), zeroCopy, async, hook, null);
        if (hook) c.hook().run();
        c.event().currentStreamWait();
        short[] out = new short[M * H];
        try (Tensor o = c.combinedX().to(Device.CPU)) {
            MemorySegment.copy(o.segment(), ValueLayout.JAVA_SHORT_UNALIGNED, 0, out, 0, out.length);
        }
        String comb = checkCombined(in, fp8, want, out);
        report(name + " combine", comb.isEmpty(), comb);
        for (Tensor t : new Tensor[] {x, topk, w, active, c.combinedX()}) t.close();
        if (yHost != null) yHost.close();
        if (!zeroCopy) y.close();
    }

    private int[] expectedMask(int[] mask) { return mask.clone(); }

    private String checkReceived(int round, boolean fp8, DispatchResult d, int[] active, int[] count) {
        MemorySegment rx = validRows(d.recvX(), fp8 ? H : 2L * H, count);
        MemorySegment sc = fp8 ? validRows(d.recvScales(), 4L * (H / 128), count) : null;
        long[] at = rowStarts(count);
        Inputs[] sources = new Inputs[n];
        for (int s = 0; s < n; s++) if (active[s] != 0) sources[s] = inputs(round, s);
        for (int j = 0; j < local; j++) {
            long e = (long) rank * local + j;
            int p = 0;
            for (int s = 0; s < n; s++) {
                if (active[s] == 0) continue;
                Inputs in = sources[s];
                for (int t = 0; t < M; t++) {
                    boolean selected = false;
                    for (int k = 0; k < K; k++) selected |= in.topk()[t * K + k] == e && first(in.topk(), t, k);
                    if (!selected) continue;
                    if (p >= count[j]) return "expert " + e + ": recvCount " + count[j] + " too small";
                    long row = at[j] + p;
                    if (fp8) {
                        byte[] q = new byte[H];
                        float[] s8 = new float[H / 128];
                        FloatFormats.quantizeE4m3Blocks(in.x(), t * H, H, q, s8);
                        byte[] gq = rx.asSlice(row * H, H).toArray(ValueLayout.JAVA_BYTE);
                        float[] gs = new float[H / 128];
                        MemorySegment.copy(sc, ValueLayout.JAVA_FLOAT_UNALIGNED, row * 4L * (H / 128), gs, 0, gs.length);
                        if (!Arrays.equals(gq, q) || !Arrays.equals(gs, s8)) return "expert " + e + " row " + p + " (fp8) differs";
                    } else {
                        short[] g = new short[H];
                        MemorySegment.copy(rx, ValueLayout.JAVA_SHORT_UNALIGNED, row * 2L * H, g, 0, H);
                        if (!Arrays.equals(g, Arrays.copyOfRange(in.x(), t * H, t * H + H))) return "expert " + e + " row " + p + " differs";
                    }
                    p++;
                }
            }
            if (p != count[j]) return "expert " + e + ": recvCount " + count[j] + ", expected " + p;
        }
        return "";
    }

    /** Rows [0, count[j]) of every expert j of a [local][n * M][...] device tensor, packed on the host in expert order. */
    private MemorySegment validRows(Tensor t, long rowBytes, int[] count) {
        long[] at = rowStarts(count);
        MemorySegment host = java.lang.foreign.Arena.ofAuto().allocate(Math.max(1, at[local] * rowBytes), 16);
        for (int j = 0; j < local; j++) {
            if (count[j] <= 0 || count[j] > n * M) continue;
            long ptr = t.devicePointer() + (long) j * n * M * rowBytes;
            try (Tensor part = Tensor.wrapDevice(ptr, dev.index(), DType.UINT8, count[j] * rowBytes); Tensor h = part.to(Device.CPU)) {
                MemorySegment.copy(h.segment(), 0, host, at[j] * rowBytes, count[j] * rowBytes);
            }
        }
        return host;
    }

    /** at[j] = valid rows of the experts before j; at[local] = all of them. */
    private long[] rowStarts(int[] count) {
        long[] at = new long[local + 1];
        for (int j = 0; j < local; j++) at[j + 1] = at[j] + Math.max(0, Math.min(count[j], n * M));
        return at;
    }

    /** {@link CombineArithmetic} over the unmasked selections of active ranks, each expert returning bf16(seen); rounded to bf16. */
    private String checkCombined(Inputs in, boolean fp8, int[] active, short[] out) {
        float[] acc = new float[H], part = new float[H], y = new float[H];
        for (int t = 0; t < M; t++) {
            float[] v = seen(in, t, fp8);
            for (int c = 0; c < H; c++) y[c] = FloatFormats.bf16ToFloat(FloatFormats.floatToBf16(v[c]));
            CombineArithmetic.sumToken(in.topk(), in.w(), t * K, K, n, local, e -> active[e / local] != 0, (k, e) -> y, part, acc, H);
            float wsum = 0;
            for (int k = 0; k < K; k++) {
                long e = in.topk()[t * K + k];
                if (e >= 0 && active[(int) (e / local)] != 0) wsum += in.w()[t * K + k];
            }
            for (int c = 0; c < H; c++) {
                short want = FloatFormats.floatToBf16(acc[c]);
                if (out[t * H + c] != want) {
                    return "token " + t + " channel " + c + ": got " + FloatFormats.bf16ToFloat(out[t * H + c]) + ", expected "
                            + FloatFormats.bf16ToFloat(want) + " (x * sum of valid weights = " + v[c] * wsum + ")";
                }
                if (!fp8) {
                    float approx = v[c] * wsum;
                    float got = FloatFormats.bf16ToFloat(out[t * H + c]);
                    if (Math.abs(got - approx) > 1e-2f * Math.max(1f, Math.abs(approx))) {
                        return "token " + t + " channel " + c + ": " + got + " is not x * sum of valid weights = " + approx;
                    }
                }
            }
        }
        return "";
    }

    // ---- modes ---------------------------------------------------------------------------------------

    private EpBuffer buffer() { return new EpBuffer(pg, EpBuffer.sizeHint(M, H, n, numExperts), dev); }

    private void grid() {
        try (EpBuffer buf = buffer()) {
            int round = 0;
            for (int failed = 0; failed < 2; failed++) {
                int[] mask = new int[n];
                Arrays.fill(mask, 1);
                if (failed == 1 && n > 1) mask[n - 1] = 0;
                if (failed == 1 && rank == n - 1) continue; // the inactive rank takes no part
                for (int bits = 0; bits < 16; bits++) {
                    boolean fp8 = (bits & 1) != 0, zc = (bits & 2) != 0, async = (bits & 4) != 0, hook = (bits & 8) != 0;
                    String name = "grid fp8=" + fp8 + " zeroCopy=" + zc + " async=" + async + " hook=" + hook + " inactiveLast=" + (failed == 1);
                    round(buf, round++, fp8, zc, async, hook, mask, bits % 2 == 0 ? -1 : 5_000_000, name);
                }
            }
            if (rank == n - 1) {
                System.out.println("NOTE rank " + rank + " sat out the inactive-last-rank half of the grid");
            }
        }
    }

    /**
     * The last rank fails: before dispatch (it exits), or ({@code midDispatch}) while its rows are in
     * flight (its counts and rows are sent, their flags never are; then it exits). The others must
     * drop it within timeoutUs = 1 s.
     */
    private void failure(boolean midDispatch) {
        EpBuffer buf = buffer();
        int[] mask = new int[n];
        Arrays.fill(mask, 1);
        Inputs in = inputs(1000, rank);
        Tensor x = xTensor(in), topk = topkTensor(in), w = weightTensor(in);
        Tensor active = onDevice(Tensor.of(mask));
        if (rank == n - 1) {
            if (midDispatch) {
                buf.dispatch(x, topk, active, M, numExperts, 1_000_000, false, false, false);
                System.out.println("NOTE rank " + rank + " dispatched without its rows' flags, exits");
            } else {
                System.out.println("NOTE rank " + rank + " exits before dispatch");
            }
            System.out.flush();
            Runtime.getRuntime().halt(0);
        }
        long t0 = System.nanoTime();
        DispatchResult d = buf.dispatch(x, topk, active, M, numExperts, 1_000_000, false, false, false);
        long ms = (System.nanoTime() - t0) / 1_000_000;
        int[] got = active.toIntArray();
        int[] want = mask.clone();
        want[n - 1] = 0;
        report("fail dispatch activeRanks", Arrays.equals(got, want), Arrays.toString(got) + " after " + ms + " ms");
        int[] count = d.recvCount().toIntArray();
        String recv = checkReceived(1000, false, d, want, count);
        report("fail dispatch rows", recv.isEmpty(), recv);
        Tensor y = buf.nextCombineBuffer(d.handle());
        y.copyFrom(d.recvX());
        CombineResult c = buf.combine(y, topk, w, active, 1_000_000, d.handle(), true, false, false, null);
        short[] out = new short[M * H];
        try (Tensor o = c.combinedX().to(Device.CPU)) {
            MemorySegment.copy(o.segment(), ValueLayout.JAVA_SHORT_UNALIGNED, 0, out, 0, out.length);
        }
        String comb = checkCombined(in, false, want, out);
        report("fail combine drops the lost rank's experts", comb.isEmpty(), comb);
        // the survivors only: the lost rank's heap stays mapped until exit
        System.out.flush();
        Runtime.getRuntime().halt(failures == 0 ? 0 : 1);
    }

    /** The timing mode's FP8 dispatch, queued (asyncFinish, no timeout, no hook). */
    private DispatchResult queuedDispatch(EpBuffer buf, Tensor x, Tensor topk, Tensor active) {
        return buf.dispatch(x, topk, active, M, numExperts, -1, true, true, false);
    }

    /** The timing mode's zero-copy combine of {@code d} into {@code out}, queued. */
    private static CombineResult queuedCombine(EpBuffer buf, DispatchResult d, Tensor topk, Tensor w, Tensor active, Tensor out) {
        return buf.combine(buf.nextCombineBuffer(d.handle()), topk, w, active, -1, d.handle(), true, true, false, out);
    }

    /** {@code n} untimed dispatch + combine pairs, queued, then waited for. */
    private void warmUp(EpBuffer buf, Tensor x, Tensor topk, Tensor w, Tensor active, Tensor out, int n) {
        CombineResult r = null;
        for (int i = 0; i < n; i++) r = queuedCombine(buf, queuedDispatch(buf, x, topk, active), topk, w, active, out);
        if (r != null) r.event().currentStreamWait();
    }

    /**
     * Queues warm-up and then {@code iters} dispatch + combine pairs back to back (async, caller-owned
     * output, no host wait between them, like a training step), with CUDA events around each phase,
     * synchronizes once, and prints per-phase GPU times (mean over the iterations) and the wall time
     * per iteration. Errors the kernels reported are checked once at the end.
     */
    private void timing(int iters) {
        try (EpBuffer buf = buffer()) {
            Inputs in = inputs(7, rank);
            Tensor x = xTensor(in), topk = topkTensor(in), w = weightTensor(in);
            Tensor out = Tensor.empty(DType.BFLOAT16, dev, M, H);
            int[] mask = new int[n];
            Arrays.fill(mask, 1);
            Tensor active = onDevice(Tensor.of(mask));
            long valid = 0;
            for (long e : in.topk()) if (e >= 0) valid++;
            CudaStream s = buf.cudaStream();
            int warm = Integer.parseInt(env("WARMUP", "2000")); // enough calls for the JIT to compile the host path
            CudaEvent[] ev = new CudaEvent[3 * iters];
            for (int i = 0; i < ev.length; i++) ev[i] = CudaEvent.create(s.device(), true);
            DispatchResult d = null;
            CombineResult r = null;
            warmUp(buf, x, topk, w, active, out, warm);
            // a rank whose host path is still being compiled sets the pace of every rank (their receives
            // wait for its sends): wait until the JIT is idle, then warm up briefly again
            org.mooncake4j.core.internal.CompilerQueue.awaitIdleBeforeTiming("EpGpuCheck timing: rank " + rank, "the timed iterations", "");
            warmUp(buf, x, topk, w, active, out, 200);
            buf.kernelProfile();
            pg.barrier();
            long t0 = System.nanoTime(), hostNs = 0;
            for (int i = 0; i < iters; i++) {
                ev[3 * i].record(s);
                long h0 = System.nanoTime();
                d = queuedDispatch(buf, x, topk, active);
                long h1 = System.nanoTime();
                ev[3 * i + 1].record(s);
                long h2 = System.nanoTime();
                r = queuedCombine(buf, d, topk, w, active, out);
                hostNs += System.nanoTime() - h2 + h1 - h0;
                ev[3 * i + 2].record(s);
            }
            d.event().currentStreamWait();
            r.event().currentStreamWait();
            ev[ev.length - 1].synchronize();
            double wallUs = (System.nanoTime() - t0) / 1e3 / iters;
            double dispatchMs = 0, combineMs = 0;
            for (int i = 0; i < iters; i++) {
                dispatchMs += CudaEvent.elapsedMillis(ev[3 * i], ev[3 * i + 1]);
                combineMs += CudaEvent.elapsedMillis(ev[3 * i + 1], ev[3 * i + 2]);
            }
            for (CudaEvent e : ev) e.close();
            double[] kernels = buf.kernelProfile();
            System.out.printf("NOTE rank %d host time in the dispatch + combine calls: %.1f us per iteration%n", rank, hostNs / 1e3 / iters);
            if (kernels != null) {
                System.out.printf("NOTE rank %d kernels (us, event before to event after): dispatch send %.1f, dispatch receive %.1f,"
                        + " combine send %.1f, combine receive %.1f%n", rank, kernels[0], kernels[1], kernels[2], kernels[3]);
                String[] names = {"dispatch send", "dispatch receive", "combine send", "combine receive"};
                for (int k = 0; k < 4; k++) {
                    System.out.printf("NOTE rank %d %s: us from block 0's start to points 2..6: %.1f %.1f %.1f %.1f %.1f%n", rank, names[k],
                            kernels[4 + 5 * k], kernels[5 + 5 * k], kernels[6 + 5 * k], kernels[7 + 5 * k], kernels[8 + 5 * k]);
                }
                if (kernels[24 + 7] != 0) {
                    // -Dmooncake4j.ep.profile=pdl: each phase from its send's block 0 start to its receive's end
                    // (the kernels' own time, as a profiler reports it, without the launches before them)
                    double dSpan = kernels[4 + 5 + 4], cSpan = kernels[4 + 15 + 4];
                    long dB = valid * (H + H / 128 * 4L + 16), cB = valid * 2L * H;
                    System.out.printf(java.util.Locale.ROOT, "NOTE rank %d kernel spans (send's block 0 start to receive's end): dispatch %.1f us"
                            + " (%.1f GB/s), combine %.1f us (%.1f GB/s)%n", rank, dSpan, dB / (dSpan * 1e3), cSpan, cB / (cSpan * 1e3));
                    StringBuilder b = new StringBuilder();
                    for (int src = 0; src < Math.min(n, 7); src++) b.append(String.format(java.util.Locale.ROOT, " %.1f", kernels[24 + src]));
                    System.out.printf("NOTE rank %d dispatch receive (programmatic launch): us from the send's start to its block 0's start %.1f,"
                            + " to each source's counts word:%s%n", rank, kernels[24 + 7], b);
                }
            }
            double dUs = dispatchMs * 1000 / iters, cUs = combineMs * 1000 / iters;
            long dBytes = valid * (H + H / 128 * 4L + 16), cBytes = valid * 2L * H;
            System.out.printf("{\"rank\":%d,\"world\":%d,\"tokens\":%d,\"hidden\":%d,\"topk\":%d,\"experts\":%d,\"valid_selections\":%d,"
                            + "\"iters\":%d,\"dispatch_us\":%.2f,\"combine_us\":%.2f,\"dispatch_GBps\":%.2f,\"combine_GBps\":%.2f,"
                            + "\"wall_us_per_iteration\":%.2f}%n",
                    rank, n, M, H, K, numExperts, valid, iters, dUs, cUs, dBytes / (dUs * 1e3), cBytes / (cUs * 1e3), wallUs);
            report("timing", true, "");
            for (Tensor t : new Tensor[] {x, topk, w, out, active}) t.close();
        }
    }
}
