package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.assertj.core.api.Assertions.within;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.mooncake4j.core.DType;
import org.mooncake4j.pg.ReduceOp;

class BenchCollectiveTest {
    @Test
    void busBandwidthFactorsAreNcclTests() {
        assertThat(BenchCollective.ALL_REDUCE.busBwFactor(4)).isEqualTo(1.5);
        assertThat(BenchCollective.ALL_REDUCE.busBwFactor(2)).isEqualTo(1.0);
        assertThat(BenchCollective.ALL_GATHER.busBwFactor(4)).isEqualTo(0.75);
        assertThat(BenchCollective.REDUCE_SCATTER.busBwFactor(4)).isEqualTo(0.75);
        assertThat(BenchCollective.ALLTOALL.busBwFactor(8)).isCloseTo(0.875, within(1e-12));
        assertThat(BenchCollective.BROADCAST.busBwFactor(4)).isEqualTo(1.0);
        assertThat(BenchCollective.SENDRECV.busBwFactor(4)).isEqualTo(1.0);
    }

    @Test
    void sendrecvNeedsTwoRanksAndPgbenchSaysSo() {
        assertThat(BenchCollective.SENDRECV.minRanks()).isEqualTo(2);
        assertThat(BenchCollective.ALL_REDUCE.minRanks()).isEqualTo(1);
        assertThat(BenchCollective.ALLTOALL.minRanks()).isEqualTo(1);
        BenchOptions o = new BenchOptions();
        o.collective = BenchCollective.SENDRECV;
        o.ranks = 1;
        assertThatThrownBy(o::validate).isInstanceOf(IllegalArgumentException.class)
                .hasMessage("sendrecv needs at least 2 ranks (-g 2): each rank sends to the next one in a ring");
    }

    @Test
    void torchItersFollowPyTorchsBaselinesByPerRankPiece() {
        BenchOptions o = new BenchOptions();
        o.iters = 7;
        o.collective = BenchCollective.ALL_GATHER;
        assertThat(o.itersFor(32L << 20, 4)).as("without --torch-iters: -n").isEqualTo(7);
        o.torchIters = true;
        // the piece decides: 32 MiB gathered over 4 ranks is an 8 MiB piece (torch_nccl_more.py: 50 calls)
        assertThat(o.itersFor(32L << 20, 4)).isEqualTo(50);
        assertThat(o.itersFor(2L << 20, 4)).as("512 KiB pieces").isEqualTo(200);
        assertThat(o.itersFor(256L << 20, 4)).as("64 MiB pieces").isEqualTo(10);
        o.collective = BenchCollective.ALL_REDUCE;
        // torch_baselines.py: the tensor itself; 2^p bytes with p odd: 512 KiB 200, 32 MiB 50, 128 MiB 10
        assertThat(o.itersFor(512L << 10, 4)).isEqualTo(200);
        assertThat(o.itersFor(32L << 20, 4)).isEqualTo(50);
        assertThat(o.itersFor(64L << 20, 4)).isEqualTo(10);
        assertThat(o.itersFor(128L << 20, 2)).isEqualTo(10);
        assertThat(o.toArgs()).contains("--torch-iters");
    }

    @Test
    void reportedSizeIsTheLargerBufferAsInNcclTests() {
        // all_gather: the sweep size is the gathered output; each rank contributes a quarter
        var ag = BenchCollective.ALL_GATHER.layout(1000, 4);
        assertThat(ag).isEqualTo(new BenchCollective.Layout(250, 1000, false));
        assertThat(ag.bytes(DType.FLOAT32)).isEqualTo(4000);
        // reduce_scatter: the sweep size is the input
        assertThat(BenchCollective.REDUCE_SCATTER.layout(1000, 4)).isEqualTo(new BenchCollective.Layout(1000, 250, false));
        assertThat(BenchCollective.ALLTOALL.layout(1001, 4)).isEqualTo(new BenchCollective.Layout(1000, 1000, false));
        assertThat(BenchCollective.ALL_REDUCE.layout(2, 4)).isEqualTo(new BenchCollective.Layout(2, 2, true));
        // never an empty buffer, even below one element per rank
        assertThat(BenchCollective.ALL_GATHER.layout(2, 4).bytes(DType.FLOAT32)).isEqualTo(16);
    }

    @Test
    void parsesNcclTestsNames() {
        assertThat(BenchCollective.parse("all_reduce")).isEqualTo(BenchCollective.ALL_REDUCE);
        assertThat(BenchCollective.parse("allreduce")).isEqualTo(BenchCollective.ALL_REDUCE);
        assertThat(BenchCollective.parse("all-to-all")).isEqualTo(BenchCollective.ALLTOALL);
        assertThat(BenchCollective.parse("sendrecv")).isEqualTo(BenchCollective.SENDRECV);
        assertThatThrownBy(() -> BenchCollective.parse("reduce")).hasMessageContaining("all_reduce, all_gather");
    }

    /** Computes what an all_reduce would leave by adding every rank's filled input, as the group does. */
    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"FLOAT32", "BFLOAT16", "FLOAT16", "INT8", "INT64"})
    void allReduceCheckAcceptsTheTrueSumAndCountsEachCorruptedElement(DType dtype) {
        int n = 5;
        List<BenchCollective.Buffers> ranks = new ArrayList<>();
        for (int r = 0; r < n; r++) {
            var b = BenchCollective.Buffers.allocate(BenchCollective.ALL_REDUCE.layout(1000, n), dtype);
            BenchCollective.ALL_REDUCE.fill(b, new BenchCollective.Setup(r, n, dtype, ReduceOp.SUM, 0));
            ranks.add(b);
        }
        var result = ranks.getFirst();
        for (long i = 0; i < 1000; i++) {
            double sum = 0;
            for (var b : ranks) sum += b.in().getDouble(i);
            result.in().setDouble(i, sum);
        }
        var setup = new BenchCollective.Setup(0, n, dtype, ReduceOp.SUM, 0);
        assertThat(BenchCollective.ALL_REDUCE.countWrong(result, setup)).isZero();
        result.in().setDouble(7, 0);
        result.in().setDouble(500, result.in().getDouble(500) + 8);
        assertThat(BenchCollective.ALL_REDUCE.countWrong(result, setup)).isEqualTo(2);
        ranks.forEach(BenchCollective.Buffers::close);
    }

    @Test
    void productAndMaxExpectationsFollowTheOperator() {
        int n = 3;
        var b = BenchCollective.Buffers.allocate(BenchCollective.ALL_REDUCE.layout(6, n), DType.INT32);
        // inputs (r + 1)(1 + i mod 3): the product over 3 ranks is 6·q³, the max is 3·q
        for (long i = 0; i < 6; i++) b.in().setLong(i, 6 * (long) Math.pow(1 + i % 3, 3));
        assertThat(BenchCollective.ALL_REDUCE.countWrong(b, new BenchCollective.Setup(1, n, DType.INT32, ReduceOp.PRODUCT, 0))).isZero();
        for (long i = 0; i < 6; i++) b.in().setLong(i, 3 * (1 + i % 3));
        assertThat(BenchCollective.ALL_REDUCE.countWrong(b, new BenchCollective.Setup(1, n, DType.INT32, ReduceOp.MAX, 0))).isZero();
        b.close();
    }

    @Test
    void aFloat16ProductBeyondItsRangeIsExpectedToBeInfinite() {
        int n = 8;
        var b = BenchCollective.Buffers.allocate(BenchCollective.ALL_REDUCE.layout(3, n), DType.FLOAT16);
        var setup = new BenchCollective.Setup(0, n, DType.FLOAT16, ReduceOp.PRODUCT, 0);
        // over 8 ranks: 8! = 40320 fits float16 (largest finite 65504); 8!·2^8 and 8!·3^8 do not
        b.in().setDouble(0, 40320);
        b.in().setDouble(1, Double.POSITIVE_INFINITY);
        b.in().setDouble(2, Double.POSITIVE_INFINITY);
        assertThat(BenchCollective.ALL_REDUCE.countWrong(b, setup)).isZero();
        b.in().setDouble(1, 65504); // a saturated value instead of the overflow is wrong
        assertThat(BenchCollective.ALL_REDUCE.countWrong(b, setup)).isEqualTo(1);
        b.close();
    }

    /** Routes every rank's filled input as all_to_all would, then checks each rank's output. */
    @Test
    void allToAllCheckCatchesAPartFromTheWrongRank() {
        int n = 3;
        var layout = BenchCollective.ALLTOALL.layout(30, n);
        long per = layout.inCount() / n;
        List<BenchCollective.Buffers> ranks = new ArrayList<>();
        for (int r = 0; r < n; r++) {
            var b = BenchCollective.Buffers.allocate(layout, DType.FLOAT32);
            BenchCollective.ALLTOALL.fill(b, new BenchCollective.Setup(r, n, DType.FLOAT32, ReduceOp.SUM, 0));
            ranks.add(b);
        }
        for (int dst = 0; dst < n; dst++) {
            for (int src = 0; src < n; src++) {
                ranks.get(dst).out().slice(0, src * per, (src + 1) * per).copyFrom(ranks.get(src).in().slice(0, dst * per, (dst + 1) * per));
            }
        }
        for (int r = 0; r < n; r++) {
            assertThat(BenchCollective.ALLTOALL.countWrong(ranks.get(r), new BenchCollective.Setup(r, n, DType.FLOAT32, ReduceOp.SUM, 0))).isZero();
        }
        // rank 1 gets rank 2's part for rank 0 in place of its own
        ranks.get(1).out().slice(0, 2 * per, 3 * per).copyFrom(ranks.get(2).in().slice(0, 0, per));
        assertThat(BenchCollective.ALLTOALL.countWrong(ranks.get(1), new BenchCollective.Setup(1, n, DType.FLOAT32, ReduceOp.SUM, 0))).isEqualTo(per);
        ranks.forEach(BenchCollective.Buffers::close);
    }

    @Test
    void theWarmUpPlanStopsAtTheSweepsLargestSizeButKeepsItsFirst() {
        long[][] plan = {{64, 3000}, {256 * 1024, 5000}, {4 << 20, 20}};
        assertThat(PgBenchWorker.upTo(8, plan)).isDeepEqualTo(new long[][] {{64, 3000}});
        assertThat(PgBenchWorker.upTo(1 << 20, plan)).isDeepEqualTo(new long[][] {{64, 3000}, {256 * 1024, 5000}});
        assertThat(PgBenchWorker.upTo(4 << 20, plan)).isDeepEqualTo(plan);
        assertThat(PgBenchWorker.upTo(64L << 20, plan)).isDeepEqualTo(plan);
    }
}
