package org.mooncake4j.pg;

import java.time.Duration;
import java.util.Arrays;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/**
 * One process of the elastic-membership tests. Environment: ROLE (healthy | joiner | noext | maxws |
 * early), JOIN_RANK (the rank being replaced or added), MAX_WS, INIT_WORLD. Healthy ranks loop
 * all-reduces, checking each sum against the mask it covered, poll {@code peerState([JOIN_RANK])}
 * once the rank is missing, recover it, then run the same "after" phase as the joiner: all-reduces
 * over everyone, a subgroup all-reduce, a P2P ring, a barrier.
 */
public final class ElasticWorker {
    private static final int AFTER_ITERS = 30;

    public static void main(String[] args) {
        String role = System.getenv("ROLE");
        int rank = Integer.parseInt(System.getenv("RANK"));
        int joinRank = Integer.parseInt(System.getenv("JOIN_RANK"));
        int maxWs = Integer.parseInt(System.getenv("MAX_WS"));
        int initWorld = Integer.parseInt(System.getenv("INIT_WORLD"));
        Duration timeout = Duration.ofMillis(Long.parseLong(System.getenv().getOrDefault("MOONCAKE_TIMEOUT_MS", "10000")));
        try {
            switch (role) {
                case "healthy" -> healthy(rank, joinRank, maxWs, initWorld, timeout);
                case "joiner" -> joiner(rank, maxWs, timeout);
                case "noext" -> expectInitError(rank, maxWs, maxWs, false, timeout);
                case "maxws" -> expectInitError(rank, maxWs + 1, maxWs + 1, true, timeout);
                case "early" -> early(rank, maxWs, timeout);
                default -> throw new IllegalArgumentException(role);
            }
            System.out.flush();
            System.exit(0);
        } catch (Throwable t) {
            System.out.println("FAIL rank " + rank + " (" + role + "): " + t);
            t.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
    }

    private static Tensor mask(int maxWs, int world) {
        Tensor m = Tensor.zeros(DType.INT32, Device.CPU, maxWs);
        for (int r = 0; r < world; r++) m.setLong(r, 1);
        return m;
    }

    private static ProcessGroup init(int maxWs, Tensor active, boolean extension, int world, Duration timeout) {
        return ProcessGroup.builder().worldSize(world).timeout(timeout).options(new MooncakeBackendOptions(active, extension, maxWs)).init();
    }

    private static void healthy(int rank, int joinRank, int maxWs, int initWorld, Duration timeout) {
        ProcessGroup pg = init(maxWs, mask(maxWs, initWorld), false, initWorld, timeout);
        int[] subRanks = java.util.stream.IntStream.range(0, maxWs).toArray();
        ProcessGroup sub = pg.newGroup(subRanks);
        if (pg.worldSize() < joinRank + 1) pg.extendGroupSizeTo(joinRank + 1);
        System.out.println("READY");
        int[] before = pg.activeRanks().toIntArray();
        long deadline = System.nanoTime() + 120_000_000_000L;
        long iter = 0;
        while (true) {
            if (System.nanoTime() > deadline) throw new AssertionError("rank " + joinRank + " was never recovered");
            allReduceChecked(pg, before, iter);
            before = pg.activeRanks().toIntArray();
            if (pg.lastDroppedRanks().length > 0) System.out.println("DROPPED " + Arrays.toString(pg.lastDroppedRanks()) + " epoch " + pg.epoch());
            iter++;
            if (iter % 50 == 0) System.out.println("ITER " + iter);
            if (before[joinRank] == 0 && pg.peerState(joinRank)[0]) {
                long t0 = System.nanoTime();
                try {
                    pg.recoverRanks(joinRank);
                } catch (IllegalStateException e) {
                    // the process peerState saw went away before recoverRanks (the "early" one exits at once):
                    // every healthy rank got the same answer and the same error; poll for the next one
                    if (!e.getMessage().contains("has not published its metadata")) throw e;
                    System.out.println("WENT-AWAY " + joinRank);
                    continue;
                }
                before = pg.activeRanks().toIntArray();
                if (before[joinRank] == 0) continue; // admitted a process that went away (the "early" one): wait for the next
                System.out.println("RECOVERED " + joinRank + " epoch " + pg.epoch() + " in " + (System.nanoTime() - t0) / 1_000_000 + " ms");
                break;
            }
        }
        after(pg, sub, rank);
    }

    private static void joiner(int rank, int maxWs, Duration timeout) {
        Tensor active = Tensor.ones(DType.INT32, Device.CPU, maxWs);
        ProcessGroup pg = init(maxWs, active, true, maxWs, timeout);
        long joinCalled = System.nanoTime();
        pg.joinGroup(Duration.ofSeconds(60));
        ProcessGroup sub = pg.newGroup(java.util.stream.IntStream.range(0, maxWs).toArray());
        try (Tensor t = Tensor.of(new float[] {rank + 1})) {
            pg.allReduce(t, ReduceOp.SUM);
            long firstDone = System.nanoTime();
            long jvmStart = ProcessHandle.current().info().startInstant().orElseThrow().toEpochMilli();
            System.out.println("RESULT joinToFirstCollectiveMs=" + (firstDone - joinCalled) / 1_000_000);
            System.out.println("RESULT jvmStartToFirstCollectiveMs=" + (System.currentTimeMillis() - jvmStart));
            float want = sumOf(pg.activeRanks().toIntArray());
            if (t.toFloatArray()[0] != want) throw new AssertionError("joiner's first all_reduce got " + t.toFloatArray()[0] + " want " + want);
        }
        afterLoop(pg, sub, rank, AFTER_ITERS - 1);
    }

    private static void after(ProcessGroup pg, ProcessGroup sub, int rank) {
        try (Tensor t = Tensor.of(new float[] {rank + 1})) {
            pg.allReduce(t, ReduceOp.SUM); // the joiner's first collective
            float want = sumOf(pg.activeRanks().toIntArray());
            if (t.toFloatArray()[0] != want) throw new AssertionError("first all_reduce after recovery got " + t.toFloatArray()[0] + " want " + want);
        }
        afterLoop(pg, sub, rank, AFTER_ITERS - 1);
    }

    /** The phase every member runs after the recovery: full sums, the subgroup, a P2P ring. */
    private static void afterLoop(ProcessGroup pg, ProcessGroup sub, int rank, int iters) {
        int[] mask = pg.activeRanks().toIntArray();
        int n = pg.size();
        if (Arrays.stream(mask).sum() != n) throw new AssertionError("mask " + Arrays.toString(mask) + " vs size " + n);
        for (int i = 0; i < iters; i++) allReduceChecked(pg, mask, i);
        try (Tensor t = Tensor.of(new long[] {rank + 1})) {
            sub.allReduce(t, ReduceOp.SUM);
            long want = (long) sumOf(sub.activeRanks().toIntArray());
            if (t.toLongArray()[0] != want || sub.size() != n) {
                throw new AssertionError("subgroup all_reduce got " + t.toLongArray()[0] + " want " + want + " (subgroup size " + sub.size() + ")");
            }
        }
        int[] members = java.util.stream.IntStream.range(0, mask.length).filter(r -> mask[r] != 0).toArray();
        int me = Arrays.binarySearch(members, rank);
        int next = members[(me + 1) % members.length], prev = members[(me + members.length - 1) % members.length];
        Tensor out = Tensor.of(new int[] {rank * 10});
        Tensor in = Tensor.zeros(DType.INT32, Device.CPU, 1);
        for (Work w : pg.batchIsendIrecv(java.util.List.of(P2POp.isend(out, next, 4), P2POp.irecv(in, prev, 4)))) w.await();
        if (in.toIntArray()[0] != prev * 10) throw new AssertionError("P2P from " + prev + " got " + in.toIntArray()[0]);
        pg.barrier();
        System.out.println("RESULT mask=" + Arrays.toString(mask));
        System.out.println("RESULT epoch=" + pg.epoch());
        System.out.println("RESULT subEpoch=" + sub.epoch());
        System.out.println("DONE");
        sub.close();
        pg.close();
    }

    private static void allReduceChecked(ProcessGroup pg, int[] before, long iter) {
        try (Tensor t = Tensor.of(new float[] {pg.rank() + 1})) {
            pg.allReduce(t, ReduceOp.SUM);
            int[] covered = pg.lastLocalSuccess() ? before : pg.activeRanks().toIntArray();
            float want = sumOf(covered);
            if (t.toFloatArray()[0] != want) {
                throw new AssertionError("iteration " + iter + ": all_reduce got " + t.toFloatArray()[0] + " want " + want + " over " + Arrays.toString(covered));
            }
        }
    }

    private static float sumOf(int[] mask) {
        float s = 0;
        for (int r = 0; r < mask.length; r++) if (mask[r] != 0) s += r + 1;
        return s;
    }

    private static void expectInitError(int rank, int maxWs, int maskLen, boolean extension, Duration timeout) {
        try {
            ProcessGroup pg = init(maxWs, Tensor.ones(DType.INT32, Device.CPU, maskLen), extension, maxWs, timeout);
            pg.close();
            throw new AssertionError("init did not fail");
        } catch (IllegalArgumentException | IllegalStateException e) {
            System.out.println("RESULT error=" + e.getMessage());
        }
    }

    private static void early(int rank, int maxWs, Duration timeout) {
        ProcessGroup pg = init(maxWs, Tensor.ones(DType.INT32, Device.CPU, maxWs), true, maxWs, timeout);
        try (Tensor t = Tensor.of(new float[] {1})) {
            pg.allReduce(t, ReduceOp.SUM);
            throw new AssertionError("a collective before joinGroup did not fail");
        } catch (IllegalStateException e) {
            System.out.println("RESULT error=" + e.getMessage());
        }
        pg.close();
    }
}
