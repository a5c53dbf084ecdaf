package org.mooncake4j.pg;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.zip.CRC32;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/**
 * One rank of a multi-process process-group test. Run by {@link org.mooncake4j.testkit.ProcessCluster}
 * with RANK/WORLD_SIZE/MOONCAKE_STORE set; the first argument names the scenario. Each rank checks
 * its own results against {@link Expected} and prints {@code RESULT key=value} lines (check counts, a
 * CRC of every result so the test can assert all ranks are bitwise identical); a failed check prints
 * {@code FAIL ...} and exits 1.
 */
public final class PgWorker {
    private final ProcessGroup pg;
    private final int rank, n;
    private final CRC32 crc = new CRC32();
    private long checks;

    private PgWorker(ProcessGroup pg) {
        this.pg = pg;
        this.rank = pg.rank();
        this.n = pg.size();
    }

    public static void main(String[] args) throws Exception {
        String scenario = args[0];
        int world = Integer.parseInt(System.getenv("WORLD_SIZE"));
        if (scenario.equals("utilities")) {
            utilities(world);
            return;
        }
        if (scenario.equals("haltinplace") && System.getenv("RANK").equals("2")) {
            // rank 2 halts right after reducing its part of the 20th all-reduce in place, before the barrier
            System.setProperty("mooncake4j.fault.haltAfterReduce", "20");
        }
        ProcessGroup pg = ProcessGroup.builder()
                .timeout(Duration.ofMillis(Long.parseLong(System.getenv().getOrDefault("MOONCAKE_TIMEOUT_MS", "30000"))))
                .options(new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, world)))
                .init();
        PgWorker w = new PgWorker(pg);
        try {
            switch (scenario) {
                case "matrix" -> w.matrix(args.length > 1 ? args[1] : "small");
                case "large" -> w.large();
                case "p2p" -> w.p2p();
                case "async" -> w.async();
                case "subgroups" -> w.subgroups();
                case "badinput" -> w.badInput();
                case "killloop" -> w.killLoop();
                case "registered" -> w.registered();
                case "killregistered", "haltinplace" -> w.killRegistered();
                default -> throw new IllegalArgumentException(scenario);
            }
            System.out.println("RESULT checks=" + w.checks);
            System.out.println("RESULT inplace=" + org.mooncake4j.pg.collective.AllReduce.inPlaceRuns());
            System.out.println("RESULT crc=" + Long.toHexString(w.crc.getValue()));
            pg.barrier();
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

    private void digest(Tensor t) {
        byte[] b = t.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE);
        crc.update(b);
    }

    private void checkReduced(String what, DType dt, ReduceOp op, Tensor got, long seed, long count, long offsetInRank, int[] ranks) {
        checkReduced(what, dt, op, got, seed, count, offsetInRank, ranks, true);
    }

    /** Checks a reduction result; {@code digest}: it is the same on every rank (all-reduce), so it goes into the cross-rank CRC. */
    private void checkReduced(String what, DType dt, ReduceOp op, Tensor got, long seed, long count, long offsetInRank, int[] ranks,
                              boolean digest) {
        Tensor[] ins = new Tensor[ranks.length];
        for (int k = 0; k < ranks.length; k++) ins[k] = Expected.input(dt, op, ranks[k], seed, count + offsetInRank);
        try {
            for (long i = 0; i < got.numel(); i++) {
                long src = i + offsetInRank;
                if (dt.isFloatingPoint()) {
                    double[] v = new double[ranks.length];
                    for (int k = 0; k < ranks.length; k++) v[k] = ins[k].getDouble(src);
                    double ref = Expected.reduceFloat(op, v), g = got.getDouble(i);
                    if (!(Math.abs(g - ref) <= Expected.tolerance(dt, op, ref))) {
                        fail(what + " " + dt.torchName() + " " + op + " n=" + count + " element " + i + ": got " + g + " expected " + ref + " inputs " + Arrays.toString(v));
                    }
                } else {
                    long[] v = new long[ranks.length];
                    for (int k = 0; k < ranks.length; k++) v[k] = ins[k].getLong(src);
                    long ref = Expected.reduceInt(dt, op, v), g = got.getLong(i);
                    if (g != ref) fail(what + " " + dt.torchName() + " " + op + " n=" + count + " element " + i + ": got " + g + " expected " + ref + " inputs " + Arrays.toString(v));
                }
            }
        } finally {
            for (Tensor t : ins) t.close();
        }
        if (digest) digest(got);
        checks++;
    }

    private void checkEquals(String what, Tensor got, Tensor want) {
        if (!Arrays.equals(got.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE), want.segment().toArray(java.lang.foreign.ValueLayout.JAVA_BYTE))) {
            fail(what + ": bytes differ (" + got + " vs " + want + ")");
        }
        checks++;
    }

    private int[] allRanks() {
        int[] r = new int[n];
        for (int i = 0; i < n; i++) r[i] = i;
        return r;
    }

    /** Every collective x every dtype x every valid op, at several sizes. */
    private void matrix(String sizeSet) {
        long[] counts = sizeSet.equals("tiny") ? new long[] {1, 33} : new long[] {1, 7, 1000, 70_001};
        long seed = 1;
        for (DType dt : DType.values()) {
            for (long count : counts) {
                for (ReduceOp op : ReduceOp.values()) {
                    if (!Expected.valid(dt, op)) continue;
                    seed++;
                    try (Tensor t = Expected.input(dt, op, rank, seed, count)) {
                        pg.allReduce(t, op);
                        checkReduced("all_reduce", dt, op, t, seed, count, 0, allRanks());
                    }
                    int root = (int) (seed % n);
                    try (Tensor t = Expected.input(dt, op, rank, seed, count)) {
                        pg.reduce(t, root, op);
                        if (rank == root) checkReduced("reduce", dt, op, t, seed, count, 0, allRanks(), false);
                    }
                    try (Tensor in = Expected.input(dt, op, rank, seed, count * n);
                         Tensor out = Tensor.empty(dt, Device.CPU, count)) {
                        pg.reduceScatterTensor(out, in, op);
                        checkReduced("reduce_scatter", dt, op, out, seed, count * n, rank * count, allRanks(), false);
                    }
                }
                seed++;
                movement(dt, count, seed);
            }
        }
        pg.barrier();
        checks++;
    }

    /** Broadcast, all-gather (both forms), all-to-all (both forms), gather and scatter of one dtype and size. */
    private void movement(DType dt, long count, long seed) {
        int root = (int) (seed % n);
        Tensor[] inputs = new Tensor[n];
        for (int r = 0; r < n; r++) inputs[r] = Expected.input(dt, ReduceOp.SUM, r, seed, count);
        try {
            try (Tensor t = rank == root ? Expected.input(dt, ReduceOp.SUM, root, seed, count) : Tensor.zeros(dt, Device.CPU, count)) {
                pg.broadcast(t, root);
                checkEquals("broadcast", t, inputs[root]);
            }
            List<Tensor> outs = new ArrayList<>();
            for (int r = 0; r < n; r++) outs.add(Tensor.zeros(dt, Device.CPU, count));
            pg.allGather(outs, inputs[rank]);
            for (int r = 0; r < n; r++) checkEquals("all_gather[" + r + "]", outs.get(r), inputs[r]);
            try (Tensor flat = Tensor.zeros(dt, Device.CPU, count * n)) {
                pg.allGatherIntoTensor(flat, inputs[rank]);
                for (int r = 0; r < n; r++) checkEquals("all_gather_into_tensor[" + r + "]", flat.slice(0, r * count, (r + 1) * count), inputs[r]);
            }
            // all_to_all: rank s sends its input shifted by destination (block d of rank s = input of s with seed+d)
            List<Tensor> a2aIn = new ArrayList<>(), a2aOut = new ArrayList<>();
            for (int d = 0; d < n; d++) {
                a2aIn.add(Expected.input(dt, ReduceOp.SUM, rank * 100 + d, seed, count));
                a2aOut.add(Tensor.zeros(dt, Device.CPU, count));
            }
            pg.allToAll(a2aOut, a2aIn);
            for (int s = 0; s < n; s++) {
                try (Tensor want = Expected.input(dt, ReduceOp.SUM, s * 100 + rank, seed, count)) {
                    checkEquals("all_to_all from " + s, a2aOut.get(s), want);
                }
            }
            // all_to_all_single with uneven splits: rank s sends (s + d) % 3 + count rows to d... rows are single elements here
            long[] inSplits = new long[n], outSplits = new long[n];
            long inRows = 0, outRows = 0;
            for (int d = 0; d < n; d++) {
                inSplits[d] = (rank + d) % 3 + count;
                outSplits[d] = (d + rank) % 3 + count;
                inRows += inSplits[d];
                outRows += outSplits[d];
            }
            try (Tensor in = Expected.input(dt, ReduceOp.SUM, rank + 1000, seed, inRows); Tensor out = Tensor.zeros(dt, Device.CPU, outRows)) {
                pg.allToAllSingle(out, in, outSplits, inSplits);
                long o = 0;
                for (int s = 0; s < n; s++) {
                    long sOff = 0;
                    for (int d = 0; d < rank; d++) sOff += (s + d) % 3 + count;
                    try (Tensor src = Expected.input(dt, ReduceOp.SUM, s + 1000, seed, sOff + outSplits[s])) {
                        checkEquals("all_to_all_single from " + s, out.slice(0, o, o + outSplits[s]), src.slice(0, sOff, sOff + outSplits[s]));
                    }
                    o += outSplits[s];
                }
            }
            List<Tensor> gathered = new ArrayList<>();
            for (int r = 0; r < n; r++) gathered.add(Tensor.zeros(dt, Device.CPU, count));
            pg.gather(inputs[rank], rank == root ? gathered : null, root);
            if (rank == root) for (int r = 0; r < n; r++) checkEquals("gather[" + r + "]", gathered.get(r), inputs[r]);
            try (Tensor out = Tensor.zeros(dt, Device.CPU, count)) {
                pg.scatter(out, rank == root ? Arrays.asList(inputs) : null, root);
                checkEquals("scatter", out, inputs[rank]);
            }
            for (Tensor t : outs) t.close();
            for (Tensor t : gathered) t.close();
            for (Tensor t : a2aIn) t.close();
            for (Tensor t : a2aOut) t.close();
        } finally {
            for (Tensor t : inputs) t.close();
        }
    }

    /** 64 MiB messages (far over the staging banks) through every collective. */
    private void large() {
        long count = 16L << 20; // float32 elements: 64 MiB
        long seed = 99;
        try (Tensor t = Expected.input(DType.FLOAT32, ReduceOp.SUM, rank, seed, count)) {
            pg.allReduce(t, ReduceOp.SUM);
            checkReduced("all_reduce 64MiB", DType.FLOAT32, ReduceOp.SUM, t, seed, count, 0, allRanks());
        }
        try (Tensor t = Expected.input(DType.INT32, ReduceOp.MAX, rank, seed, count)) {
            pg.allReduce(t, ReduceOp.MAX);
            checkReduced("all_reduce 64MiB", DType.INT32, ReduceOp.MAX, t, seed, count, 0, allRanks());
        }
        movement(DType.FLOAT32, count / n, seed + 1);
        try (Tensor in = Expected.input(DType.BFLOAT16, ReduceOp.SUM, rank, seed, count);
             Tensor out = Tensor.empty(DType.BFLOAT16, Device.CPU, count / n)) {
            pg.reduceScatterTensor(out, in, ReduceOp.SUM);
            checkReduced("reduce_scatter 32MiB bf16", DType.BFLOAT16, ReduceOp.SUM, out, seed, count, rank * (count / n), allRanks(), false);
        }
    }

    /** Tags honoured, per-(peer, tag) order kept, large messages, batch_isend_irecv ring. */
    private void p2p() {
        int next = (rank + 1) % n, prev = (rank + n - 1) % n;
        // ring with batch_isend_irecv: 3 messages on tag 7 and one on tag 9, received tag 9 first
        List<P2POp> ops = new ArrayList<>();
        List<Tensor> sends = new ArrayList<>();
        for (int k = 0; k < 3; k++) sends.add(Tensor.of(new int[] {rank * 1000 + k, k}));
        sends.add(Expected.input(DType.FLOAT32, null, rank, 5, 3_000_000)); // 12 MB: many chunks
        for (int k = 0; k < 3; k++) ops.add(P2POp.isend(sends.get(k), next, 7));
        ops.add(P2POp.isend(sends.get(3), next, 9));
        Tensor big = Tensor.zeros(DType.FLOAT32, Device.CPU, 3_000_000);
        List<Tensor> recvs = new ArrayList<>();
        ops.add(P2POp.irecv(big, prev, 9));
        for (int k = 0; k < 3; k++) {
            Tensor r = Tensor.zeros(DType.INT32, Device.CPU, 2);
            recvs.add(r);
            ops.add(P2POp.irecv(r, prev, 7));
        }
        for (Work w : pg.batchIsendIrecv(ops)) w.await();
        for (int k = 0; k < 3; k++) {
            int[] v = recvs.get(k).toIntArray();
            if (v[0] != prev * 1000 + k || v[1] != k) fail("tag 7 message " + k + " from " + prev + " out of order: " + Arrays.toString(v));
            checks++;
        }
        try (Tensor want = Expected.input(DType.FLOAT32, null, prev, 5, 3_000_000)) {
            checkEquals("12 MB message on tag 9", big, want);
        }
        // blocking send/recv pairs, even ranks send first
        if (n >= 2 && rank < 2) {
            Tensor x = Tensor.of(new long[] {42 + rank});
            if (rank == 0) {
                pg.send(x, 1, 3);
                pg.recv(x, 1, 3);
                if (x.toLongArray()[0] != 43) fail("send/recv got " + x.toLongArray()[0]);
            } else {
                Tensor y = Tensor.of(new long[] {0});
                pg.recv(y, 0, 3);
                pg.send(x, 0, 3);
                if (y.toLongArray()[0] != 42) fail("send/recv got " + y.toLongArray()[0]);
            }
            checks++;
        }
    }

    /** Several asynchronous collectives in flight at once, then a blocking one behind them. */
    private void async() {
        List<Work> works = new ArrayList<>();
        List<Tensor> ts = new ArrayList<>();
        for (int k = 0; k < 8; k++) {
            Tensor t = Expected.input(DType.INT64, ReduceOp.SUM, rank, 500 + k, 10_000 * (k + 1));
            ts.add(t);
            works.add(pg.allReduceAsync(t, ReduceOp.SUM));
        }
        Tensor b = rank == 0 ? Tensor.of(new int[] {7, 8, 9}) : Tensor.zeros(DType.INT32, Device.CPU, 3);
        Work bw = pg.broadcastAsync(b, 0);
        try (Tensor sync = Tensor.of(new int[] {rank})) {
            pg.allReduce(sync, ReduceOp.SUM); // queued behind the async ones
            if (sync.toIntArray()[0] != n * (n - 1) / 2) fail("blocking all_reduce after async got " + sync.toIntArray()[0]);
            checks++;
        }
        for (int k = 0; k < 8; k++) {
            Work w = works.get(k);
            w.await();
            if (!w.isCompleted() || w.exception().isPresent() || !w.localSuccess() || w.droppedRanks().length != 0) fail("work " + k + " state");
            if (!w.future().isDone()) fail("future not done");
            checkReduced("async all_reduce", DType.INT64, ReduceOp.SUM, ts.get(k), 500 + k, 10_000L * (k + 1), 0, allRanks());
        }
        if (!bw.await(Duration.ofSeconds(30))) fail("broadcast work did not finish");
        if (!Arrays.equals(b.toIntArray(), new int[] {7, 8, 9})) fail("async broadcast got " + Arrays.toString(b.toIntArray()));
        checks++;
    }

    /** Subgroups: evens and odds, each with its own sequence; then a world collective. */
    private void subgroups() {
        List<Integer> evens = new ArrayList<>(), odds = new ArrayList<>();
        for (int r = 0; r < n; r++) (r % 2 == 0 ? evens : odds).add(r);
        ProcessGroup ge = pg.newGroup(evens.stream().mapToInt(Integer::intValue).toArray());
        ProcessGroup go = odds.isEmpty() ? null : pg.newGroup(odds.stream().mapToInt(Integer::intValue).toArray());
        ProcessGroup mine = rank % 2 == 0 ? ge : go;
        if ((rank % 2 == 0 ? go : ge) != null) fail("non-member got a group");
        List<Integer> myRanks = rank % 2 == 0 ? evens : odds;
        if (mine.size() != myRanks.size() || mine.rank() != myRanks.indexOf(rank)) fail("subgroup rank/size " + mine.rank() + "/" + mine.size());
        for (int it = 0; it < 3; it++) {
            try (Tensor t = Tensor.of(new long[] {rank + it})) {
                mine.allReduce(t, ReduceOp.SUM);
                long want = 0;
                for (int r : myRanks) want += r + it;
                if (t.toLongArray()[0] != want) fail("subgroup all_reduce got " + t.toLongArray()[0] + " want " + want);
                checks++;
            }
        }
        try (Tensor t = Tensor.of(new long[] {1})) {
            pg.allReduce(t, ReduceOp.SUM);
            if (t.toLongArray()[0] != n) fail("world all_reduce after subgroups got " + t.toLongArray()[0]);
            checks++;
        }
        // a subgroup of all ranks in reverse creation order still works (P2P inside it)
        ProcessGroup all = pg.newGroup(allRanks());
        Tensor x = Tensor.of(new int[] {rank});
        if (all.rank() == 0) all.send(x, 1, 0);
        else if (all.rank() == 1) {
            all.recv(x, 0, 0);
            if (x.toIntArray()[0] != 0) fail("subgroup p2p got " + x.toIntArray()[0]);
        }
        checks++;
        all.barrier();
    }

    /** Each bad input gets its exact error and leaves the group usable. */
    private void badInput() {
        expectError(() -> pg.allReduce(Tensor.of(1.5f), ReduceOp.BAND), "ReduceOp BAND is not defined for float32");
        expectError(() -> pg.broadcast(Tensor.of(1), n + 3), "root " + (n + 3) + " is out of range");
        expectError(() -> pg.allGatherIntoTensor(Tensor.zeros(DType.INT32, Device.CPU, 3), Tensor.of(1)), "all_gather_into_tensor output has 3 elements");
        expectError(() -> pg.allGatherIntoTensor(Tensor.zeros(DType.INT64, Device.CPU, n), Tensor.of(1)), "dtype mismatch");
        expectError(() -> pg.reduceScatterTensor(Tensor.zeros(DType.INT32, Device.CPU, 2), Tensor.zeros(DType.INT32, Device.CPU, 2 * n + 1), ReduceOp.SUM),
                "reduce_scatter_tensor input has");
        expectError(() -> pg.allToAllSingle(Tensor.zeros(DType.INT32, Device.CPU, n), Tensor.zeros(DType.INT32, Device.CPU, n), null, new long[] {n + 1}),
                "split sizes have 1 entries");
        expectError(() -> pg.allGather(List.of(Tensor.of(1)), Tensor.of(1)), "output list has 1 tensors; it needs one per rank");
        expectError(() -> pg.send(Tensor.of(1), rank, 0), "is this rank");
        expectError(() -> pg.isend(Tensor.of(1), -1, 0), "destination -1 is out of range");
        expectError(() -> pg.newGroup(0, 0), "new_group ranks repeat rank 0");
        try (Tensor t = Tensor.of(new int[] {rank + 1})) {
            pg.allReduce(t, ReduceOp.SUM);
            if (t.toIntArray()[0] != n * (n + 1) / 2) fail("group unusable after bad input");
            checks++;
        }
    }

    private void expectError(Runnable r, String fragment) {
        try {
            r.run();
        } catch (IllegalArgumentException e) {
            if (!e.getMessage().contains(fragment)) fail("error '" + e.getMessage() + "' lacks '" + fragment + "'");
            checks++;
            return;
        }
        fail("no error for a case expecting '" + fragment + "'");
    }

    /**
     * The seeds' utilities: a caller-owned engine shared by two groups and still usable after both
     * close (set_transfer_engine), set_host_ip, preferred_hca, get_active_ranks, get_num_synced_ranks.
     */
    private static void utilities(int world) {
        int rank = Integer.parseInt(System.getenv("RANK"));
        try (var store = org.mooncake4j.transfer.store.MetadataStores.open(java.net.URI.create(System.getenv("MOONCAKE_STORE")), Duration.ofSeconds(20));
             var engine = org.mooncake4j.transfer.TransferEngine.builder().store(store).name("shared-" + rank).hostIp("127.0.0.1").start()) {
            Mooncake.setTransferEngine(engine);
            Mooncake.setHostIp("127.0.0.1");
            Tensor active = Tensor.ones(DType.INT32, Device.CPU, world);
            ProcessGroup pg = ProcessGroup.builder().store(store).options(new MooncakeBackendOptions(active)).timeout(Duration.ofSeconds(20)).init();
            ProcessGroup sub = pg.newGroup(java.util.stream.IntStream.range(0, world).toArray());
            if (pg.numSyncedRanks() != world || sub.numSyncedRanks() != world) throw new AssertionError("numSyncedRanks " + pg.numSyncedRanks());
            if (pg.activeRanks() != active || Arrays.stream(active.toIntArray()).sum() != world) throw new AssertionError("activeRanks");
            String peer = pg.preferredHca("rank:" + (rank + 1) % world);
            String cpu = pg.preferredHca("cpu");
            String cuda = pg.preferredHca("cuda:0");
            if (!peer.startsWith("shm") && !peer.startsWith("tcp")) throw new AssertionError("preferredHca(rank) = " + peer);
            if (!cpu.contains("127.0.0.1") || !cuda.startsWith("none")) throw new AssertionError("preferredHca(cpu) = " + cpu + ", cuda = " + cuda);
            try (Tensor t = Tensor.of(new int[] {rank})) {
                sub.allReduce(t, ReduceOp.MAX);
                if (t.toIntArray()[0] != world - 1) throw new AssertionError("subgroup on the shared engine: " + t.toIntArray()[0]);
            }
            pg.barrier();
            pg.close();
            // the engine outlives the groups: it still registers and serves segments
            try (var seg = engine.registerSegment("after-close-" + rank, 4096)) {
                System.out.println("RESULT engineUsableAfterClose=" + (seg.size() == 4096));
            }
            System.out.println("RESULT preferredPeer=" + peer.substring(0, 3));
            System.out.println("RESULT checks=6");
            System.out.println("RESULT crc=0");
        }
        System.exit(0);
    }

    /**
     * Loops all-reduces of {@code rank + 1} while the test kills a peer; each result must be the sum
     * over the ranks the operation covered (the old mask if it committed, the new one if it was redone).
     * Prints when the membership changed and goes on for 100 more iterations over the survivors.
     */
    private void killLoop() {
        try (Tensor t = Tensor.of(new float[2])) {
            loopThroughKill(100, 200, iter -> {
                t.setDouble(0, rank + 1);
                t.setDouble(1, 2 * (rank + 1));
                pg.allReduce(t, ReduceOp.SUM);
            }, (iter, want, covered) -> {
                float[] got = t.toFloatArray();
                if (got[0] != want || got[1] != 2 * want) fail("iteration " + iter + " got " + Arrays.toString(got) + " want " + want + " mask " + Arrays.toString(covered));
            });
        }
    }

    /** One iteration's check of a kill loop: {@code want} is the sum of ranks + 1 over {@code covered}. */
    private interface KillCheck {
        void check(long iter, float want, int[] covered);
    }

    /**
     * The kill loops: prints READY, then runs {@code reduce} (which all-reduces) and {@code check} with
     * the sum over the mask the result covers (the old mask when this rank's operation succeeded
     * locally, else the new one), until {@code stepsAfterDrop} iterations after this rank learnt of a
     * dropped peer; prints ITER every {@code printEvery} iterations, then the RESULT mask and the digest.
     */
    private void loopThroughKill(int stepsAfterDrop, int printEvery, java.util.function.LongConsumer reduce, KillCheck check) {
        System.out.println("READY");
        long iter = 0, after = -1;
        int[] mask = pg.activeRanks().toIntArray();
        while (after < stepsAfterDrop) {
            reduce.accept(iter);
            int[] now = pg.activeRanks().toIntArray();
            int[] covered = pg.lastLocalSuccess() ? mask : now;
            check.check(iter, rankSum(covered), covered);
            checks++;
            if (reportedDrop()) after = 0;
            if (after >= 0) after++;
            mask = now;
            iter++;
            if (iter % printEvery == 0) System.out.println("ITER " + iter);
        }
        System.out.println("RESULT mask=" + Arrays.toString(pg.activeRanks().toIntArray()));
        digest(pg.activeRanks());
    }

    /** A registered tensor holding {@link Expected#input} of this rank. */
    private Tensor registeredInput(DType dt, ReduceOp op, long seed, long count) {
        Tensor t = pg.allocate(dt, count);
        try (Tensor in = Expected.input(dt, op, rank, seed, count)) {
            t.copyFrom(in);
        }
        return t;
    }

    /**
     * Large all-reduces over registered memory (read in place): dtypes x ops x sizes around the
     * thresholds, the same tensor reused (alternating scratches), a subgroup, and a mix of registered
     * and ordinary tensors (every rank falls back to the staged algorithm).
     */
    private void registered() {
        long[] counts = {20_000, 262_147, 1_000_003, 5_000_011};
        DType[] dts = {DType.FLOAT32, DType.BFLOAT16, DType.INT64, DType.FLOAT64};
        ReduceOp[] ops = {ReduceOp.SUM, ReduceOp.MAX, ReduceOp.AVG, ReduceOp.PRODUCT};
        long seed = 300;
        for (long count : counts) {
            for (int k = 0; k < dts.length; k++) {
                DType dt = dts[k];
                ReduceOp op = ops[(k + (int) (count % 4)) % ops.length];
                if (dt == DType.INT64 && op == ReduceOp.AVG) op = ReduceOp.BXOR;
                seed++;
                try (Tensor t = registeredInput(dt, op, seed, count)) {
                    pg.allReduce(t, op);
                    checkReduced("registered all_reduce " + count + " " + dt.torchName() + " " + op, dt, op, t, seed, count, 0, allRanks());
                }
            }
        }
        // one tensor, many operations: the scratches alternate; every result must be the new one
        try (Tensor t = pg.allocate(DType.FLOAT32, 3_000_001)) {
            for (int it = 0; it < 6; it++) {
                float base = (rank + 1) * (it + 1);
                for (long i = 0; i < t.numel(); i += 999_983) t.setDouble(i, base);
                t.setDouble(t.numel() - 1, base);
                pg.allReduce(t, ReduceOp.SUM);
                double want = (it + 1) * n * (n + 1) / 2.0;
                for (long i = 0; i < t.numel(); i += 999_983) if (t.getDouble(i) != want) fail("reused tensor, op " + it + " element " + i + ": " + t.getDouble(i) + " != " + want);
                if (t.getDouble(t.numel() - 1) != want || t.getDouble(1) != 0) fail("reused tensor, op " + it + ": last " + t.getDouble(t.numel() - 1) + " second " + t.getDouble(1));
                checks++;
            }
        }
        // rank 0 passes an ordinary tensor: all ranks take the staged algorithm and still agree
        seed++;
        try (Tensor t = rank == 0 ? Expected.input(DType.FLOAT32, ReduceOp.SUM, rank, seed, 1_000_003) : registeredInput(DType.FLOAT32, ReduceOp.SUM, seed, 1_000_003)) {
            pg.allReduce(t, ReduceOp.SUM);
            checkReduced("mixed registered/ordinary all_reduce", DType.FLOAT32, ReduceOp.SUM, t, seed, 1_000_003, 0, allRanks());
        }
        // a subgroup of the even ranks uses its own scratch
        int[] evens = java.util.stream.IntStream.range(0, n).filter(r -> r % 2 == 0).toArray();
        ProcessGroup sub = pg.newGroup(evens);
        if (sub != null) {
            seed++;
            try (Tensor t = registeredInput(DType.FLOAT32, ReduceOp.SUM, seed, 777_777)) {
                sub.allReduce(t, ReduceOp.SUM);
                checkReduced("subgroup registered all_reduce", DType.FLOAT32, ReduceOp.SUM, t, seed, 777_777, 0, evens, false);
            }
            sub.close();
        }
    }

    /**
     * Like {@link #killLoop} with 1 MiB all-reduces over a registered tensor (reduced in place, every
     * element checked): a peer dies mid-operation (killregistered), or halts right after reducing its
     * part, so that the survivors redo from their restored inputs (haltinplace).
     */
    private void killRegistered() {
        int count = 262_144;
        try (Tensor t = pg.allocate(DType.FLOAT32, count)) {
            loopThroughKill(30, 50, iter -> {
                float v = (rank + 1) * (float) (iter % 7 + 1);
                for (int i = 0; i < count; i++) t.segment().setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i, v + i % 5);
                pg.allReduce(t, ReduceOp.SUM);
            }, (iter, sum, covered) -> {
                float f = iter % 7 + 1;
                int members = 0;
                for (int m : covered) members += m;
                for (int i = 0; i < count; i++) {
                    float want = sum * f + members * (i % 5), got = t.segment().getAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i);
                    if (got != want) fail("iteration " + iter + " element " + i + " got " + got + " want " + want + " mask " + Arrays.toString(covered));
                }
            });
        }
    }

    /** 1 + 2 + ... over the ranks set in {@code mask}: what the kill loops' all-reduce sums to. */
    private static float rankSum(int[] mask) {
        float sum = 0;
        for (int r = 0; r < mask.length; r++) if (mask[r] != 0) sum += r + 1;
        return sum;
    }

    /** After an operation that dropped ranks, prints when, which, and the new epoch for the kill tests; true if it did. */
    private boolean reportedDrop() {
        if (pg.lastDroppedRanks().length == 0) return false;
        System.out.println("RESULT completedAtNanos=" + System.nanoTime());
        System.out.println("RESULT dropped=" + Arrays.toString(pg.lastDroppedRanks()));
        System.out.println("RESULT covered=" + pg.lastLocalSuccess());
        System.out.println("RESULT epoch=" + pg.epoch());
        return true;
    }
}
