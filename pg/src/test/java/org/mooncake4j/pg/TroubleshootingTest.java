package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.transfer.store.InMemoryStore;

/**
 * The process-group rows of docs/TROUBLESHOOTING.md: each test provokes one symptom of the
 * troubleshooting pages in this JVM and checks the exact message the group gives for it. A healthy
 * group of one rank (with reserved slots) stands for the running job; "joining" processes are
 * further groups of this JVM on the same store.
 */
class TroubleshootingTest {
    private static final Duration TIMEOUT = Duration.ofSeconds(10);

    private final InMemoryStore store = new InMemoryStore();
    private final List<ProcessGroup> groups = new ArrayList<>();

    @BeforeAll
    static void smallSegments() {
        System.setProperty("mooncake4j.slotBytes", Long.toString(64 * 1024));
    }

    @AfterEach
    void closeGroups() {
        for (int i = groups.size() - 1; i >= 0; i--) groups.get(i).close();
    }

    private static Tensor mask(int slots, int active) {
        Tensor m = Tensor.zeros(DType.INT32, Device.CPU, slots);
        for (int r = 0; r < active; r++) m.setLong(r, 1);
        return m;
    }

    private interface RankTask<T> {
        T run(int rank) throws Exception;
    }

    /** Runs {@code task} for ranks 0..n-1 on threads of their own (as separate processes would) and returns the results in rank order. */
    private static <T> List<T> inParallel(int n, RankTask<T> task) throws Exception {
        List<java.util.concurrent.Future<T>> fs = new ArrayList<>();
        try (var pool = java.util.concurrent.Executors.newFixedThreadPool(n)) {
            for (int r = 0; r < n; r++) {
                int rank = r;
                fs.add(pool.submit(() -> task.run(rank)));
            }
            List<T> out = new ArrayList<>();
            for (var f : fs) out.add(f.get(60, java.util.concurrent.TimeUnit.SECONDS));
            return out;
        }
    }

    private ProcessGroupBuilder builder(int rank, int world, MooncakeBackendOptions o) {
        return ProcessGroup.builder().store(store).rank(rank).worldSize(world).timeout(TIMEOUT).options(o);
    }

    private ProcessGroup init(int rank, int world, MooncakeBackendOptions o) {
        ProcessGroup pg = builder(rank, world, o).init();
        groups.add(pg);
        return pg;
    }

    /** The running job: rank 0 of a group of {@code world} ranks with {@code slots} reserved. */
    private ProcessGroup healthy(int world, int slots) {
        return init(0, world, new MooncakeBackendOptions(mask(slots, world), false, slots));
    }

    // ---- activeRanks must be int / on CPU / on GPU / sized to max_world_size ------------------

    @Test
    void activeRanksMustBeInt() {
        for (DType dt : new DType[] {DType.BOOL, DType.INT64, DType.FLOAT32}) {
            assertThatThrownBy(() -> builder(0, 2, new MooncakeBackendOptions(Tensor.ones(dt, Device.CPU, 2))).init())
                    .isInstanceOf(IllegalArgumentException.class).hasMessage("activeRanks must be int.");
        }
    }

    @Test
    void activeRanksMustBeOnCpuForTheCpuBackend() {
        Tensor onGpu = Tensor.wrapDevice(0x1000, 0, DType.INT32, 2); // validation looks at the device only
        assertThatThrownBy(() -> builder(0, 2, new MooncakeBackendOptions(onGpu)).backend("mooncake-cpu").init())
                .isInstanceOf(IllegalArgumentException.class).hasMessage("activeRanks must be on CPU.");
    }

    @Test
    void activeRanksMustBeOnGpuForTheCudaBackend() {
        assertThatThrownBy(() -> builder(0, 2, new MooncakeBackendOptions(mask(2, 2))).backend("mooncake").init())
                .isInstanceOf(IllegalArgumentException.class).hasMessage("activeRanks must be on GPU.");
    }

    @Test
    void activeRanksMustBeSizedToMaxWorldSize() {
        assertThatThrownBy(() -> builder(0, 2, new MooncakeBackendOptions(mask(2, 2), false, 4)).init())
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("activeRanks must be sized to max_world_size when max_world_size is set");
        assertThatThrownBy(() -> builder(0, 2, new MooncakeBackendOptions(mask(3, 3))).init())
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("activeRanks has 3 entries but world_size is 2; size it to world_size (or to max_world_size when that is set)");
    }

    // ---- get_world_size() is smaller than max_world_size ---------------------------------------

    @Test
    void visibleWorldSizeIsSmallerThanMaxWorldSizeByDesign() {
        // 1 for the reserved ranks in the mask does not make them members: ranks >= world_size start inactive
        ProcessGroup pg = init(0, 1, new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 3), false, 3));
        assertThat(pg.size()).isEqualTo(1);
        assertThat(pg.worldSize()).isEqualTo(1);
        assertThat(pg.maxWorldSize()).isEqualTo(3);
        assertThat(pg.activeRanks().toIntArray()).containsExactly(1, 0, 0);
        pg.extendGroupSizeTo(2);
        assertThat(pg.worldSize()).isEqualTo(2);
        assertThat(pg.size()).as("a reserved rank stays inactive until recoverRanks").isEqualTo(1);
        assertThat(pg.activeRanks().toIntArray()).containsExactly(1, 0, 0);
    }

    // ---- get_peer_state() or join_group() hangs ------------------------------------------------

    @Test
    void joinerWithoutIsExtensionIsRefusedByTheRunningGroup() {
        ProcessGroup pg = healthy(1, 2);
        pg.extendGroupSizeTo(2);
        assertThatThrownBy(() -> init(1, 2, new MooncakeBackendOptions(mask(2, 2), false, 2)))
                .isInstanceOf(IllegalStateException.class)
                .hasMessage("rank 1 cannot start as a regular member of group 'world': the group is running (epoch " + pg.epoch()
                        + ", active ranks [0]). A replacement or joining process must be started with"
                        + " MooncakeBackendOptions(activeRanks, isExtension=true, maxWorldSize) and call joinGroup().");
    }

    @Test
    void rankMarkedInactiveWithoutIsExtensionIsRefused() {
        healthy(1, 2);
        assertThatThrownBy(() -> init(1, 2, new MooncakeBackendOptions(mask(2, 1), false, 2)))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("rank 1 is marked inactive in activeRanks [1, 0]; a rank that starts inactive must be an extension rank"
                        + " (isExtension=true) that joins with joinGroup()");
    }

    @Test
    void mismatchedMaxWorldSizeIsRefusedAtInit() {
        healthy(1, 2);
        assertThatThrownBy(() -> init(1, 2, new MooncakeBackendOptions(mask(3, 3), true, 3)))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("max_world_size mismatch: rank 1 was started with max_world_size 3 but group 'world' has 2."
                        + " Every rank, joining ranks included, must use the same max_world_size.");
    }

    @Test
    void mismatchedWorldSizeIsRefusedAtInit() {
        healthy(1, 2);
        assertThatThrownBy(() -> init(1, 2, new MooncakeBackendOptions(mask(2, 2), false, 2)))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("world_size mismatch: rank 1 was started with world_size 2 but group 'world' has 1."
                        + " Every rank must use the same world_size.");
    }

    @Test
    void joinGroupThatIsNeverRecoveredTimesOutWithWhatToCheck() {
        ProcessGroup pg = healthy(1, 2);
        pg.extendGroupSizeTo(2);
        ProcessGroup joiner = init(1, 2, new MooncakeBackendOptions(mask(2, 2), true, 2));
        long start = System.nanoTime();
        assertThatThrownBy(() -> joiner.joinGroup(Duration.ofMillis(500)))
                .isInstanceOf(TimeoutException.class)
                .hasMessage("joinGroup() on rank 1 of group 'world' timed out after 500 ms: the healthy ranks did not recover it."
                        + " Check that they poll peerState([1]) and call recoverRanks([1]), and that every rank uses the same store,"
                        + " max_world_size and rank numbering.");
        assertThat((System.nanoTime() - start) / 1_000_000).as("bounded by the wait given").isLessThan(5_000);
    }

    @Test
    void recoverRanksOfAProcessThatHasNotPublishedItsMetadataSaysSo() {
        ProcessGroup pg = healthy(1, 2);
        pg.extendGroupSizeTo(2);
        assertThat(pg.peerState(1)).containsExactly(false);
        assertThatThrownBy(() -> pg.recoverRanks(1))
                .isInstanceOf(IllegalStateException.class)
                .hasMessage("recoverRanks: rank 1 has not published its metadata (it must start with isExtension=true);"
                        + " poll peerState([1]) until it is true");
        init(1, 2, new MooncakeBackendOptions(mask(2, 2), true, 2));
        assertThat(pg.peerState(1)).as("published once the joiner has initialized").containsExactly(true);
    }

    @Test
    void joinGroupOnARegularMemberIsRefused() {
        ProcessGroup pg = healthy(1, 1);
        assertThatThrownBy(pg::joinGroup)
                .isInstanceOf(IllegalStateException.class)
                .hasMessage("rank 0 is already a member of group 'world'; joinGroup() is for extension ranks");
    }

    @Test
    void healthyRanksCallingDifferentCollectivesGetACollectiveMismatch() throws Exception {
        Duration t = Duration.ofSeconds(1);
        List<ProcessGroup> pgs = inParallel(2, r -> ProcessGroup.builder().store(store).rank(r).worldSize(2).timeout(t)
                .options(new MooncakeBackendOptions(mask(3, 2), false, 3)).init());
        groups.addAll(pgs);
        inParallel(2, r -> {
            pgs.get(r).extendGroupSizeTo(3);
            return null;
        });
        // rank 0 polls peerState([2]) (a broadcast from the lowest member) while rank 1 runs an all-reduce
        List<Object> outcome = inParallel(2, r -> {
            try {
                if (r == 0) return pgs.get(0).peerState(2);
                pgs.get(1).allReduce(Tensor.of(new float[] {1}), ReduceOp.SUM);
                return "no error";
            } catch (RuntimeException e) {
                return e;
            }
        });
        assertThat(outcome.get(1)).isInstanceOf(RuntimeException.class);
        assertThat(((RuntimeException) outcome.get(1)).getMessage())
                .matches("Collective mismatch: rank 0 sent data for broadcast #\\d+ \\(epoch \\d+\\) while rank 1 runs all_reduce #\\d+"
                        + " \\(epoch \\d+\\)\\. Every rank of a group must call the same collectives in the same order\\.");
    }

    @Test
    void joinerThatDoesNotCreateTheSubgroupsOfTheHealthyRanksIsNamed() throws Exception {
        Duration t = Duration.ofSeconds(2);
        ProcessGroup pg = ProcessGroup.builder().store(store).rank(0).worldSize(1).timeout(t)
                .options(new MooncakeBackendOptions(mask(2, 1), false, 2)).init();
        groups.add(pg);
        ProcessGroup sub = pg.newGroup(0, 1);
        groups.add(sub);
        pg.extendGroupSizeTo(2);
        // the replacement joins the world group but never calls newGroup(0, 1)
        var joined = java.util.concurrent.CompletableFuture.supplyAsync(() -> {
            ProcessGroup j = ProcessGroup.builder().store(store).rank(1).worldSize(2).timeout(t)
                    .options(new MooncakeBackendOptions(mask(2, 2), true, 2)).init();
            j.joinGroup(Duration.ofSeconds(20));
            return j;
        });
        long until = System.nanoTime() + 20_000_000_000L;
        while (!pg.peerState(1)[0] && System.nanoTime() < until) Thread.sleep(5);
        assertThatThrownBy(() -> pg.recoverRanks(1))
                .isInstanceOf(TimeoutException.class)
                .hasMessage("subgroup 'world/g1': ranks [1] did not start joining within 2000 ms; the joining process must create its"
                        + " subgroups with newGroup in the same order as the healthy ranks");
        groups.add(joined.get(30, java.util.concurrent.TimeUnit.SECONDS));
    }

    // ---- newly extended ranks participate too early --------------------------------------------

    @Test
    void extensionRankCannotRunCollectivesBeforeJoinGroup() {
        ProcessGroup pg = healthy(1, 2);
        pg.extendGroupSizeTo(2);
        ProcessGroup joiner = init(1, 2, new MooncakeBackendOptions(mask(2, 2), true, 2));
        Tensor x = Tensor.of(new float[] {1});
        assertThatThrownBy(() -> joiner.allReduce(x, ReduceOp.SUM))
                .isInstanceOf(IllegalStateException.class)
                .hasMessage("rank 1 of group 'world' was started with isExtension=true and has not joined yet:"
                        + " call joinGroup() before any collective or P2P operation");
    }

    @Test
    void extendingBeyondMaxWorldSizeIsRefused() {
        ProcessGroup pg = healthy(1, 2);
        assertThatThrownBy(() -> pg.extendGroupSizeTo(3))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessage("cannot extend group 'world' to 3 ranks: max_world_size is 2; start every rank with a larger max_world_size");
    }

    // ---- P2P send/recv errors ------------------------------------------------------------------

    @Test
    void p2pWithAnInactivePeerIsRefused() {
        ProcessGroup pg = healthy(1, 2);
        pg.extendGroupSizeTo(2);
        Tensor x = Tensor.of(new float[] {1});
        assertThatThrownBy(() -> pg.isend(x, 1, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("destination 1 is not an active rank [0]");
        assertThatThrownBy(() -> pg.batchIsendIrecv(List.of(P2POp.irecv(x, 1, 0))))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("source 1 is not an active rank [0]");
        assertThatThrownBy(() -> pg.isend(x, 0, 0))
                .isInstanceOf(IllegalArgumentException.class).hasMessage("destination 0 is this rank; P2P needs another rank");
    }

    // ---- what the CUDA backend says on a host without a GPU driver -------------------------------

    @Test
    void cudaBackendOnAHostWithoutADriverSaysWhyItCannotStart() {
        org.junit.jupiter.api.Assumptions.assumeFalse(java.nio.file.Files.exists(java.nio.file.Path.of("/dev/nvidiactl")),
                "this host has an NVIDIA driver; the GPU test script covers the backend there");
        Tensor onGpu = Tensor.wrapDevice(0x1000, 0, DType.INT32, 1);
        assertThatThrownBy(() -> builder(0, 1, new MooncakeBackendOptions(onGpu)).backend("mooncake").init())
                .isInstanceOf(IllegalStateException.class)
                .hasMessage("backend 'mooncake' cannot start on rank 0 (cuda:0): The NVIDIA driver library libcuda.so.1 was not found:"
                        + " this host has no NVIDIA driver, so the 'mooncake' (CUDA) backend cannot run here; use backend 'mooncake-cpu'"
                        + " or run on a GPU host.");
    }
}
