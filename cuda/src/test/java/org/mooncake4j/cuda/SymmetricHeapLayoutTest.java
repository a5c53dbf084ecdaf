package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The symmetric heap's layout and what the ranks swap to build it; no GPU needed. */
class SymmetricHeapLayoutTest {
    private static final long MIB = 1L << 20;

    @Test
    void layoutPutsHeaderFlagsAndTwoAlignedBanksInOrder() {
        SymmetricHeap.Layout l = SymmetricHeap.Layout.of(257 * MIB);
        assertThat(l.dataOffset()).isEqualTo(69_632);  // 128 + 512 rows * 128, rounded up to 4096
        assertThat(l.bankBytes() % 4096).isZero();
        assertThat(l.bankBytes()).isGreaterThanOrEqualTo(128 * MIB);
        assertThat(l.bankOffset(0)).isEqualTo(69_632);
        assertThat(l.bankOffset(1)).isEqualTo(69_632 + l.bankBytes());
        assertThat(l.bankOffset(1) + l.bankBytes()).isLessThanOrEqualTo(257 * MIB);
        assertThat(l.flagOffset(0, 0)).isEqualTo(128);
        assertThat(l.flagOffset(3, 5)).isEqualTo(128 + 3 * 128 + 5 * 8);
        assertThat(l.flagOffset(511, 7) + 8).isLessThanOrEqualTo(l.dataOffset());
        assertThat(l.flagOffset(7, 0) % 128).isZero();
        assertThatThrownBy(() -> l.flagOffset(512, 0)).isInstanceOf(IndexOutOfBoundsException.class);
        assertThatThrownBy(() -> l.bankOffset(2)).isInstanceOf(IndexOutOfBoundsException.class);
    }

    @Test
    void aTooSmallHeapIsRefusedWithTheMinimum() {
        long min = SymmetricHeap.Layout.minimumHeapBytes();
        assertThat(SymmetricHeap.Layout.of(min).bankBytes()).isEqualTo(SymmetricHeap.Layout.MIN_BANK_BYTES);
        assertThatThrownBy(() -> SymmetricHeap.Layout.of(min - 1)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("at least " + min + " bytes").hasMessageContaining("got " + (min - 1));
    }

    @Test
    void groupArgumentsAreChecked() {
        SymmetricHeap.checkArguments(0, 1, 64 * MIB);
        SymmetricHeap.checkArguments(7, 8, 64 * MIB);
        assertThatThrownBy(() -> SymmetricHeap.checkArguments(0, 9, 64 * MIB)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("1 to 8 ranks").hasMessageContaining("got world size 9");
        assertThatThrownBy(() -> SymmetricHeap.checkArguments(4, 4, 64 * MIB)).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("rank 4 is outside the group of 4 ranks (0..3)");
        assertThatThrownBy(() -> SymmetricHeap.checkArguments(-1, 4, 64 * MIB)).isInstanceOf(IllegalArgumentException.class);
    }

    @Test
    void offersRoundTripAndDisagreementsNameTheRank() {
        byte[] handle = new byte[ShareableHandle.BYTES];
        handle[7] = 42;
        SymmetricHeap.Offer a = new SymmetricHeap.Offer(0, 2, 64 * MIB, 132, 1234, SymmetricHeap.Sharing.SHAREABLE, handle, "");
        SymmetricHeap.Offer b = new SymmetricHeap.Offer(1, 2, 64 * MIB, 114, 5678, null, new byte[0], "no VMM on cuda:1");
        SymmetricHeap.Offer[] both = SymmetricHeap.Offer.decodeAll(new byte[][] {a.toBytes(), b.toBytes()}, 0, 2, 64 * MIB);
        assertThat(both[0].kind()).isEqualTo(SymmetricHeap.Sharing.SHAREABLE);
        assertThat(both[0].handle()).isEqualTo(handle);
        assertThat(both[0].multiprocessors()).isEqualTo(132);
        assertThat(both[0].pid()).isEqualTo(1234);
        assertThat(both[1].kind()).isNull();
        assertThat(both[1].note()).isEqualTo("no VMM on cuda:1");

        SymmetricHeap.Offer otherSize = new SymmetricHeap.Offer(1, 2, 32 * MIB, 132, 9, null, new byte[0], "");
        assertThatThrownBy(() -> SymmetricHeap.Offer.decodeAll(new byte[][] {a.toBytes(), otherSize.toBytes()}, 0, 2, 64 * MIB))
                .isInstanceOf(IllegalStateException.class).hasMessageContaining("index 1 from rank 1")
                .hasMessageContaining("heap 33554432 bytes").hasMessageContaining("same world size and size");
        assertThatThrownBy(() -> SymmetricHeap.Offer.decodeAll(new byte[][] {a.toBytes(), a.toBytes()}, 1, 2, 64 * MIB))
                .isInstanceOf(IllegalStateException.class).hasMessageContaining("from rank 0")
                .hasMessageContaining("each rank number must be used once");
        assertThatThrownBy(() -> SymmetricHeap.Offer.decodeAll(new byte[][] {a.toBytes(), {1, 2, 3}}, 0, 2, 64 * MIB))
                .isInstanceOf(IllegalStateException.class).hasMessageContaining("rank 1 published something that is not");
    }

    @Test
    void verdictsCarryTheFailureMessage() {
        assertThat(SymmetricHeap.Verdict.decode(SymmetricHeap.Verdict.encode(null), 0)).isNull();
        assertThat(SymmetricHeap.Verdict.decode(SymmetricHeap.Verdict.encode("rank 2 could not map rank 0's heap"), 2))
                .isEqualTo("rank 2 could not map rank 0's heap");
        assertThat(SymmetricHeap.Verdict.decode(new byte[0], 3)).contains("rank 3");
    }

    /** collectives.cu hard-codes the layout; the two must agree. */
    @Test
    void kernelsUseTheSameLayoutConstants() throws IOException {
        String cu = Files.readString(Path.of("src/main/cuda/collectives.cu"));
        assertThat(cu).contains("constexpr int kMaxRanks = " + SymmetricHeap.MAX_RANKS + ";")
                .contains("constexpr uint64_t kFlagsOffset = " + SymmetricHeap.Layout.FLAGS_OFFSET + ";")
                .contains("constexpr uint64_t kFlagRowBytes = " + SymmetricHeap.Layout.FLAG_ROW_BYTES + ";")
                .contains("__launch_bounds__(" + CollectivePlan.THREADS + ", " + SymmetricHeap.BLOCKS_PER_SM + ")");
        assertThat(SymmetricHeap.Layout.ABORT_WORD_OFFSET).isZero();
    }
}
