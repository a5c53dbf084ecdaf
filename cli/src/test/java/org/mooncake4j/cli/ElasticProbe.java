package org.mooncake4j.cli;

import java.util.Arrays;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;

/**
 * A process-group worker for the elastic-restart tests, written the way the {@link Elastic} javadoc
 * says: {@code initFromEnv}, a loop of checked all-reduces of {@code rank + 1} with
 * {@code recoverReady} after each, and {@code syncState} on a rejoin. The first process of rank
 * {@code args[1]} crashes (halts with code 3) at iteration {@code args[0]}; its replacement joins,
 * and rank 0 ends the loop (through the all-reduce, so everyone stops together) 20 iterations after
 * the rejoin; any rank ends it after 60 s. Each rank prints {@code START ...} and, at the end,
 * {@code RESULT rank R restart N epoch E mask M wrong W rejoined B}, W being every rank's wrong sums
 * added up. Single-threaded.
 */
public final class ElasticProbe {
    private ElasticProbe() {}

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable t) {
            // exit for sure: the group's and the store client's threads must not keep a failed rank alive
            System.out.println("FAIL " + t);
            t.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
        System.out.flush();
        System.exit(0);
    }

    private static void run(String[] args) throws InterruptedException {
        int crashAt = Integer.parseInt(args[0]);
        int crashRank = Integer.parseInt(args[1]);
        boolean joining = Elastic.isExtension();
        ProcessGroup pg = Elastic.initFromEnv();
        int rank = pg.rank();
        System.out.println("START rank " + rank + " pid " + ProcessHandle.current().pid() + " restart " + Elastic.restartCount() + " extension " + joining);
        long wrong = 0;
        long rejoinedAt = -1;
        try (Tensor t = Tensor.zeros(DType.INT64, Device.CPU, 2); Tensor state = Tensor.zeros(DType.INT64, Device.CPU, 1)) {
            long iter = 0;
            if (joining) {
                Elastic.syncState(pg, state, true);
                iter = state.getLong(0) + 1;
                rejoinedAt = iter;
            }
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (true) {
                if (rank == crashRank && Elastic.restartCount() == 0 && iter == crashAt) {
                    System.out.println("CRASH rank " + rank + " at iter " + iter);
                    System.out.flush();
                    Runtime.getRuntime().halt(3);
                }
                int[] before = pg.activeRanks().toIntArray();
                t.setLong(0, rank + 1);
                t.setLong(1, rank == 0 && rejoinedAt >= 0 && iter >= rejoinedAt + 20 || System.nanoTime() > deadline ? 1 : 0);
                pg.allReduce(t, ReduceOp.SUM);
                int[] covered = pg.lastLocalSuccess() ? before : pg.activeRanks().toIntArray();
                long want = 0;
                for (int r = 0; r < covered.length; r++) if (covered[r] != 0) want += r + 1;
                if (t.getLong(0) != want) {
                    wrong++;
                    System.out.println("WRONG rank " + rank + " iter " + iter + " sum " + t.getLong(0) + " want " + want + " over " + Arrays.toString(covered));
                }
                if (t.getLong(1) != 0) break;
                int[] recovered = Elastic.recoverReady(pg);
                if (recovered.length > 0) {
                    rejoinedAt = iter;
                    state.setLong(0, iter);
                    Elastic.syncState(pg, state, false);
                }
                iter++;
                Thread.sleep(5);
            }
            try (Tensor w = Tensor.of(new long[] {wrong})) {
                pg.allReduce(w, ReduceOp.SUM);
                StringBuilder mask = new StringBuilder();
                for (int v : pg.activeRanks().toIntArray()) mask.append(v);
                System.out.println("RESULT rank " + rank + " restart " + Elastic.restartCount() + " epoch " + pg.epoch() + " mask " + mask + " wrong "
                        + w.getLong(0) + " rejoined " + (rejoinedAt >= 0));
            }
        } finally {
            Elastic.close(pg);
        }
    }
}
