package org.mooncake4j.pg.membership;

import static org.assertj.core.api.Assertions.assertThat;

import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.pg.ForwardingStore;
import org.mooncake4j.transfer.store.InMemoryStore;

/**
 * {@link FailureAgreement#latest()} never goes back to an older state: the watcher thread can read a
 * state, be descheduled, and store it after this rank's own compare-and-set (or a read) has moved on.
 */
class LatestStateTest {
    /** A store whose first watch answer is held back, then given as a state older than the current one. */
    private static final class LateWatchStore extends ForwardingStore {
        final CountDownLatch release = new CountDownLatch(1);
        final CountDownLatch delivered = new CountDownLatch(1);
        final CountDownLatch resume = new CountDownLatch(1);
        final AtomicInteger calls = new AtomicInteger();
        volatile byte[] stale;

        LateWatchStore() { super(new InMemoryStore()); }

        @Override
        public Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline) {
            if (calls.getAndIncrement() == 0) {
                await(release);
                return Optional.of(stale);
            }
            // the watcher has stored the first answer and asks again: hold it until the test has looked
            delivered.countDown();
            await(resume);
            return inner.awaitChange(key, current, deadline);
        }

        private static void await(CountDownLatch l) {
            try {
                l.await(10, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    @Test
    void aLateWatcherAnswerDoesNotPutBackAnOlderEpoch() throws Exception {
        LateWatchStore store = new LateWatchStore();
        FailureAgreement a = new FailureAgreement(store, "t/", "t", 0, Duration.ofSeconds(5));
        try {
            GroupState e0 = a.initOrCheck(GroupState.initial(3, 3, new boolean[] {true, true, true}), false);
            a.startWatcher();
            GroupState recovering = e0.beginRecovery();
            assertThat(a.compareAndSet(e0, recovering)).isTrue();
            GroupState e1 = recovering.next(new boolean[] {true, true, false}, 3, 4, GroupState.Outcome.REDO);
            assertThat(a.compareAndSet(recovering, e1)).isTrue();
            assertThat(a.changedSince(1)).isFalse();
            // the watcher now stores what it read before the last compare-and-set: epoch 0, recovering
            store.stale = recovering.encode();
            store.release.countDown();
            assertThat(store.delivered.await(10, TimeUnit.SECONDS)).isTrue();
            assertThat(a.latest()).isEqualTo(e1);
            assertThat(a.changedSince(1)).as("a stale watch answer made epoch 1 look changed").isFalse();
            store.resume.countDown();
            // a newer state still gets through
            GroupState e1r = e1.beginRecovery();
            assertThat(a.compareAndSet(e1, e1r)).isTrue();
            assertThat(a.changedSince(1)).isTrue();
            assertThat(a.latest()).isEqualTo(e1r);
        } finally {
            store.resume.countDown();
            a.close();
        }
    }

    @Test
    void statesAreOrderedByEpochThenRecovery() {
        GroupState e0 = GroupState.initial(2, 2, new boolean[] {true, true});
        GroupState r0 = e0.beginRecovery();
        GroupState e1 = r0.next(new boolean[] {true, false}, 2, 0, GroupState.Outcome.COMMIT);
        assertThat(r0.isAfter(e0)).isTrue();
        assertThat(e1.isAfter(r0)).isTrue();
        assertThat(e1.isAfter(e0)).isTrue();
        assertThat(e0.isAfter(r0)).isFalse();
        assertThat(r0.isAfter(e1)).isFalse();
        assertThat(e1.isAfter(e1)).isFalse();
    }
}
