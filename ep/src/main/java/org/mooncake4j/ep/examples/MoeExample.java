package org.mooncake4j.ep.examples;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.function.IntPredicate;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.ep.EpBuffer;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;

/**
 * One rank of the MoE example: {@link MoeLayer} run expert-parallel over {@link EpBuffer} for a few
 * steps, every output checked against the single-process reference, and one rank dying mid-run.
 * Started with {@code RANK}, {@code WORLD_SIZE} and {@code MOONCAKE_STORE} set, e.g.
 * {@code mooncake4j run --nproc-per-node 4 org.mooncake4j.ep.examples.MoeExample}.
 *
 * <p>Each step every rank draws its tokens (from the seed, by rank and step), routes them, and runs the
 * layer with {@code timeoutUs} (default 1 s). In step {@code --fail-step} the victim
 * ({@code --victim}, default the last rank) does its dispatch and then dies before combine: with
 * {@code --death exit} it ends its process at once ({@link Runtime#halt}: no buffer or group is
 * closed), with {@code --death kill} it prints {@value #READY_TO_DIE} and waits to be killed (SIGKILL
 * from outside). The survivors' combine finds it gone or not arriving within {@code timeoutUs} and sets
 * its entry of the EP {@code activeRanks} to 0; from then on it is neither sent to nor waited for.
 *
 * <p>Checks on every survivor, every step: each output element within {@link MoeLayer#tolerance} of the
 * float32 reference over the experts of the ranks active in the mask (after the failure: all but the
 * victim's), every element bit-identical to {@link MoeLayer#combineArithmetic}, the mask all ones before
 * the failure and zero exactly at the victim from the failure step on; and for the tokens that selected
 * one of the victim's experts, how far the output is from the full reference (the dropped
 * contribution). The numbers of each step are summed or maximized over the surviving ranks with
 * all_reduce and rank 0 prints one line per step; every rank prints its own as {@code RESULT key=value}
 * lines. Exit code 0 when every check passed on every rank, 1 otherwise.
 *
 * <p>Single-threaded; owns its group, buffer and tensors.
 */
public final class MoeExample {
    /** What the victim prints when, with {@code --death kill}, it has dispatched and waits to be killed. */
    public static final String READY_TO_DIE = "MOE victim dispatched and waits to be killed";
    /** What rank 0 prints first on its last line when every check passed. */
    public static final String PASSED = "MoE check: PASSED";

    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    /** Per step, summed over ranks: elements checked, elements outside the bound, elements bit-identical, tokens with a dropped selection, wrong masks. */
    private static final int SUMS = 5;
    /** Per step, maximized over ranks: max |out - ref|, max |out - ref| / bound, max |out - full ref| / bound on the affected tokens, step ms. */
    private static final int MAXES = 4;

    private final ProcessGroup pg;
    private final int rank, n, tokens, steps, failStep, victim, local;
    private final long timeoutUs;
    private final boolean dieByKill;
    private final MoeLayer layer;

    private MoeExample(ProcessGroup pg, Map<String, String> a) {
        this.pg = pg;
        this.rank = pg.rank();
        this.n = pg.worldSize();
        this.tokens = Integer.parseInt(a.getOrDefault("tokens", "32"));
        this.steps = Integer.parseInt(a.getOrDefault("steps", "4"));
        this.failStep = Integer.parseInt(a.getOrDefault("fail-step", "2"));
        this.victim = Integer.parseInt(a.getOrDefault("victim", Integer.toString(n - 1)));
        this.timeoutUs = Long.parseLong(a.getOrDefault("timeout-us", "1000000"));
        this.local = Integer.parseInt(a.getOrDefault("experts-per-rank", "4"));
        String death = a.getOrDefault("death", "exit");
        if (!death.equals("exit") && !death.equals("kill")) throw new IllegalArgumentException("--death must be exit or kill, got " + death);
        this.dieByKill = death.equals("kill");
        if (n < 2) throw new IllegalArgumentException("the MoE example needs at least 2 ranks, got WORLD_SIZE=" + n);
        if (victim == 0 || victim >= n) throw new IllegalArgumentException("--victim must be in [1, " + (n - 1) + "] (rank 0 reports), got " + victim);
        if (failStep < 1 || failStep >= steps) throw new IllegalArgumentException("--fail-step must be in [1, steps), got " + failStep);
        this.layer = new MoeLayer(new MoeLayer.Config(Integer.parseInt(a.getOrDefault("hidden", "256")), Integer.parseInt(a.getOrDefault("ffn", "512")),
                local * n, Integer.parseInt(a.getOrDefault("topk", "4")), Long.parseLong(a.getOrDefault("seed", "7"))));
    }

    /** Options as {@code --name value}: tokens, steps, fail-step, victim, death (exit|kill), timeout-us, experts-per-rank, hidden, ffn, topk, seed. */
    public static void main(String[] args) {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) throw new IllegalArgumentException("expected --name value, got " + args[i]);
            a.put(args[i].substring(2), args[i + 1]);
        }
        int code;
        try (ProcessGroup pg = ProcessGroup.builder().backend(ProcessGroup.BACKEND_CPU).init()) {
            MoeExample ex = new MoeExample(pg, a);
            code = ex.run();
        }
        System.out.flush();
        System.exit(code);
    }

    private int run() {
        IntPredicate allExperts = e -> true;
        boolean ok = true;
        Tensor active = Tensor.ones(DType.INT32, Device.CPU, n);
        try (EpBuffer buf = new EpBuffer(pg, EpBuffer.sizeHint(tokens, layer.hidden(), n, layer.numExperts()))) {
            if (rank == 0) {
                System.out.printf(Locale.ROOT, "# MoE layer over EpBuffer: %d ranks, %d experts (%d per rank), top-%d, hidden %d, %d tokens per rank,"
                                + " bf16 dispatch, timeoutUs %d; rank %d dies after its dispatch in step %d (%s)%n", n, layer.numExperts(), local,
                        layer.topK(), layer.hidden(), tokens, timeoutUs, victim, failStep,
                        dieByKill ? "killed with SIGKILL" : "its process exits at once, closing nothing");
            }
            for (int s = 0; s < steps; s++) {
                Tensor x = layer.tokens(rank, s, tokens);
                MoeLayer.Routing routing = layer.route(x);
                if (s == failStep && rank == victim) die(buf, x, routing, active);
                long t0 = System.nanoTime();
                Tensor out = layer.forward(buf, rank, n, x, routing, active, tokens, timeoutUs);
                double ms = (System.nanoTime() - t0) / 1e6;
                int[] mask = active.toIntArray();
                IntPredicate kept = e -> mask[e / local] != 0;
                double[] sums = new double[SUMS], maxes = new double[MAXES];
                check(x, routing, out, kept, sums, maxes);
                int[] expected = new int[n];
                Arrays.fill(expected, 1);
                if (s >= failStep) {
                    expected[victim] = 0;
                    int dead = victim;
                    maxes[2] = dropped(x, routing, out, e -> e / local == dead, sums);
                }
                if (!Arrays.equals(mask, expected)) sums[4] = 1;
                maxes[3] = ms;
                printLocal(s, mask, sums, maxes);
                ok &= report(s, mask, sums, maxes);
                out.close();
                x.close();
                if (s == 0) pg.barrier();
            }
            pg.barrier();
        }
        if (rank == 0) System.out.println(ok ? PASSED + " (every output within the bf16 bound of the reference, bit-identical to the combine"
                + " arithmetic, rank " + victim + " 0 in every survivor's activeRanks from step " + failStep + " on)"
                : "MoE check: FAILED (see the steps above)");
        System.out.println("RESULT ok=" + ok);
        return ok ? 0 : 1;
    }

    /** The victim's end: dispatch (so the survivors' dispatch completes), then exit or wait for SIGKILL before combine. */
    private void die(EpBuffer buf, Tensor x, MoeLayer.Routing routing, Tensor active) {
        try (Tensor idx = routing.topkIdxTensor()) {
            buf.dispatch(x, idx, active, tokens, layer.numExperts(), timeoutUs, false, false, false);
        }
        if (dieByKill) {
            System.out.println(READY_TO_DIE);
            System.out.flush();
            try {
                Thread.sleep(120_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            throw new IllegalStateException("rank " + rank + " was not killed within 120 s");
        }
        System.out.println("rank " + rank + ": dispatched step " + failStep + ", now exiting before combine");
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }

    /** Every element against the reference over the kept experts: sums[0..2], maxes[0..1]. */
    private void check(Tensor x, MoeLayer.Routing routing, Tensor out, IntPredicate kept, double[] sums, double[] maxes) {
        int h = layer.hidden();
        float[] magnitude = new float[tokens * h];
        float[] ref = layer.reference(x, routing, kept, magnitude);
        short[] exact = layer.combineArithmetic(x, routing, kept, n);
        MemorySegment o = out.segment();
        for (int i = 0; i < tokens * h; i++) {
            short bits = o.get(SHORT, 2L * i);
            double err = Math.abs(FloatFormats.bf16ToFloat(bits) - ref[i]);
            double bound = layer.tolerance(ref[i], magnitude[i]);
            sums[0]++;
            if (err > bound) sums[1]++;
            if (bits == exact[i]) sums[2]++;
            maxes[0] = Math.max(maxes[0], err);
            maxes[1] = Math.max(maxes[1], err / bound);
        }
    }

    /**
     * The tokens with a selection of a dead expert: counted into sums[3]; returns the largest distance of
     * their outputs from the full reference (all experts), in units of its bound.
     */
    private double dropped(Tensor x, MoeLayer.Routing routing, Tensor out, IntPredicate dead, double[] sums) {
        int h = layer.hidden(), k = layer.topK();
        float[] magnitude = new float[tokens * h];
        float[] full = layer.reference(x, routing, e -> true, magnitude);
        MemorySegment o = out.segment();
        double worst = 0;
        for (int t = 0; t < tokens; t++) {
            boolean hit = false;
            for (int q = 0; q < k; q++) hit |= dead.test((int) routing.topkIdx()[t * k + q]);
            if (!hit) continue;
            sums[3]++;
            for (int c = 0; c < h; c++) {
                int i = t * h + c;
                worst = Math.max(worst, Math.abs(FloatFormats.bf16ToFloat(o.get(SHORT, 2L * i)) - full[i]) / layer.tolerance(full[i], magnitude[i]));
            }
        }
        return worst;
    }

    private void printLocal(int s, int[] mask, double[] sums, double[] maxes) {
        String p = "RESULT step" + s + ".";
        System.out.println(p + "mask=" + Arrays.toString(mask));
        System.out.println(p + "elements=" + (long) sums[0]);
        System.out.println(p + "outsideBound=" + (long) sums[1]);
        System.out.println(p + "bitIdentical=" + (long) sums[2]);
        System.out.println(p + "droppedTokens=" + (long) sums[3]);
        System.out.println(p + "maxErr=" + maxes[0]);
        System.out.println(p + "maxErrOverBound=" + maxes[1]);
        System.out.println(p + "droppedDeviationOverBound=" + maxes[2]);
    }

    /** Sums and maxima over the surviving ranks; rank 0 prints the step's line. True when every check of the step passed on every rank. */
    private boolean report(int s, int[] mask, double[] sums, double[] maxes) {
        try (Tensor sum = Tensor.of(sums); Tensor max = Tensor.of(maxes)) {
            pg.allReduce(sum, ReduceOp.SUM);
            pg.allReduce(max, ReduceOp.MAX);
            double[] S = sum.toDoubleArray(), M = max.toDoubleArray();
            boolean ok = S[1] == 0 && S[2] == S[0] && S[4] == 0 && (s < failStep || (S[3] > 0 && M[2] > 1));
            if (rank == 0) {
                int ranks = pg.size();
                StringBuilder line = new StringBuilder(String.format(Locale.ROOT, "step %d %s: activeRanks %s on all %d ranks%s; %d elements (%d x %d tokens x %d):"
                                + " max |out - ref| %.3g = %.2f of the bf16 bound, %d outside it, %d bit-identical to the combine arithmetic; %.0f ms",
                        s, ok ? "OK" : "WRONG", Arrays.toString(mask), ranks, S[4] == 0 ? "" : " (" + (long) S[4] + " disagree)", (long) S[0], ranks, tokens, layer.hidden(),
                        M[0], M[1], (long) S[1], (long) S[2], M[3]));
                if (s >= failStep) {
                    line.append(String.format(Locale.ROOT, "%n        reference without rank %d's experts %d..%d; %d tokens had a selection there, their outputs"
                            + " moved from the full reference by up to %.0f x its bound", victim, victim * local, victim * local + local - 1, (long) S[3], M[2]));
                }
                System.out.println(line);
            }
            return ok;
        }
    }
}
