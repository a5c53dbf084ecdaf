package org.mooncake4j.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.DoubleAdder;
import java.util.concurrent.atomic.LongAdder;
import java.util.stream.Collectors;
import java.util.stream.LongStream;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.cuda.CudaCollectives.Algorithm;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * Multi-process check and benchmark of the GPU collectives ({@link CudaCollectives}), started once per
 * GPU by {@code cuda/gpu-collectives.sh}; runnable on a GPU host without Maven.
 *
 * <pre>
 * RANK=r WORLD_SIZE=n RDV_DIR=DIR [OUT=DIR] java --enable-native-access=ALL-UNNAMED -cp 'JARS/*' \
 *     org.mooncake4j.cuda.CollectiveBench
 * </pre>
 * Rank r uses GPU r (of those visible); the ranks build a {@link SymmetricHeap} through files in
 * {@code RDV_DIR} (a fresh, empty directory shared by all of them). Phases ({@code PHASES}, default
 * {@code check,time,fault}):
 * <ul>
 * <li>check: all_reduce float32 and bfloat16 (automatic, forced one-shot and the three two-shot variants,
 *     pull, push and pipe; odd sizes,
 *     misaligned and in-place buffers; up to 1 GiB; in place with the kernel's backup of the input,
 *     as the process group runs it, the backup checked bitwise, also misaligned to the input),
 *     all_gather (1 byte to 1 GiB of output; odd sizes and alignments, in place),
 *     reduce_scatter float32 and bfloat16 (odd sizes, misaligned buffers, several chunks of both banks)
 *     and all_to_all (1 byte per block up; odd sizes and alignments, several chunks) against references
 *     computed on the host from every rank's inputs (float32 inputs are integers, so sums are exact;
 *     bfloat16 all_reduce within 1e-2 relative L2 error, bitwise differences counted; bfloat16
 *     reduce_scatter bitwise equal to the fp32 sum in rank order rounded once), with poisoned outputs
 *     and guard bytes; after every collective the kernel's completion words must hold its ticket
 *     ({@link CudaCollectives#lastKernelDone()});</li>
 * <li>time: all_reduce float32 of 8 B .. 512 MiB (factor 4, the sizes of torch_baselines.py), 5
 *     warm-up and 20 timed iterations between CUDA events, the maximum over ranks: the automatic
 *     choice, one-shot (up to one bank) and the three two-shot variants at every size; rank 0 prints an
 *     nccl-tests-like table and writes {@code OUT/mooncake_allreduce_ws<n>.json}, with the fields
 *     torch_baselines.py writes for NCCL ({@code [bytes, time_us, busbw_GBps]} rows), the same rows
 *     for pull, push and pipe, and which two-shot variant was fastest per size; then all_gather,
 *     reduce_scatter (float32 sum) and all_to_all with a per-rank piece of each of those sizes (the
 *     full tensor: world size times that, the bytes of the rows, as torch_nccl_more.py counts them),
 *     busbw = algbw * (n-1)/n, into {@code OUT/mooncake_more_ws<n>.json} ({@code mooncake_allgather},
 *     {@code mooncake_reducescatter}, {@code mooncake_alltoall});</li>
 * <li>fault: rank n-1 exits without calling all_reduce; the others run a one-shot all_reduce (on the
 *     main heap) and a two-shot pull, push and pipe one (each on a small heap of its own, made
 *     before rank n-1 leaves; several pipeline chunks or steps), all in place with a backup; each must fail
 *     within the timeout plus {@value #FAULT_BOUND_MS} ms with a {@link CollectiveTimeoutException}
 *     naming rank n-1, leave a complete backup of its input (what the group's redo puts back), and
 *     fail at once on the next call.</li>
 * </ul>
 * Every check prints {@code PASS}, {@code FAIL} or {@code SKIP}; the exit status is 1 when a check of
 * this rank failed. Other settings: {@code HEAP_MIB} (257: two banks of 128 MiB), {@code SHARING}
 * (auto, shareable, ipc), {@code MOONCAKE_TWOSHOT} (auto, pull, push: the variant of AUTO), {@code CHECK_MAX_MIB} (1024), {@code TIME_MAX_MIB} (512),
 * {@code TIME_MIN_BYTES} (8: the smallest all-reduce timed), {@code TIME_MORE} (1; 0 skips the all_gather / reduce_scatter /
 * all_to_all table), {@code TIME_IN_PLACE} (0; 1 times the all-reduces in place with the kernel's input backup, as
 * the process group runs them),
 * {@code ONESHOT_MAX_BYTES} (the default of {@link CudaCollectives}), {@code EXCHANGE_TIMEOUT_S}
 * (180), {@code CHECK_TIMEOUT_MS} (60000), {@code FAULT_TIMEOUT_MS} (2000).
 */
public final class CollectiveBench {
    static final long MIB = 1L << 20;
    static final int WARMUP = 5;
    static final int ITERATIONS = 20;
    static final long FAULT_BOUND_MS = 1000;
    private static final int JIT_WARMUP = 3000;
    private static final long GUARD = 4096;
    private static final long SLACK = 64 * 1024;      // room for misaligned offsets and guards
    private static final long OP_TIMEOUT_NANOS = 30_000_000_000L;
    private static final long PARALLEL_BLOCK = 1 << 16;

    /** The settings, from the environment. */
    record Config(int rank, int worldSize, Path rdv, Path out, long heapBytes, SymmetricHeap.Sharing sharing,
                  Set<String> phases, long checkMaxBytes, long timeMaxBytes, long oneShotMaxBytes, Duration exchangeTimeout,
                  long checkTimeoutNanos, long faultTimeoutNanos, long timeMinBytes, boolean timeMore) {

        static Config fromEnv(Map<String, String> env) {
            int rank = integer(env, "RANK", null);
            int world = integer(env, "WORLD_SIZE", null);
            if (world < 1 || rank < 0 || rank >= world) {
                throw new IllegalArgumentException("RANK=" + rank + " must be in 0..WORLD_SIZE-1 (WORLD_SIZE=" + world + ")");
            }
            String rdv = env.get("RDV_DIR");
            if (rdv == null || rdv.isBlank()) {
                throw new IllegalArgumentException("RDV_DIR is not set: give every rank the same new, empty directory");
            }
            SymmetricHeap.Sharing sharing = switch (env.getOrDefault("SHARING", "auto").toLowerCase(Locale.ROOT)) {
                case "auto" -> SymmetricHeap.Sharing.AUTO;
                case "shareable", "vmm" -> SymmetricHeap.Sharing.SHAREABLE;
                case "ipc", "legacy" -> SymmetricHeap.Sharing.LEGACY_IPC;
                default -> throw new IllegalArgumentException("SHARING=" + env.get("SHARING") + ": use auto, shareable or ipc");
            };
            Set<String> phases = Arrays.stream(env.getOrDefault("PHASES", "check,time,fault").split(","))
                    .map(String::trim).filter(s -> !s.isEmpty()).collect(Collectors.toSet());
            for (String p : phases) {
                if (!Set.of("check", "time", "fault").contains(p)) {
                    throw new IllegalArgumentException("PHASES: unknown phase '" + p + "' (use check, time, fault)");
                }
            }
            return new Config(rank, world, Path.of(rdv), Path.of(env.getOrDefault("OUT", ".")),
                    integer(env, "HEAP_MIB", 257) * MIB, sharing, phases, integer(env, "CHECK_MAX_MIB", 1024) * MIB,
                    integer(env, "TIME_MAX_MIB", 512) * MIB, Long.parseLong(env.getOrDefault("ONESHOT_MAX_BYTES", "-1")),
                    Duration.ofSeconds(integer(env, "EXCHANGE_TIMEOUT_S", 180)),
                    integer(env, "CHECK_TIMEOUT_MS", 60_000) * 1_000_000L, integer(env, "FAULT_TIMEOUT_MS", 2_000) * 1_000_000L,
                    Long.parseLong(env.getOrDefault("TIME_MIN_BYTES", "8")), !"0".equals(env.getOrDefault("TIME_MORE", "1")));
        }

        private static int integer(Map<String, String> env, String name, Integer fallback) {
            String v = env.get(name);
            if (v == null || v.isBlank()) {
                if (fallback == null) throw new IllegalArgumentException(name + " is not set (the script sets RANK, WORLD_SIZE and RDV_DIR)");
                return fallback;
            }
            try {
                return Integer.parseInt(v.trim());
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(name + "=" + v + " is not an integer");
            }
        }
    }

    private final Config cfg;
    private final int rank;
    private final int world;
    private int failures;
    private boolean broken;     // a collective timed out: the heap is unusable, GPU phases are skipped
    private long checks;        // seeds the inputs of each check, the same on every rank

    private CudaDevice device;
    private CudaStream stream;
    private FileExchange exchange;
    private SymmetricHeap heap;
    private CudaCollectives coll;
    private CudaModule kernels;
    private DeviceBuffer src;
    private DeviceBuffer dst;
    private DeviceBuffer keep;      // the all_reduce checks' backups
    private MemorySegment up;
    private MemorySegment down;

    private CollectiveBench(Config cfg) {
        this.cfg = cfg;
        this.rank = cfg.rank();
        this.world = cfg.worldSize();
    }

    public static void main(String[] args) {
        Config cfg;
        try {
            cfg = Config.fromEnv(System.getenv());
        } catch (IllegalArgumentException e) {
            System.err.println("CollectiveBench: " + e.getMessage());
            System.err.println("usage: RANK=r WORLD_SIZE=n RDV_DIR=DIR [OUT=DIR] [PHASES=check,time,fault] java"
                    + " --enable-native-access=ALL-UNNAMED -cp 'JARS/*' org.mooncake4j.cuda.CollectiveBench");
            System.exit(2);
            return;
        }
        CollectiveBench bench = new CollectiveBench(cfg);
        bench.guarded("rank " + cfg.rank() + " bench", bench::run);
        bench.finish();
    }

    private void finish() {
        System.out.println(failures == 0 ? "BENCH PASSED" : "BENCH FAILED: " + failures + " check(s)");
        System.out.flush();
        System.exit(failures == 0 ? 0 : 1);
    }

    private void report(String check, boolean ok, String detail) {
        if (!ok) failures++;
        System.out.println((ok ? "PASS " : "FAIL ") + check + ": " + detail);
    }

    private static void skip(String check, String reason) { System.out.println("SKIP " + check + ": " + reason); }

    /** Runs {@code body}; an exception is a failed check. A collective timeout makes the heap unusable. */
    private void guarded(String check, Runnable body) {
        try {
            body.run();
        } catch (CollectiveTimeoutException e) {
            broken = true;
            report(check, false, e.getMessage());
        } catch (RuntimeException | AssertionError e) {
            report(check, false, e.toString());
            e.printStackTrace(System.out);
        }
    }

    // ---- phases --------------------------------------------------------------------------------

    private void run() {
        device = CudaDevice.get(rank % CudaDevice.count());
        System.out.printf("rank %d/%d on %s, pid %d, phases %s%n", rank, world, device, ProcessHandle.current().pid(),
                cfg.phases());
        exchange = new FileExchange(cfg.rdv(), rank, world, cfg.exchangeTimeout());
        kernels = CudaModule.loadKernels(device);
        stream = CudaStream.create(device);
        heap = SymmetricHeap.create(device, rank, world, cfg.heapBytes(), exchange, cfg.sharing());
        coll = CudaCollectives.create(heap, kernels);
        if (cfg.oneShotMaxBytes() >= 0) coll.setOneShotMaxBytes(cfg.oneShotMaxBytes());
        report("rank " + rank + " heap", true, heap + "; one-shot up to " + coll.oneShotMaxBytes() + " bytes; two-shot variant "
                + coll.twoShotVariant() + " (" + CudaCollectives.TWO_SHOT_ENV + ")");

        long capacity = Math.max(cfg.phases().contains("check") ? cfg.checkMaxBytes() : 0,
                cfg.phases().contains("time") ? cfg.timeMaxBytes() : 0) + SLACK;
        // the timed all_gather, reduce_scatter and all_to_all move world pieces of up to TIME_MAX_MIB
        long deviceCapacity = Math.max(capacity, cfg.phases().contains("time") ? cfg.timeMaxBytes() * world + SLACK : 0);
        src = DeviceBuffer.allocate(device, deviceCapacity);
        dst = DeviceBuffer.allocate(device, deviceCapacity);
        if (cfg.phases().contains("check")) keep = DeviceBuffer.allocate(device, capacity);
        Arena arena = Arena.ofShared();     // lives until the process exits
        up = arena.allocate(capacity, 16);
        down = arena.allocate(capacity, 16);

        if (cfg.phases().contains("check")) checks();
        boolean anyBroken = agreeOnBroken();
        if (cfg.phases().contains("time")) {
            if (anyBroken) skip("rank " + rank + " timing", "a collective timed out on some rank");
            else guarded("rank " + rank + " timing", this::timing);
        }
        if (cfg.phases().contains("fault")) {
            if (agreeOnBroken()) skip("rank " + rank + " fault", "a collective timed out on some rank");
            else guarded("rank " + rank + " fault", this::fault);
        } else {
            exchange.allGather(new byte[0]);    // nobody closes its heap while a peer still uses it
            coll.close();
            heap.close();
        }
    }

    /** Whether any rank saw a collective time out; a barrier too. */
    private boolean agreeOnBroken() {
        byte[][] all = exchange.allGather(new byte[] {(byte) (broken ? 1 : 0)});
        boolean any = false;
        for (byte[] b : all) any |= b.length > 0 && b[0] == 1;
        return any;
    }

    private void checks() {
        long th = coll.oneShotMaxBytes();
        long bank = heap.layout().bankBytes();
        long maxF32 = cfg.checkMaxBytes() / 4;
        long maxBf16 = cfg.checkMaxBytes() / 2;
        DType f32 = DType.FLOAT32;
        DType bf16 = DType.BFLOAT16;
        Algorithm auto = Algorithm.AUTO;
        Algorithm one = Algorithm.ONE_SHOT;

        for (long n : new long[] {1, 2, 3, 1001, 4099, th / 4 - 4, th / 4 + 4, MIB + 5, 16 * MIB + 3, maxF32 - 3, maxF32}) {
            allReduceCheck(f32, n, auto, 0, 0, false);
        }
        for (long n : new long[] {1, 1001, 65541, Math.min(bank / 4, 4 * MIB) - 1}) allReduceCheck(f32, n, one, 0, 0, false);
        allReduceCheck(f32, 1001, one, 4, 8, false);
        allReduceCheck(f32, 4099, one, 0, 0, true);
        allReduceCheck(f32, 1001, one, 0, 0, true, 4);      // aligned input, misaligned backup: byte copies
        allReduceCheck(f32, 65541, one, 0, 0, false, 0);    // out of place with a backup
        for (Algorithm two : TWO_SHOTS) {
            // the last ones: several pipeline chunks of both banks, up to the largest checked size
            for (long n : new long[] {1, 3, 1001, 65541, 2 * (bank / 4) + 77, 4 * (bank / 4) + 5, maxF32 - 7}) {
                allReduceCheck(f32, n, two, 0, 0, false);
            }
            allReduceCheck(f32, MIB + 3, two, 4, 12, false);
            allReduceCheck(f32, MIB + 1, two, 0, 0, true);
            allReduceCheck(f32, 2 * (bank / 4) + 33, two, 0, 0, true);
            allReduceCheck(f32, 4 * (bank / 4) + 5, two, 4, 4, true);          // several chunks of both banks, backed up
            allReduceCheck(f32, MIB + 3, two, 0, 0, true, 4);                   // aligned input, misaligned backup
            allReduceCheck(f32, 1001, two, 0, 0, false, 0);
        }

        for (long n : new long[] {1, 3, 4097, th / 2 - 8, th / 2 + 8, MIB + 7, maxBf16}) allReduceCheck(bf16, n, auto, 0, 0, false);
        allReduceCheck(bf16, 65543, one, 0, 0, false);
        allReduceCheck(bf16, 65543, one, 2, 2, true);
        for (Algorithm two : TWO_SHOTS) {
            for (long n : new long[] {5, 65543, 2 * (bank / 2) + 9}) allReduceCheck(bf16, n, two, 0, 0, false);
            allReduceCheck(bf16, MIB + 1, two, 2, 6, false);
            allReduceCheck(bf16, MIB + 9, two, 0, 0, true);
            allReduceCheck(bf16, 2 * (bank / 2) + 9, two, 2, 2, true);
        }

        long maxGather = cfg.checkMaxBytes() / world / 16 * 16;
        for (long n : new long[] {1, 7, 8, 1000, 4099, MIB, 16 * MIB + 5, maxGather}) allGatherCheck(n, 0, 0, false);
        allGatherCheck(1001, 1, 3, false);
        allGatherCheck(MIB + 1, 0, 0, false);
        allGatherCheck(4 * MIB, 0, 0, true);
        // the push all_gather: its own block stored by the scatter (aligned) or copied out of the input,
        // several chunks of both banks (a slot holds at most bank / world bytes), in place
        long agChunk = bank / world;
        allGatherCheck(4096, 16, 16, false);
        allGatherCheck(4096, 16, 8, false);
        allGatherCheck(1003, 0, 0, true);
        allGatherCheck(2 * agChunk + 33, 0, 0, false);
        allGatherCheck(3 * agChunk, 0, 0, true);
        allGatherCheck(3 * MIB + 5, 4, 4, false);      // misaligned input: bytes, several chunks

        // reduce_scatter: chunks of a part hold at most bank / world bytes, so the last sizes take several chunks of both banks
        long rsChunkF32 = bank / 4 / world;
        long maxRsF32 = cfg.checkMaxBytes() / 4 / world;
        for (long n : new long[] {1, 3, 4, 1001, 4099, 65541, MIB + 5, 2 * rsChunkF32 + 77, 4 * rsChunkF32 + 5, maxRsF32 - 3}) {
            reduceScatterCheck(f32, n, 0, 0);
        }
        reduceScatterCheck(f32, 1001, 4, 12);
        reduceScatterCheck(f32, MIB + 3, 8, 4);
        long rsChunkBf16 = bank / 2 / world;
        for (long n : new long[] {1, 5, 8, 4097, 65543, MIB + 7, 2 * rsChunkBf16 + 9, cfg.checkMaxBytes() / 2 / world - 1}) {
            reduceScatterCheck(bf16, n, 0, 0);
        }
        reduceScatterCheck(bf16, 1001, 2, 6);

        // all_to_all: any size and alignment; a block's chunks hold at most bank / world bytes
        long a2aChunk = bank / world;
        long maxA2a = cfg.checkMaxBytes() / world;
        for (long n : new long[] {1, 7, 16, 1000, 4099, 65536, MIB + 3, 2 * a2aChunk + 33, 3 * a2aChunk, maxA2a / 16 * 16, maxA2a - 5}) {
            allToAllCheck(n, 0, 0);
        }
        allToAllCheck(1001, 1, 3);
        allToAllCheck(MIB, 4, 4);
        allToAllCheck(2 * a2aChunk + 16, 8, 0);
    }

    private void reduceScatterCheck(DType dt, long count, long srcOffset, long dstOffset) {
        int es = dt.byteSize();
        long inCount = count * world;
        String name = String.format(Locale.ROOT, "rank %d reduce_scatter %s n=%d per rank (%s in)%s", rank, dt.torchName(), count,
                human(inCount * es), srcOffset + dstOffset > 0 ? " src+" + srcOffset + " dst+" + dstOffset : "");
        if (count <= 0 || inCount * es > cfg.checkMaxBytes()) return;
        long seed = ++checks;
        if (broken) {
            skip(name, "an earlier collective timed out");
            return;
        }
        guarded(name, () -> {
            long in = src.pointer() + srcOffset;
            long out = dst.pointer() + dstOffset;
            parallel(inCount, i -> {
                if (dt == DType.FLOAT32) up.setAtIndex(ValueLayout.JAVA_FLOAT, i, f32Value(seed, rank, i));
                else up.setAtIndex(ValueLayout.JAVA_SHORT, i, bf16Value(seed, rank, i));
            });
            poison(src);
            poison(dst);
            stream.copyHostToDevice(up, in, inCount * es);
            stream.synchronize();
            long t0 = System.nanoTime();
            coll.reduceScatter(in, out, count, dt, stream, cfg.checkTimeoutNanos());
            synchronize();
            double ms = (System.nanoTime() - t0) / 1e6;
            long bytes = count * es;
            stream.copyDeviceToHost(dst.pointer(), down, dstOffset + bytes + GUARD);
            stream.synchronize();
            MemorySegment result = down.asSlice(dstOffset, bytes);
            boolean guards = allBytes(down.asSlice(0, dstOffset), (byte) 0xFF) && allBytes(down.asSlice(dstOffset + bytes, GUARD), (byte) 0xFF);
            long offset = rank * count;     // this rank's part of every rank's input
            String detail = dt == DType.FLOAT32 ? verifyF32(result, count, seed, offset) : verifyBf16(result, count, seed, offset);
            // bfloat16: the bits of the fp32 sum in rank order rounded once (those of an all_reduce), nothing else
            boolean ok = detail.startsWith("ok") && guards && (dt == DType.FLOAT32 || detail.contains(", 0 of " + count + " differ"));
            report(name, ok, detail + (guards ? "" : ", GUARD BYTES OVERWRITTEN") + String.format(Locale.ROOT, " (%.1f ms)", ms));
        });
    }

    private void allToAllCheck(long n, long srcOffset, long dstOffset) {
        long total = n * world;
        String name = String.format(Locale.ROOT, "rank %d all_to_all %d bytes per block (%s)%s", rank, n, human(total),
                srcOffset + dstOffset > 0 ? " src+" + srcOffset + " dst+" + dstOffset : "");
        if (n <= 0 || total > cfg.checkMaxBytes()) return;
        long seed = ++checks;
        if (broken) {
            skip(name, "an earlier collective timed out");
            return;
        }
        guarded(name, () -> {
            long in = src.pointer() + srcOffset;
            long out = dst.pointer() + dstOffset;
            parallel(total, i -> up.set(ValueLayout.JAVA_BYTE, i, byteValue(seed, rank, i)));
            poison(src);
            poison(dst);
            stream.copyHostToDevice(up, in, total);
            stream.synchronize();
            long t0 = System.nanoTime();
            coll.allToAll(in, out, n, stream, cfg.checkTimeoutNanos());
            synchronize();
            double ms = (System.nanoTime() - t0) / 1e6;
            stream.copyDeviceToHost(dst.pointer(), down, dstOffset + total + GUARD);
            stream.synchronize();
            MemorySegment result = down.asSlice(dstOffset, total);
            LongAdder bad = new LongAdder();
            AtomicLong first = new AtomicLong(Long.MAX_VALUE);
            // block q of the output is block `rank` of rank q's input
            parallel(total, j -> {
                if (result.get(ValueLayout.JAVA_BYTE, j) != byteValue(seed, (int) (j / n), rank * n + j % n)) {
                    bad.increment();
                    first.accumulateAndGet(j, Math::min);
                }
            });
            boolean guards = allBytes(down.asSlice(0, dstOffset), (byte) 0xFF)
                    && allBytes(down.asSlice(dstOffset + total, GUARD), (byte) 0xFF);
            String detail = bad.sum() == 0 ? "ok, " + total + " bytes equal"
                    : bad.sum() + " of " + total + " bytes wrong, first at " + first.get() + " (from rank " + first.get() / n
                    + ", its byte " + (rank * n + first.get() % n) + ")";
            report(name, bad.sum() == 0 && guards, detail + (guards ? "" : ", GUARD BYTES OVERWRITTEN")
                    + String.format(Locale.ROOT, " (%.1f ms)", ms));
        });
    }

    /** Waits for the stream and checks for a timeout; the last kernel's completion words must then hold its ticket. */
    private void synchronize() {
        coll.synchronize(stream);
        if (!coll.lastKernelDone()) {
            throw new AssertionError("the stream is done but the last kernel's completion words do not hold its ticket "
                    + coll.lastTicket() + ": CudaCollectives.lastKernelDone() would never return true");
        }
    }

    /** An all_reduce check; in place with a backup at the input's offset (as the process group runs it). */
    private void allReduceCheck(DType dt, long count, Algorithm algorithm, long srcOffset, long dstOffset, boolean inPlace) {
        allReduceCheck(dt, count, algorithm, srcOffset, dstOffset, inPlace, inPlace ? srcOffset : -1);
    }

    /** backupOffset: where in the backup buffer the kernel copies the input (-1: no backup). */
    private void allReduceCheck(DType dt, long count, Algorithm algorithm, long srcOffset, long dstOffset, boolean inPlace,
                                long backupOffset) {
        int es = dt.byteSize();
        long bytes = count * es;
        String name = String.format(Locale.ROOT, "rank %d all_reduce %s %s n=%d (%s)%s%s%s", rank, dt.torchName(),
                algorithm.name().toLowerCase(Locale.ROOT).replace('_', '-'), count, human(bytes),
                srcOffset + dstOffset > 0 ? " src+" + srcOffset + " dst+" + dstOffset : "", inPlace ? " in place" : "",
                backupOffset >= 0 ? " + backup" + (backupOffset > 0 ? "+" + backupOffset : "") : "");
        if (count <= 0 || bytes > cfg.checkMaxBytes()) return;
        long seed = ++checks;
        if (broken) {
            skip(name, "an earlier collective timed out");
            return;
        }
        guarded(name, () -> {
            long in = src.pointer() + srcOffset;
            long out = inPlace ? in : dst.pointer() + dstOffset;
            long outBase = inPlace ? src.pointer() : dst.pointer();
            long copy = backupOffset >= 0 ? keep.pointer() + backupOffset : 0;
            if (copy != 0) poison(keep);
            parallel(count, i -> {
                if (dt == DType.FLOAT32) up.setAtIndex(ValueLayout.JAVA_FLOAT, i, f32Value(seed, rank, i));
                else up.setAtIndex(ValueLayout.JAVA_SHORT, i, bf16Value(seed, rank, i));
            });
            poison(src);
            poison(dst);
            stream.copyHostToDevice(up, in, bytes);
            stream.synchronize();
            long t0 = System.nanoTime();
            coll.allReduce(in, out, count, dt, stream, cfg.checkTimeoutNanos(), algorithm, copy);
            synchronize();
            double ms = (System.nanoTime() - t0) / 1e6;
            long prefix = out - outBase;
            stream.copyDeviceToHost(outBase, down, prefix + bytes + GUARD);
            stream.synchronize();
            MemorySegment result = down.asSlice(prefix, bytes);
            boolean guards = allBytes(down.asSlice(0, prefix), (byte) 0xFF) && allBytes(down.asSlice(prefix + bytes, GUARD), (byte) 0xFF);
            String detail = dt == DType.FLOAT32 ? verifyF32(result, count, seed) : verifyBf16(result, count, seed);
            boolean ok = detail.startsWith("ok") && guards;
            if (copy != 0) {
                String b = verifyBackup(backupOffset, bytes);
                ok &= b.startsWith("ok");
                detail += "; backup " + b;
            }
            report(name, ok, detail + (guards ? "" : ", GUARD BYTES OVERWRITTEN") + String.format(Locale.ROOT, " (%.1f ms)", ms));
        });
    }

    /**
     * The backup at {@code keep + offset} against the input in {@link #up} (its first {@code bytes}),
     * bitwise, with guard bytes on both sides. Reuses {@link #down}.
     */
    private String verifyBackup(long offset, long bytes) {
        stream.copyDeviceToHost(keep.pointer(), down, offset + bytes + GUARD);
        stream.synchronize();
        long mismatch = MemorySegment.mismatch(down, offset, offset + bytes, up, 0, bytes);
        boolean guards = allBytes(down.asSlice(0, offset), (byte) 0xFF) && allBytes(down.asSlice(offset + bytes, GUARD), (byte) 0xFF);
        if (mismatch >= 0) return "WRONG from byte " + mismatch + " of " + bytes + (guards ? "" : ", BACKUP GUARD BYTES OVERWRITTEN");
        return guards ? "ok, " + bytes + " bytes equal the input" : "BACKUP GUARD BYTES OVERWRITTEN";
    }

    private String verifyF32(MemorySegment result, long count, long seed) { return verifyF32(result, count, seed, 0); }

    /**
     * Exact comparison: the inputs are integers, so every rank order gives the same float sum. Element
     * i of the result is the sum of the ranks' inputs {@code offset + i}.
     */
    private String verifyF32(MemorySegment result, long count, long seed, long offset) {
        LongAdder bad = new LongAdder();
        AtomicLong first = new AtomicLong(Long.MAX_VALUE);
        parallel(count, i -> {
            float expected = 0;
            for (int q = 0; q < world; q++) expected = q == 0 ? f32Value(seed, 0, offset + i) : expected + f32Value(seed, q, offset + i);
            float got = result.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            if (Float.floatToRawIntBits(got) != Float.floatToRawIntBits(expected)) {
                bad.increment();
                first.accumulateAndGet(i, Math::min);
            }
        });
        if (bad.sum() == 0) return "ok, " + count + " sums exact";
        long i = first.get();
        float expected = 0;
        for (int q = 0; q < world; q++) expected += f32Value(seed, q, offset + i);
        return bad.sum() + " of " + count + " elements wrong, first at " + i + ": got "
                + result.getAtIndex(ValueLayout.JAVA_FLOAT, i) + ", expected " + expected;
    }

    /** Relative L2 error against a float64 reference (at most 1e-2), no NaN; bitwise differences from fp32-in-rank-order reported. */
    private String verifyBf16(MemorySegment result, long count, long seed) { return verifyBf16(result, count, seed, 0); }

    /** {@link #verifyBf16(MemorySegment, long, long)} where element i sums the ranks' inputs {@code offset + i}. */
    private String verifyBf16(MemorySegment result, long count, long seed, long offset) {
        DoubleAdder err2 = new DoubleAdder();
        DoubleAdder ref2 = new DoubleAdder();
        LongAdder nan = new LongAdder();
        LongAdder bitwise = new LongAdder();
        parallel(count, i -> {
            float acc = 0;
            double ref = 0;
            for (int q = 0; q < world; q++) {
                float v = FloatFormats.bf16ToFloat(bf16Value(seed, q, offset + i));
                acc = q == 0 ? v : acc + v;
                ref += v;
            }
            short gotBits = result.getAtIndex(ValueLayout.JAVA_SHORT, i);
            float got = FloatFormats.bf16ToFloat(gotBits);
            if (Float.isNaN(got)) nan.increment();
            if (gotBits != FloatFormats.floatToBf16(acc)) bitwise.increment();
            err2.add((got - ref) * (got - ref));
            ref2.add(ref * ref);
        });
        double rel = ref2.sum() == 0 ? Math.sqrt(err2.sum()) : Math.sqrt(err2.sum() / ref2.sum());
        boolean ok = nan.sum() == 0 && rel <= 1e-2;
        return (ok ? "ok, " : "") + String.format(Locale.ROOT, "relative L2 error %.2e (limit 1e-2), %d NaN, %d of %d differ"
                + " bitwise from fp32 sums in rank order rounded once", rel, nan.sum(), bitwise.sum(), count);
    }

    private void allGatherCheck(long n, long srcOffset, long dstOffset, boolean inPlace) {
        String name = String.format(Locale.ROOT, "rank %d all_gather %d bytes per rank (%s)%s%s", rank, n, human(n * world),
                srcOffset + dstOffset > 0 ? " src+" + srcOffset + " dst+" + dstOffset : "", inPlace ? " in place" : "");
        if (n <= 0 || n * world > cfg.checkMaxBytes()) return;
        long seed = ++checks;
        if (broken) {
            skip(name, "an earlier collective timed out");
            return;
        }
        guarded(name, () -> {
            long out = dst.pointer() + dstOffset;
            long in = inPlace ? out + rank * n : src.pointer() + srcOffset;
            parallel(n, i -> up.set(ValueLayout.JAVA_BYTE, i, byteValue(seed, rank, i)));
            poison(src);
            poison(dst);
            stream.copyHostToDevice(up, in, n);
            stream.synchronize();
            long t0 = System.nanoTime();
            coll.allGather(in, out, n, stream, cfg.checkTimeoutNanos());
            synchronize();
            double ms = (System.nanoTime() - t0) / 1e6;
            long total = n * world;
            stream.copyDeviceToHost(dst.pointer(), down, dstOffset + total + GUARD);
            stream.synchronize();
            MemorySegment result = down.asSlice(dstOffset, total);
            LongAdder bad = new LongAdder();
            AtomicLong first = new AtomicLong(Long.MAX_VALUE);
            parallel(total, j -> {
                if (result.get(ValueLayout.JAVA_BYTE, j) != byteValue(seed, (int) (j / n), j % n)) {
                    bad.increment();
                    first.accumulateAndGet(j, Math::min);
                }
            });
            boolean guards = allBytes(down.asSlice(0, dstOffset), (byte) 0xFF)
                    && allBytes(down.asSlice(dstOffset + total, GUARD), (byte) 0xFF);
            String detail = bad.sum() == 0 ? "ok, " + total + " bytes equal"
                    : bad.sum() + " of " + total + " bytes wrong, first at " + first.get() + " (rank " + first.get() / n
                    + "'s byte " + first.get() % n + ")";
            report(name, bad.sum() == 0 && guards, detail + (guards ? "" : ", GUARD BYTES OVERWRITTEN")
                    + String.format(Locale.ROOT, " (%.1f ms)", ms));
        });
    }

    private void timing() {
        List<Long> sizes = timedSizes(cfg.timeMinBytes(), cfg.timeMaxBytes());
        long maxCount = sizes.getLast() / 4;
        parallel(maxCount, i -> up.setAtIndex(ValueLayout.JAVA_FLOAT, i, f32Value(0x7157, rank, i)));
        stream.copyHostToDevice(up, src.pointer(), maxCount * 4);
        stream.synchronize();
        // Compile the launch path before timing: interpreted, the host would be slower than the GPU at small sizes.
        for (int i = 0; i < JIT_WARMUP; i++) {
            for (Algorithm a : CONCRETE) coll.allReduce(src.pointer(), dst.pointer(), 2, DType.FLOAT32, stream, OP_TIMEOUT_NANOS, a);
        }
        coll.synchronize(stream);
        long bank = heap.layout().bankBytes();
        double[] times = new double[sizes.size() * TIMES];  // per size: auto, one-shot, pull, push, pipe (NaN: not run)
        Arrays.fill(times, Double.NaN);
        try (CudaEvent start = CudaEvent.create(device, true); CudaEvent end = CudaEvent.create(device, true)) {
            for (int s = 0; s < sizes.size(); s++) {
                long bytes = sizes.get(s);
                long count = bytes / 4;
                exchange.allGather(new byte[0]);    // start together; the warm-up absorbs what skew is left
                Algorithm chosen = coll.algorithmFor(bytes);
                double auto = time(start, end, count, Algorithm.AUTO);
                times[TIMES * s] = auto;
                times[TIMES * s + column(chosen)] = auto;
                for (Algorithm a : CONCRETE) {
                    if (a == chosen || (a == Algorithm.ONE_SHOT && bytes > bank)) continue;
                    times[TIMES * s + column(a)] = time(start, end, count, a);
                }
            }
        }
        double[] max = maxOverRanks(times);
        List<Row> rows = new ArrayList<>();
        for (int s = 0; s < sizes.size(); s++) {
            long bytes = sizes.get(s);
            rows.add(new Row(bytes, bytes / 4, label(coll.algorithmFor(bytes)), max[TIMES * s], max[TIMES * s + 1],
                    max[TIMES * s + 2], max[TIMES * s + 3], max[TIMES * s + 4]));
        }
        report("rank " + rank + " timing", true, sizes.size() + " sizes timed, " + WARMUP + " warm-up + " + ITERATIONS
                + " iterations each");
        if (rank == 0) {
            String table = table(world, device.toString(), heap, rows);
            System.out.print(table);
            writeResults("mooncake_allreduce_ws" + world, table, json(world, device.name(), heap.sharing().name(), rows));
        }
        if (cfg.timeMore()) timingMore(sizes);
    }

    /** Writes {@code stem}.txt (the table) and {@code stem}.json into the results folder. */
    private void writeResults(String stem, String table, String json) {
        try {
            Files.createDirectories(cfg.out());
            Files.writeString(cfg.out().resolve(stem + ".json"), json);
            Files.writeString(cfg.out().resolve(stem + ".txt"), table);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write the results to " + cfg.out(), e);
        }
    }

    /** The collectives of the second timing table, as the JSON and torch_nccl_more.py name them. */
    static final List<String> MORE = List.of("allgather", "reducescatter", "alltoall");

    /**
     * all_gather, reduce_scatter (float32) and all_to_all with a per-rank piece of each timed size: the
     * full tensor (all_gather's output, reduce_scatter's input, all_to_all's input and output) holds
     * world pieces. Inputs are float32 0.747 (memset), the time does not depend on them.
     */
    private void timingMore(List<Long> sizes) {
        long maxTotal = sizes.getLast() * world;
        device.makeCurrent();
        CudaDriver.cuMemsetD8(src.pointer(), (byte) 0x3F, maxTotal);
        device.synchronize();
        for (int i = 0; i < JIT_WARMUP; i++) {
            coll.allGather(src.pointer(), dst.pointer(), 16, stream, OP_TIMEOUT_NANOS);
            coll.reduceScatter(src.pointer(), dst.pointer(), 4, DType.FLOAT32, stream, OP_TIMEOUT_NANOS);
            coll.allToAll(src.pointer(), dst.pointer(), 16, stream, OP_TIMEOUT_NANOS);
        }
        coll.synchronize(stream);
        double[] times = new double[sizes.size() * MORE.size()];
        try (CudaEvent start = CudaEvent.create(device, true); CudaEvent end = CudaEvent.create(device, true)) {
            for (int s = 0; s < sizes.size(); s++) {
                long piece = sizes.get(s);
                exchange.allGather(new byte[0]);
                times[MORE.size() * s] = time(start, end, () -> coll.allGather(src.pointer(), dst.pointer(), piece, stream,
                        OP_TIMEOUT_NANOS));
                times[MORE.size() * s + 1] = time(start, end, () -> coll.reduceScatter(src.pointer(), dst.pointer(), piece / 4,
                        DType.FLOAT32, stream, OP_TIMEOUT_NANOS));
                times[MORE.size() * s + 2] = time(start, end, () -> coll.allToAll(src.pointer(), dst.pointer(), piece, stream,
                        OP_TIMEOUT_NANOS));
            }
        }
        double[] max = maxOverRanks(times);
        List<MoreRow> rows = new ArrayList<>();
        for (int s = 0; s < sizes.size(); s++) {
            for (int c = 0; c < MORE.size(); c++) {
                rows.add(new MoreRow(MORE.get(c), sizes.get(s) * world, sizes.get(s), max[MORE.size() * s + c]));
            }
        }
        report("rank " + rank + " timing (all_gather, reduce_scatter, all_to_all)", true, sizes.size() + " sizes timed, "
                + WARMUP + " warm-up + " + ITERATIONS + " iterations each");
        if (rank == 0) {
            String table = moreTable(world, device.toString(), heap, rows);
            System.out.print(table);
            writeResults("mooncake_more_ws" + world, table, moreJson(world, device.name(), heap.sharing().name(), rows));
        }
    }

    /** The two-shot variants, each checked, timed and fault-tested. */
    private static final List<Algorithm> TWO_SHOTS = List.of(Algorithm.TWO_SHOT_PULL, Algorithm.TWO_SHOT_PUSH, Algorithm.TWO_SHOT_PIPE);
    /** Every algorithm with a column of its own ({@link #column}). */
    private static final List<Algorithm> CONCRETE = List.of(Algorithm.ONE_SHOT, Algorithm.TWO_SHOT_PULL, Algorithm.TWO_SHOT_PUSH,
            Algorithm.TWO_SHOT_PIPE);
    private static final int TIMES = 1 + CONCRETE.size();

    /** The column of an algorithm's time in a row of {@link #TIMES}: 1 one-shot, 2 pull, 3 push, 4 pipe. */
    private static int column(Algorithm a) {
        return switch (a) {
            case ONE_SHOT -> 1;
            case TWO_SHOT_PULL -> 2;
            case TWO_SHOT_PUSH -> 3;
            case TWO_SHOT_PIPE -> 4;
            default -> throw new IllegalArgumentException("not a concrete algorithm: " + a);
        };
    }

    /** How the table and JSON name a concrete algorithm. */
    static String label(Algorithm a) {
        return switch (a) {
            case ONE_SHOT -> "one-shot";
            case TWO_SHOT_PULL -> "pull";
            case TWO_SHOT_PUSH -> "push";
            case TWO_SHOT_PIPE -> "pipe";
            default -> a.name().toLowerCase(Locale.ROOT);
        };
    }

    /** Microseconds per all_reduce: {@value #WARMUP} warm-up calls, then {@value #ITERATIONS} between two events. */
    private double time(CudaEvent start, CudaEvent end, long count, Algorithm algorithm) {
        if (TIME_IN_PLACE) {
            // as the process group runs it: in place, the kernel backing the input up (into dst, unused otherwise)
            return time(start, end, () -> coll.allReduce(src.pointer(), src.pointer(), count, DType.FLOAT32, stream, OP_TIMEOUT_NANOS,
                    algorithm, dst.pointer()));
        }
        return time(start, end, () -> coll.allReduce(src.pointer(), dst.pointer(), count, DType.FLOAT32, stream, OP_TIMEOUT_NANOS,
                algorithm));
    }

    /** TIME_IN_PLACE=1: the all_reduce timing table times in-place calls with the kernel's input backup. */
    private static final boolean TIME_IN_PLACE = "1".equals(System.getenv("TIME_IN_PLACE"));

    /**
     * Microseconds per {@code op} (which queues one collective): {@value #WARMUP} warm-up calls, then
     * {@value #ITERATIONS} queued back to back between two events; one synchronisation at the end.
     */
    private double time(CudaEvent start, CudaEvent end, Runnable op) {
        for (int i = 0; i < WARMUP; i++) op.run();
        start.record(stream);
        for (int i = 0; i < ITERATIONS; i++) op.run();
        end.record(stream);
        end.synchronize();
        coll.check();
        return CudaEvent.elapsedMillis(start, end) * 1000.0 / ITERATIONS;
    }

    private double[] maxOverRanks(double[] mine) {
        ByteBuffer b = ByteBuffer.allocate(mine.length * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (double d : mine) b.putDouble(d);
        byte[][] all = exchange.allGather(b.array());
        double[] max = mine.clone();
        for (byte[] other : all) {
            ByteBuffer o = ByteBuffer.wrap(other).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < max.length; i++) {
                double d = o.getDouble();
                if (Double.isNaN(max[i]) || d > max[i]) max[i] = d;
            }
        }
        return max;
    }

    /** Bytes of each extra heap of the fault phase: two banks of 2 MiB. */
    private static final long FAULT_HEAP_BYTES = SymmetricHeap.Layout.DATA_OFFSET + 4 * MIB;
    /** Elements of the fault phase's one-shot all_reduce. */
    private static final long FAULT_COUNT = 8192;
    /** Elements of its two-shot ones: several pipeline chunks on the fault heaps (banks of 2 MiB). */
    private static final long FAULT_TWO_SHOT_COUNT = 3 * MIB + 5;

    private void fault() {
        if (world < 2) {
            skip("rank " + rank + " fault", "needs WORLD_SIZE >= 2");
            return;
        }
        // A timeout makes a heap unusable, so each variant gets a heap of its own, made while all ranks are here.
        record Case(String name, CudaCollectives coll, Algorithm algorithm, long count) {}
        List<Case> cases = new ArrayList<>();
        cases.add(new Case("one-shot", coll, Algorithm.ONE_SHOT, FAULT_COUNT));
        for (Algorithm a : TWO_SHOTS) {
            SymmetricHeap h = SymmetricHeap.create(device, rank, world, FAULT_HEAP_BYTES, exchange, cfg.sharing());
            cases.add(new Case("two-shot " + label(a), CudaCollectives.create(h, kernels), a, FAULT_TWO_SHOT_COUNT));
        }
        // in place with a backup, as the process group runs it: after the timeout the backup must hold the input
        long faultBytes = FAULT_TWO_SHOT_COUNT * 4 + GUARD;
        faultData = DeviceBuffer.allocate(device, faultBytes);
        faultCopy = DeviceBuffer.allocate(device, faultBytes);
        faultHost = Arena.ofShared().allocate(2 * faultBytes, 16);
        exchange.allGather(new byte[0]);
        if (rank == world - 1) {
            report("rank " + rank + " fault", true, "leaves without calling all_reduce (a simulated crash; "
                    + heap.sharing() + " heap)");
            System.out.println(failures == 0 ? "BENCH PASSED" : "BENCH FAILED: " + failures + " check(s)");
            System.out.flush();
            Runtime.getRuntime().halt(failures == 0 ? 0 : 1);
        }
        broken = true;
        for (Case c : cases) faultCase(c.name(), c.coll(), c.algorithm(), c.count());
    }

    private DeviceBuffer faultData;
    private DeviceBuffer faultCopy;
    private MemorySegment faultHost;

    private void faultCase(String what, CudaCollectives cc, Algorithm algorithm, long count) {
        long timeout = cfg.faultTimeoutNanos();
        String check = "rank " + rank + " fault (" + what + ")";
        long bytes = count * 4;
        MemorySegment input = faultHost.asSlice(0, bytes);
        MemorySegment copied = faultHost.asSlice(faultHost.byteSize() / 2, bytes + GUARD);
        long seed = ++checks;
        parallel(count, i -> input.setAtIndex(ValueLayout.JAVA_FLOAT, i, f32Value(seed, rank, i)));
        device.makeCurrent();
        CudaDriver.cuMemsetD8(faultCopy.pointer(), (byte) 0xFF, faultCopy.size());
        device.synchronize();
        stream.copyHostToDevice(input, faultData.pointer(), bytes);
        stream.synchronize();
        long t0 = System.nanoTime();
        try {
            cc.allReduce(faultData.pointer(), faultData.pointer(), count, DType.FLOAT32, stream, timeout, algorithm,
                    faultCopy.pointer());
            cc.synchronize(stream);
            report(check + ": survivors give up", false, "all_reduce returned normally although rank "
                    + (world - 1) + " never called it");
        } catch (CollectiveTimeoutException e) {
            long ms = (System.nanoTime() - t0) / 1_000_000;
            boolean names = e.missingRanks().equals(List.of(world - 1));
            boolean inTime = ms <= timeout / 1_000_000 + FAULT_BOUND_MS;
            report(check + ": survivors give up", names && inTime, "after " + ms + " ms (timeout "
                    + timeout / 1_000_000 + " ms + " + FAULT_BOUND_MS + " ms allowed), missing " + e.missingRanks()
                    + " (expected [" + (world - 1) + "]): " + e.getMessage());
        } catch (RuntimeException e) {
            report(check + ": survivors give up", false, e.toString());
            return;
        }
        // the stream has synchronized: the kernel is done, and so is its backup
        boolean signalled = cc.lastKernelDone();
        stream.copyDeviceToHost(faultCopy.pointer(), copied, bytes + GUARD);
        stream.synchronize();
        long mismatch = MemorySegment.mismatch(copied, 0, bytes, input, 0, bytes);
        boolean guard = allBytes(copied.asSlice(bytes, GUARD), (byte) 0xFF);
        report(check + ": backup complete after the timeout", mismatch < 0 && guard && signalled, (mismatch < 0
                ? bytes + " bytes equal the input" : "the backup differs from the input from byte " + mismatch + " of " + bytes)
                + (guard ? "" : ", BACKUP GUARD BYTES OVERWRITTEN") + (signalled ? "" : ", COMPLETION WORDS NOT WRITTEN"));
        long t1 = System.nanoTime();
        try {
            cc.allReduce(src.pointer(), dst.pointer(), FAULT_COUNT, DType.FLOAT32, stream, timeout, algorithm);
            report(check + ": later calls fail fast", false, "the next all_reduce was accepted");
        } catch (CollectiveTimeoutException e) {
            long ms = (System.nanoTime() - t1) / 1_000_000;
            report(check + ": later calls fail fast", ms < 100, "the next all_reduce threw at once ("
                    + ms + " ms) naming " + e.missingRanks());
        }
    }

    // ---- inputs --------------------------------------------------------------------------------

    /** A well-mixed 64-bit value of (seed, rank, index) (splitmix64's finaliser). */
    static long mix(long seed, int rank, long i) {
        long z = seed * 0x9E37_79B9_7F4A_7C15L + rank * 0xD1B5_4A32_D192_ED03L + i * 0x8CB9_2BA7_2F3D_8DD7L;
        z = (z ^ (z >>> 30)) * 0xBF58_476D_1CE4_E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D0_49BB_1331_11EBL;
        return z ^ (z >>> 31);
    }

    /** Rank {@code rank}'s float32 input {@code i}: an integer in [-64, 64], so sums over 8 ranks are exact. */
    static float f32Value(long seed, int rank, long i) { return (float) ((mix(seed, rank, i) >>> 40) % 129 - 64); }

    /** Rank {@code rank}'s bfloat16 input {@code i} (bits): k/64 for k in [-2000, 2000], rounded to bfloat16. */
    static short bf16Value(long seed, int rank, long i) {
        return FloatFormats.floatToBf16(((mix(seed, rank, i) >>> 40) % 4001 - 2000) / 64f);
    }

    static byte byteValue(long seed, int rank, long i) { return (byte) (mix(seed, rank, i) >>> 56); }

    /** The sizes torch_baselines.py times NCCL all_reduce at (float32, 8 B .. 512 MiB by 4x), up to {@code maxBytes}. */
    static List<Long> timedSizes(long maxBytes) { return timedSizes(0, maxBytes); }

    /** The sizes of torch_baselines.py (8 B, 32 B, ... 1 GiB) from {@code minBytes} (TIME_MIN_BYTES) to {@code maxBytes} (TIME_MAX_MIB). */
    static List<Long> timedSizes(long minBytes, long maxBytes) {
        List<Long> sizes = new ArrayList<>();
        for (int p = 3; p < 31; p += 2) {
            long bytes = 4 * Math.max(1, (1L << p) / 4);
            if (bytes >= minBytes && bytes <= maxBytes) sizes.add(bytes);
        }
        if (sizes.isEmpty()) {
            throw new IllegalArgumentException("TIME_MIN_BYTES=" + minBytes + " and TIME_MAX_MIB leave no size to time (the sizes are 8 B, 32 B,"
                    + " ... x4 up to 512 MiB); lower TIME_MIN_BYTES or raise TIME_MAX_MIB");
        }
        return sizes;
    }

    // ---- report --------------------------------------------------------------------------------

    /**
     * One timed size: the automatic choice's time, and each algorithm's (NaN: not run): one-shot and the
     * two-shot variants pull, push and pipe. Times in microseconds.
     */
    record Row(long bytes, long count, String algorithm, double timeUs, double oneShotUs, double pullUs, double pushUs,
               double pipeUs) {
        /** GB/s of message: bytes / time. */
        double algbw() { return algbw(timeUs); }

        /** nccl-tests' bus bandwidth of all_reduce: algbw * 2(n-1)/n. */
        double busbw(int worldSize) { return busbw(timeUs, worldSize); }

        double algbw(double us) { return bytes / us / 1e3; }

        double busbw(double us, int worldSize) { return algbw(us) * 2 * (worldSize - 1) / worldSize; }

        /** The fastest two-shot variant ("pull", "push" or "pipe"), or "-" when any of them was not timed. */
        String fasterTwoShot() {
            Algorithm best = null;
            for (Algorithm a : TWO_SHOTS) {
                if (Double.isNaN(twoShotUs(a))) return "-";
                if (best == null || twoShotUs(a) < twoShotUs(best)) best = a;   // a tie keeps the earlier variant
            }
            return label(best);
        }

        /** The time of a two-shot variant (one of {@link #TWO_SHOTS}). */
        double twoShotUs(Algorithm a) {
            return switch (a) {
                case TWO_SHOT_PULL -> pullUs;
                case TWO_SHOT_PUSH -> pushUs;
                case TWO_SHOT_PIPE -> pipeUs;
                default -> throw new IllegalArgumentException("not a two-shot variant: " + a);
            };
        }
    }

    static String table(int worldSize, String device, SymmetricHeap heap, List<Row> rows) {
        StringBuilder t = new StringBuilder();
        t.append(String.format(Locale.ROOT, "# mooncake all_reduce (sum, float32), %d ranks on %s%s%n", worldSize, device,
                heap == null ? "" : ", " + heap.sharing() + " heap, banks of " + heap.layout().bankBytes() / MIB + " MiB"));
        t.append(String.format(Locale.ROOT, "# CUDA events around %d iterations after %d warm-up, maximum over ranks%n",
                ITERATIONS, WARMUP));
        t.append(String.format(Locale.ROOT, "# %12s %12s %9s %11s %12s %12s %13s %10s %10s %10s %11s %11s %11s %7s%n", "size(B)",
                "count", "algo", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "one-shot(us)", "pull(us)", "push(us)", "pipe(us)",
                "pull busbw", "push busbw", "pipe busbw", "faster"));
        for (Row r : rows) {
            t.append(String.format(Locale.ROOT, "  %12d %12d %9s %11.2f %12.2f %12.2f %13s %10s %10s %10s %11s %11s %11s %7s%n",
                    r.bytes(), r.count(), r.algorithm(), r.timeUs(), r.algbw(), r.busbw(worldSize), us(r.oneShotUs()),
                    us(r.pullUs()), us(r.pushUs()), us(r.pipeUs()), us(r.busbw(r.pullUs(), worldSize)),
                    us(r.busbw(r.pushUs(), worldSize)), us(r.busbw(r.pipeUs(), worldSize)), r.fasterTwoShot()));
        }
        return t.toString();
    }

    /**
     * One timed size of all_gather, reduce_scatter or all_to_all ({@link #MORE}): {@code bytes} of the
     * full tensor (world pieces of {@code perRank}), microseconds per call.
     */
    record MoreRow(String collective, long bytes, long perRank, double timeUs) {
        /** GB/s of the full tensor: bytes / time. */
        double algbw() { return bytes / timeUs / 1e3; }

        /** nccl-tests' bus bandwidth of all_gather, reduce_scatter and all_to_all: algbw * (n-1)/n. */
        double busbw(int worldSize) { return algbw() * (worldSize - 1) / worldSize; }
    }

    static String moreTable(int worldSize, String device, SymmetricHeap heap, List<MoreRow> rows) {
        StringBuilder t = new StringBuilder();
        t.append(String.format(Locale.ROOT, "# mooncake all_gather, reduce_scatter (sum, float32), all_to_all, %d ranks on %s%s%n",
                worldSize, device, heap == null ? "" : ", " + heap.sharing() + " heap, banks of " + heap.layout().bankBytes() / MIB + " MiB"));
        t.append(String.format(Locale.ROOT, "# CUDA events around %d iterations after %d warm-up, maximum over ranks;"
                + " size = the full tensor (world x per rank), busbw = algbw * (n-1)/n%n", ITERATIONS, WARMUP));
        t.append(String.format(Locale.ROOT, "# %14s %12s %12s %11s %12s %12s%n", "collective", "size(B)", "per rank(B)", "time(us)",
                "algbw(GB/s)", "busbw(GB/s)"));
        for (MoreRow r : rows) {
            t.append(String.format(Locale.ROOT, "  %14s %12d %12d %11.2f %12.2f %12.2f%n", r.collective(), r.bytes(), r.perRank(),
                    r.timeUs(), r.algbw(), r.busbw(worldSize)));
        }
        return t.toString();
    }

    /**
     * The second timing table as JSON: {@code mooncake_allgather}, {@code mooncake_reducescatter} and
     * {@code mooncake_alltoall}, rows {@code [bytes of the full tensor, time_us, busbw_GBps]} as
     * torch_nccl_more.py writes {@code nccl_allgather}, {@code nccl_reducescatter} and {@code nccl_alltoall}.
     */
    static String moreJson(int worldSize, String device, String heapKind, List<MoreRow> rows) {
        StringBuilder j = new StringBuilder();
        j.append("{\"world\": ").append(worldSize).append(", \"device\": ").append(quote(device)).append(", \"heap\": ")
                .append(quote(heapKind)).append(", \"dtype\": \"float32\", \"size\": ")
                .append(quote("bytes of the full tensor: world x per-rank piece")).append(", \"timing\": ")
                .append(quote("cuda events, " + WARMUP + " warm-up + " + ITERATIONS + " iterations, max over ranks"));
        for (String c : MORE) {
            j.append(", \"mooncake_").append(c).append("\": [");
            boolean firstRow = true;
            for (MoreRow r : rows) {
                if (!r.collective().equals(c)) continue;
                j.append(firstRow ? "" : ", ").append('[').append(r.bytes()).append(", ").append(number(r.timeUs())).append(", ")
                        .append(number(r.busbw(worldSize))).append(']');
                firstRow = false;
            }
            j.append(']');
        }
        return j.append("}\n").toString();
    }

    private static String us(double v) { return Double.isNaN(v) ? "-" : String.format(Locale.ROOT, "%.2f", v); }

    /**
     * The results as JSON: {@code mooncake_allreduce} has the rows of torch_baselines.py's
     * {@code nccl_allreduce}, {@code [bytes, time_us, busbw_GBps]} (the automatic choice);
     * {@code mooncake_allreduce_pull}, {@code mooncake_allreduce_push} and {@code mooncake_allreduce_pipe} the same rows for the three
     * two-shot variants (null where not timed); {@code mooncake_allreduce_detail} adds the algorithm,
     * every algorithm's time and the faster two-shot variant.
     */
    static String json(int worldSize, String device, String heapKind, List<Row> rows) {
        StringBuilder j = new StringBuilder();
        j.append("{\"world\": ").append(worldSize).append(", \"device\": ").append(quote(device)).append(", \"heap\": ")
                .append(quote(heapKind)).append(", \"dtype\": \"float32\", \"timing\": ")
                .append(quote("cuda events, " + WARMUP + " warm-up + " + ITERATIONS + " iterations, max over ranks"))
                .append(", \"mooncake_allreduce\": [");
        for (int i = 0; i < rows.size(); i++) {
            Row r = rows.get(i);
            j.append(i == 0 ? "" : ", ").append('[').append(r.bytes()).append(", ").append(number(r.timeUs())).append(", ")
                    .append(number(r.busbw(worldSize))).append(']');
        }
        for (Algorithm variant : TWO_SHOTS) {
            j.append("], \"mooncake_allreduce_").append(label(variant)).append("\": [");
            for (int i = 0; i < rows.size(); i++) {
                Row r = rows.get(i);
                double us = r.twoShotUs(variant);
                j.append(i == 0 ? "" : ", ").append('[').append(r.bytes()).append(", ").append(number(us)).append(", ")
                        .append(number(r.busbw(us, worldSize))).append(']');
            }
        }
        j.append("], \"mooncake_allreduce_detail\": [");
        for (int i = 0; i < rows.size(); i++) {
            Row r = rows.get(i);
            j.append(i == 0 ? "" : ", ").append("{\"bytes\": ").append(r.bytes()).append(", \"count\": ").append(r.count())
                    .append(", \"algorithm\": ").append(quote(r.algorithm())).append(", \"time_us\": ").append(number(r.timeUs()))
                    .append(", \"algbw_GBps\": ").append(number(r.algbw())).append(", \"busbw_GBps\": ")
                    .append(number(r.busbw(worldSize))).append(", \"one_shot_us\": ").append(number(r.oneShotUs()))
                    .append(", \"two_shot_pull_us\": ").append(number(r.pullUs())).append(", \"two_shot_push_us\": ")
                    .append(number(r.pushUs())).append(", \"two_shot_pipe_us\": ").append(number(r.pipeUs()))
                    .append(", \"faster_two_shot\": ").append(quote(r.fasterTwoShot())).append('}');
        }
        return j.append("]}\n").toString();
    }

    private static String number(double v) {
        return Double.isNaN(v) || Double.isInfinite(v) ? "null" : String.format(Locale.ROOT, "%.4f", v);
    }

    private static String quote(String s) {
        StringBuilder q = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> q.append("\\\"");
                case '\\' -> q.append("\\\\");
                default -> {
                    if (c < 0x20) q.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
                    else q.append(c);
                }
            }
        }
        return q.append('"').toString();
    }

    static String human(long bytes) {
        if (bytes < 1024) return bytes + " B";
        if (bytes < MIB) return String.format(Locale.ROOT, "%.1f KiB", bytes / 1024.0);
        if (bytes < 1024 * MIB) return String.format(Locale.ROOT, "%.1f MiB", bytes / (double) MIB);
        return String.format(Locale.ROOT, "%.2f GiB", bytes / (1024.0 * MIB));
    }

    // ---- helpers -------------------------------------------------------------------------------

    private interface IndexAction {
        void run(long i);
    }

    /** Runs {@code action} for 0 <= i < n on all cores. */
    private static void parallel(long n, IndexAction action) {
        LongStream.range(0, CollectivePlan.ceilDiv(n, PARALLEL_BLOCK)).parallel().forEach(b -> {
            long end = Math.min(n, (b + 1) * PARALLEL_BLOCK);
            for (long i = b * PARALLEL_BLOCK; i < end; i++) action.run(i);
        });
    }

    /** Fills {@code b} with 0xFF bytes (NaN as floats), so that unwritten or overwritten bytes show. */
    private void poison(DeviceBuffer b) {
        device.makeCurrent();
        CudaDriver.cuMemsetD8(b.pointer(), (byte) 0xFF, b.size());
        device.synchronize();
    }

    private static boolean allBytes(MemorySegment s, byte value) {
        for (long i = 0; i < s.byteSize(); i++) {
            if (s.get(ValueLayout.JAVA_BYTE, i) != value) return false;
        }
        return true;
    }
}
