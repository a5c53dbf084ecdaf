package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.pg.collective.Backup;
import org.mooncake4j.pg.collective.Channels;
import org.mooncake4j.pg.collective.GroupLayout;
import org.mooncake4j.pg.membership.GroupState;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.InMemoryStore;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.StoreException;

/**
 * Building an epoch's plane over a metadata store that is too busy to answer (an overloaded store
 * host): the member keys are published and waited for again within the deadline, and a store that
 * never answers becomes a missing member (the group's agreement decides) rather than an error that
 * ends one rank's operation while the others go on.
 */
class EpochPlaneTest {
    private static final String PREFIX = "mooncake4j/pg/test/";

    /** Delegates to a store, but fails the first {@code failures} set and waitFor calls as a store that does not answer. */
    static class BusyStore extends ForwardingStore {
        final AtomicInteger failures;
        final AtomicInteger refused = new AtomicInteger();

        BusyStore(MetadataStore inner, int failures) {
            super(inner);
            this.failures = new AtomicInteger(failures);
        }

        private void maybeRefuse(String what) {
            if (failures.getAndDecrement() > 0) {
                refused.incrementAndGet();
                throw new StoreException("The metadata store at test did not answer the " + what + " within 1ms. It is connected but not responding");
            }
        }

        @Override public void set(String key, byte[] value) { maybeRefuse("set"); inner.set(key, value); }
        @Override public Map<String, byte[]> waitFor(List<String> keys, Deadline deadline) { maybeRefuse("waitFor"); return inner.waitFor(keys, deadline); }
        @Override public void close() {}
    }

    private static EpochPlane build(TransferEngine engine, MetadataStore store, int rank, GroupState state, Deadline deadline) {
        return EpochPlane.build(engine, store, PREFIX, "pg.test.r" + rank, rank, state, new GroupLayout(2, 8192), deadline, () -> false,
                new Backup(), (c, f) -> {}, null);
    }

    @Test
    void aStoreThatDoesNotAnswerAtFirstIsWaitedForWithinTheDeadline() throws Exception {
        InMemoryStore mem = new InMemoryStore();
        GroupState state = GroupState.initial(2, 2, new boolean[] {true, true});
        try (TransferEngine e0 = TransferEngine.builder().store(mem).name("plane-a").hostIp("127.0.0.1").start();
             TransferEngine e1 = TransferEngine.builder().store(mem).name("plane-b").hostIp("127.0.0.1").start()) {
            BusyStore busy0 = new BusyStore(mem, 3), busy1 = new BusyStore(mem, 4);
            Deadline deadline = Deadline.after(Duration.ofSeconds(20));
            CompletableFuture<EpochPlane> p1 = CompletableFuture.supplyAsync(() -> build(e1, busy1, 1, state, deadline));
            try (EpochPlane p0 = build(e0, busy0, 0, state, deadline); EpochPlane q1 = p1.get(20, TimeUnit.SECONDS)) {
                assertThat(p0.peer(1)).isNotNull();
                assertThat(q1.peer(0)).isNotNull();
                assertThat(p0.epoch).isZero();
            }
            assertThat(busy0.refused.get()).as("rank 0's refused store calls, all retried").isEqualTo(3);
            assertThat(busy1.refused.get()).isEqualTo(4);
        }
    }

    @Test
    void aStoreThatNeverAnswersBecomesAMissingMemberAtTheDeadline() throws Exception {
        InMemoryStore mem = new InMemoryStore();
        GroupState state = GroupState.initial(2, 2, new boolean[] {true, true});
        try (TransferEngine e0 = TransferEngine.builder().store(mem).name("plane-c").hostIp("127.0.0.1").start()) {
            // the key is published, then every wait for the peer's is refused
            BusyStore waits = new BusyStore(mem, Integer.MAX_VALUE) {
                @Override public void set(String key, byte[] value) { inner.set(key, value); }
            };
            long t0 = System.nanoTime();
            assertThatThrownBy(() -> build(e0, waits, 0, state, Deadline.after(Duration.ofMillis(400))))
                    .isInstanceOfSatisfying(Channels.WaitFailure.class, f -> {
                        assertThat(f.peer()).isEqualTo(1);
                        assertThat(f.timedOut()).isTrue();
                    });
            assertThat(System.nanoTime() - t0).as("bounded by the deadline").isLessThan(TimeUnit.SECONDS.toNanos(5));
            assertThat(waits.refused.get()).isGreaterThan(1);
            // and a store that refuses the publication itself: the member after this rank is named
            BusyStore sets = new BusyStore(mem, Integer.MAX_VALUE);
            assertThatThrownBy(() -> build(e0, sets, 0, state, Deadline.after(Duration.ofMillis(300))))
                    .isInstanceOfSatisfying(Channels.WaitFailure.class, f -> assertThat(f.peer()).isEqualTo(1))
                    .hasCauseInstanceOf(StoreException.class);
        }
    }

    @Test
    void theNextMemberWrapsAround() {
        assertThat(EpochPlane.nextMember(new int[] {0, 2, 3}, 2)).isEqualTo(3);
        assertThat(EpochPlane.nextMember(new int[] {0, 2, 3}, 3)).isZero();
        assertThat(EpochPlane.nextMember(new int[] {1}, 1)).isEqualTo(1);
    }
}
