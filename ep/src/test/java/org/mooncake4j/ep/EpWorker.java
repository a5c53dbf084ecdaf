package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.Arrays;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.pg.MooncakeBackendOptions;
import org.mooncake4j.pg.ProcessGroup;

/**
 * One rank of a multi-process EP test, run by {@link org.mooncake4j.testkit.ProcessCluster} with
 * RANK/WORLD_SIZE/MOONCAKE_STORE set; the first argument names the scenario. Every received row and
 * every combined token is compared bit for bit with {@link EpReference}; results are printed as
 * {@code RESULT key=value}; a failed check prints {@code FAIL ...} and exits 1.
 */
public final class EpWorker {
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final int M = EpReference.M, H = EpReference.H, K = EpReference.K;

    private final ProcessGroup pg;
    private final int rank, n;
    private final EpReference ref;
    private EpBuffer buf;
    private long checks, errors;

    private EpWorker(ProcessGroup pg) {
        this.pg = pg;
        this.rank = pg.rank();
        this.n = pg.worldSize();
        this.ref = new EpReference(n);
    }

    public static void main(String[] args) {
        int world = Integer.parseInt(System.getenv("WORLD_SIZE"));
        ProcessGroup pg = ProcessGroup.builder()
                .timeout(Duration.ofMillis(Long.parseLong(System.getenv().getOrDefault("MOONCAKE_TIMEOUT_MS", "30000"))))
                .options(new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, world)))
                .init();
        EpWorker w = new EpWorker(pg);
        try {
            w.buf = new EpBuffer(pg, EpBuffer.sizeHint(M, H, w.n, w.ref.numExperts));
            switch (args[0]) {
                case "roundtrip" -> w.roundtrip();
                case "inactive" -> w.inactive();
                case "late" -> w.late();
                case "lateNoTimeout" -> w.lateNoTimeout();
                case "kill" -> w.kill();
                default -> throw new IllegalArgumentException(args[0]);
            }
            System.out.println("RESULT checks=" + w.checks);
            System.out.println("RESULT errors=" + w.errors);
            pg.barrier();
            w.buf.close();
            pg.close();
            System.out.flush();
            System.exit(0);
        } catch (Throwable t) {
            System.out.println("FAIL rank " + w.rank + ": " + t);
            t.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
    }

    private void fail(String msg) { throw new AssertionError("rank " + rank + ": " + msg); }

    /** One dispatch + expert + combine round, every result checked; returns the handle (already combined). */
    private EpHandle round(int round, boolean fp8, int mode, boolean zeroCopy, boolean useOut, Tensor active, long timeoutUs) {
        EpReference.Inputs in = ref.inputs(round, rank);
        Tensor x = in.xTensor(), topk = in.topkTensor(), w = in.weightTensor();
        boolean async = mode == 1 || mode == 3, hook = mode >= 2;
        DispatchResult d = buf.dispatch(x, topk, active, M, ref.numExperts, timeoutUs, fp8, async, hook);
        if (hook) d.hook().run();
        d.event().currentStreamWait();
        checkReceived(round, fp8, d, active.toIntArray());
        Tensor y = zeroCopy ? buf.nextCombineBuffer(d.handle()) : Tensor.zeros(DType.BFLOAT16, Device.CPU, ref.local, (long) n * M, H);
        runExperts(d, fp8, y);
        Tensor out = useOut ? Tensor.empty(DType.BFLOAT16, Device.CPU, in.numTokens(), H) : null;
        CombineResult c = buf.combine(y, topk, w, active, timeoutUs, d.handle(), zeroCopy, async, hook, out);
        if (hook) c.hook().run();
        c.event().currentStreamWait();
        if (useOut && c.combinedX() != out) fail("combine did not return the out tensor");
        short[] want = ref.combined(in, fp8, active.toIntArray());
        short[] got = new short[want.length];
        MemorySegment.copy(c.combinedX().segment(), SHORT, 0, got, 0, got.length);
        if (!Arrays.equals(got, want)) fail("round " + round + " combine differs (fp8=" + fp8 + ", mask " + Arrays.toString(active.toIntArray()) + ")");
        checks++;
        return d.handle();
    }

    /** Rows of local expert j: sources in rank order (active ones), their tokens in order; bytes equal to the reference's. */
    private void checkReceived(int round, boolean fp8, DispatchResult d, int[] active) {
        int[] count = d.recvCount().toIntArray();
        MemorySegment rx = d.recvX().segment();
        for (int j = 0; j < ref.local; j++) {
            long e = (long) rank * ref.local + j;
            int p = 0;
            for (int s = 0; s < n; s++) {
                if (active[s] == 0) continue;
                EpReference.Inputs in = ref.inputs(round, s);
                for (int t = 0; t < in.numTokens(); t++) {
                    boolean selected = false;
                    for (int k = 0; k < K; k++) selected |= in.topk()[t * K + k] == e && EpReference.firstSelection(in.topk(), t, k);
                    if (!selected) continue;
                    if (p >= count[j]) fail("round " + round + " expert " + e + ": recvCount " + count[j] + " too small");
                    long row = (long) j * n * M + p;
                    if (fp8) {
                        byte[] q = new byte[H];
                        float[] sc = new float[H / 128];
                        EpReference.quantize(in.x(), t * H, q, sc);
                        byte[] gq = rx.asSlice(row * H, H).toArray(ValueLayout.JAVA_BYTE);
                        float[] gs = new float[H / 128];
                        MemorySegment.copy(d.recvScales().segment(), FLOAT, row * 4L * (H / 128), gs, 0, gs.length);
                        if (!Arrays.equals(gq, q) || !Arrays.equals(gs, sc)) fail("round " + round + " expert " + e + " row " + p + " (fp8) differs");
                    } else {
                        short[] g = new short[H];
                        MemorySegment.copy(rx, SHORT, row * 2L * H, g, 0, H);
                        if (!Arrays.equals(g, Arrays.copyOfRange(in.x(), t * H, t * H + H))) fail("round " + round + " expert " + e + " row " + p + " differs");
                    }
                    p++;
                }
            }
            if (p != count[j]) fail("round " + round + " expert " + e + ": recvCount " + count[j] + ", expected " + p);
        }
        checks++;
    }

    private void runExperts(DispatchResult d, boolean fp8, Tensor y) {
        int[] count = d.recvCount().toIntArray();
        MemorySegment rx = d.recvX().segment(), ys = y.segment();
        for (int j = 0; j < ref.local; j++) {
            long e = (long) rank * ref.local + j;
            for (int p = 0; p < count[j]; p++) {
                long row = (long) j * n * M + p;
                for (int c = 0; c < H; c++) {
                    float v = fp8
                            ? FloatFormats.e4m3ToFloat(rx.get(ValueLayout.JAVA_BYTE, row * H + c)) * d.recvScales().segment().get(FLOAT, (row * (H / 128) + c / 128) * 4)
                            : FloatFormats.bf16ToFloat(rx.get(SHORT, (row * H + c) * 2));
                    ys.set(SHORT, (row * H + c) * 2, EpReference.expert(e, v));
                }
            }
        }
    }

    private Tensor allActive() { return Tensor.ones(DType.INT32, Device.CPU, n); }

    // ---- scenarios ---------------------------------------------------------------------------

    /** bf16 and fp8, masked entries, uneven counts, every completion mode, zero-copy and out; then every error. */
    private void roundtrip() {
        Tensor active = allActive();
        EpHandle last = null;
        for (int r = 0; r < 8; r++) last = round(r, r % 2 == 1, r % 4, r % 3 == 0, r % 2 == 0, active, r % 2 == 0 ? -1 : 5_000_000);
        if (!Arrays.equals(active.toIntArray(), allActive().toIntArray())) fail("mask changed: " + Arrays.toString(active.toIntArray()));
        validationErrors(last);
        EpHandle stale = last;
        buf.updateEpMember();
        expectError("staleHandle", () -> buf.nextCombineBuffer(stale), "before updateEpMember()");
        round(8, true, 0, true, false, active, 5_000_000);
        buf.close();
        buf = new EpBuffer(pg, EpBuffer.sizeHint(M, H, n, ref.numExperts));
        expectError("otherBuffer", () -> buf.nextCombineBuffer(stale), "comes from another EpBuffer");
        round(9, false, 0, false, true, active, 5_000_000);
    }

    private void validationErrors(EpHandle used) {
        EpReference.Inputs in = ref.inputs(3, rank);
        Tensor x = in.xTensor(), topk = in.topkTensor(), w = in.weightTensor(), active = allActive();
        int E = ref.numExperts;
        Tensor x4 = EpReference.fill(Tensor.empty(DType.BFLOAT16, Device.CPU, 4, H), new short[4 * H]);
        Tensor t4 = Tensor.of(0L, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2).view(4, 3);
        expectError("xDtype", () -> buf.dispatch(x4.to(DType.FLOAT32), t4, active, M, E, -1, false, false, false), "x must be bfloat16", "float32");
        expectError("xCuda", () -> buf.dispatch(Tensor.wrapDevice(4096, 0, DType.BFLOAT16, 4, H), t4, active, M, E, -1, false, false, false),
                "dispatch: x is on cuda:0, but this EpBuffer runs the CPU path (created without a device). Pass CPU tensors (x.to(Device.CPU)),"
                        + " or create the EpBuffer for the GPU with new EpBuffer(group, bytes, Device.cuda(n)) and pass every tensor on that device.");
        expectError("topkDtype", () -> buf.dispatch(x4, t4.to(DType.INT32), active, M, E, -1, false, false, false), "topkIdx must be int64");
        expectError("activeInt", () -> buf.dispatch(x4, t4, Tensor.ones(DType.INT64, Device.CPU, n), M, E, -1, false, false, false), "activeRanks must be int.");
        expectError("activeCpu", () -> buf.dispatch(x4, t4, Tensor.wrapDevice(4096, 0, DType.INT32, n), M, E, -1, false, false, false),
                "activeRanks must be on CPU.");
        expectError("activeShape", () -> buf.dispatch(x4, t4, Tensor.ones(DType.INT32, Device.CPU, n + 1), M, E, -1, false, false, false),
                "activeRanks must have shape [numRanks] = [" + n + "]");
        expectError("tooManyTokens", () -> buf.dispatch(x4, t4, active, 3, E, -1, false, false, false),
                "dispatch: x has 4 tokens but maxTokensPerRank is 3. maxTokensPerRank must be at least the largest number of tokens any rank"
                        + " dispatches: raise it (and size the buffer with EpBuffer.sizeHint for it) or dispatch fewer tokens per call.");
        Tensor bad = Tensor.of(0L, 1, 2, 0, 99, 2, 0, 1, 2, 0, 1, 2).view(4, 3);
        expectError("expertRange", () -> buf.dispatch(x4, bad, active, M, E, -1, false, false, false),
                "dispatch: topkIdx[1][1] = 99 is outside [0, " + E + ") (numExperts = " + E + "). Use an expert id in [0, " + E
                        + "), or -1 to mask a selection.");
        expectError("expertDivisible", () -> buf.dispatch(x4, t4, active, M, E + 1, -1, false, false, false),
                "dispatch: numExperts (" + (E + 1) + ") must be a positive multiple of numRanks (" + n + "): expert e lives on rank"
                        + " e / (numExperts / numRanks). Choose numExperts divisible by " + n + ".");
        Tensor x100 = Tensor.zeros(DType.BFLOAT16, Device.CPU, 4, 100);
        expectError("fp8Hidden", () -> buf.dispatch(x100, t4, active, M, E, -1, true, false, false),
                "dispatch: useFp8 needs hidden to be a multiple of 128 (one scale per 128 channels), got hidden = 100. Pad hidden to a multiple"
                        + " of 128 or pass useFp8 = false.");
        expectError("timeout", () -> buf.dispatch(x4, t4, active, M, E, -5, false, false, false), "timeoutUs must be -1");
        expectError("tooSmall", () -> buf.dispatch(x4, t4, active, 64, E, -1, false, false, false),
                "dispatch: the EpBuffer has ", " bytes, but maxTokensPerRank=64, hidden=" + H + ", numRanks=" + n + ", numExperts=" + E + " need "
                        + EpBuffer.sizeHint(64, H, n, E) + " bytes. Create the EpBuffer with EpBuffer.sizeHint(64, " + H + ", " + n + ", " + E
                        + ") bytes (for the largest shapes you dispatch).");
        Tensor y = buf.nextCombineBuffer(used);
        expectError("handleReuse", () -> buf.combine(y, topk, w, active, -1, used, true, false, false, null),
                "combine: " + used + " was already combined; a dispatch handle is used by one combine. Dispatch again for another combine.");
        expectError("secondBuffer", () -> new EpBuffer(pg, 1 << 20), "already open on process group");
        expectError("bufferBytes", () -> EpBuffer.sizeHint(M, H, n, E + 1), "must be a positive multiple of numRanks");
        // a fresh dispatch whose combine gets wrong shapes; its handle is then combined correctly
        EpHandle h = buf.dispatch(x, topk, active, M, E, -1, false, false, false).handle();
        Tensor y2 = buf.nextCombineBuffer(h);
        expectError("combineShape", () -> buf.combine(Tensor.zeros(DType.BFLOAT16, Device.CPU, ref.local, M, H), topk, w, active, -1, h, false, false, false, null),
                "combine: x must be bfloat16 [numLocalExperts, numRanks * maxTokensPerRank, hidden] as returned by dispatch = [" + ref.local + ", "
                        + (long) n * M + ", " + H + "], got bfloat16 [" + ref.local + ", " + M + ", " + H + "].");
        expectError("combineWeights", () -> buf.combine(y2, topk, topk, active, -1, h, true, false, false, null), "topkWeights must be float32");
        expectError("zeroCopy", () -> buf.combine(y2.to(DType.BFLOAT16), topk, w, active, -1, h, true, false, false, null),
                "combine: zeroCopy = true needs x to be the tensor from nextCombineBuffer(handle), with the expert outputs written into it; got"
                        + " another tensor. Write the outputs into nextCombineBuffer(handle), or pass zeroCopy = false.");
        buf.combine(y2, topk, w, active, -1, h, true, false, false, null);
    }

    private void expectError(String what, Runnable r, String... fragments) {
        try {
            r.run();
        } catch (RuntimeException e) {
            String m = e.getMessage();
            for (String f : fragments) if (m == null || !m.contains(f)) fail(what + ": message lacks '" + f + "': " + m);
            System.out.println("RESULT error." + what + "=" + m);
            errors++;
            return;
        }
        fail(what + ": no error");
    }

    /** Ranks 0 and 1 mark rank 2 inactive up front: nothing goes to it and nobody waits for it. */
    private void inactive() {
        if (rank == 2) return;
        Tensor active = allActive();
        active.setLong(2, 0);
        for (int r = 0; r < 3; r++) round(r, r == 1, 0, false, false, active, 2_000_000);
        System.out.println("RESULT mask=" + Arrays.toString(active.toIntArray()));
    }

    /** Rank 2 dispatches 2 s late; ranks 0 and 1 give up on it after 500 ms and go on without it. */
    private void late() {
        Tensor active = allActive();
        if (rank == 2) {
            sleep(2000);
            EpReference.Inputs in = ref.inputs(0, rank);
            buf.dispatch(in.xTensor(), in.topkTensor(), active, M, ref.numExperts, 500_000, false, false, false);
            return;
        }
        long t0 = System.nanoTime();
        round(0, false, 0, false, false, active, 500_000);
        System.out.println("RESULT ms=" + (System.nanoTime() - t0) / 1_000_000);
        System.out.println("RESULT mask=" + Arrays.toString(active.toIntArray()));
    }

    /** Rank 2 dispatches 3 s late; ranks 0 and 1 wait with timeoutUs = -1 and fail at the group timeout (2 s) naming it. */
    private void lateNoTimeout() {
        Tensor active = allActive();
        EpReference.Inputs in = ref.inputs(0, rank);
        if (rank == 2) {
            sleep(3000);
            buf.dispatch(in.xTensor(), in.topkTensor(), active, M, ref.numExperts, -1, false, false, false);
            return;
        }
        long t0 = System.nanoTime();
        try {
            buf.dispatch(in.xTensor(), in.topkTensor(), active, M, ref.numExperts, -1, false, false, false);
            fail("dispatch with timeoutUs = -1 returned although rank 2 had not sent");
        } catch (org.mooncake4j.pg.PeerFailureException e) {
            System.out.println("RESULT ms=" + (System.nanoTime() - t0) / 1_000_000);
            System.out.println("RESULT error=" + e.getMessage());
        }
        System.out.println("RESULT mask=" + Arrays.toString(active.toIntArray()));
    }

    /** Rank 2 stops before round 3's dispatch and is killed; the survivors finish that dispatch with it marked 0. */
    private void kill() {
        Tensor active = allActive();
        for (int r = 0; r < 5; r++) {
            if (r == 3 && rank == 2) {
                System.out.println("STUCK");
                System.out.flush();
                sleep(60_000);
            }
            round(r, r % 2 == 0, 0, false, false, active, 20_000_000);
            if (r == 3) System.out.println("RESULT doneAtNanos=" + System.nanoTime());
        }
        System.out.println("RESULT mask=" + Arrays.toString(active.toIntArray()));
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
