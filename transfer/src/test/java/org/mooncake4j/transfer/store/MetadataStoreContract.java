package org.mooncake4j.transfer.store;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.stream.LongStream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;

/**
 * The behaviour every {@link MetadataStore} must have. A subclass supplies {@link #newStore()}, which
 * must return a store over a fresh, empty key space for each test; this class closes it after the
 * test. Tests run one at a time; some drive the store from several threads.
 */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
public abstract class MetadataStoreContract {
    private static final int THREADS = 8;

    protected MetadataStore store;
    private ExecutorService pool;

    /** A store over a fresh, empty key space; owned by the contract, which closes it. */
    protected abstract MetadataStore newStore();

    @BeforeEach
    void openStore() {
        store = newStore();
        pool = Executors.newFixedThreadPool(THREADS);
    }

    @AfterEach
    void closeStore() throws InterruptedException {
        if (pool != null) {
            pool.shutdownNow();
            assertThat(pool.awaitTermination(10, TimeUnit.SECONDS)).as("contract worker threads ended").isTrue();
        }
        if (store != null) store.close();
    }

    protected static byte[] bytes(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    protected static String string(byte[] b) { return new String(b, StandardCharsets.UTF_8); }

    private String value(String key) { return store.get(key).map(MetadataStoreContract::string).orElse(null); }

    @Test
    void getOfAnAbsentKeyIsEmpty() {
        assertThat(store.get("absent")).isEmpty();
    }

    @Test
    void setThenGetRoundTripsAndReturnedArraysAreCopies() {
        byte[] all = new byte[256];
        for (int i = 0; i < all.length; i++) all[i] = (byte) i;
        store.set("bin", all);
        all[0] = 42;
        byte[] got = store.get("bin").orElseThrow();
        assertThat(got).hasSize(256);
        for (int i = 0; i < 256; i++) assertThat(got[i]).as("byte %d", i).isEqualTo((byte) i);
        got[1] = 99;
        assertThat(store.get("bin").orElseThrow()[1]).as("a returned array is the caller's copy").isEqualTo((byte) 1);

        store.set("k", bytes("first"));
        store.set("k", bytes("second"));
        assertThat(value("k")).isEqualTo("second");

        store.set("empty", new byte[0]);
        assertThat(store.get("empty")).as("an empty value is present").hasValueSatisfying(v -> assertThat(v).isEmpty());

        byte[] big = new byte[1 << 20];
        for (int i = 0; i < big.length; i++) big[i] = (byte) (i * 31);
        store.set("big", big);
        assertThat(store.get("big").orElseThrow()).isEqualTo(big);
    }

    @Test
    void compareAndSetWithAbsentExpectedCreatesOnlyOnce() {
        assertThat(store.compareAndSet("k", null, bytes("v1"))).isTrue();
        assertThat(value("k")).isEqualTo("v1");
        assertThat(store.compareAndSet("k", null, bytes("v2"))).as("the key exists now").isFalse();
        assertThat(value("k")).isEqualTo("v1");
    }

    @Test
    void compareAndSetWithWrongExpectedFailsAndLeavesTheValue() {
        store.set("k", bytes("v1"));
        assertThat(store.compareAndSet("k", bytes("other"), bytes("v2"))).isFalse();
        assertThat(value("k")).isEqualTo("v1");
        assertThat(store.compareAndSet("k", bytes("v1x"), bytes("v2"))).isFalse();
        assertThat(store.compareAndSet("k", new byte[0], bytes("v2"))).isFalse();
        assertThat(value("k")).isEqualTo("v1");
        assertThat(store.compareAndSet("absent", bytes("v1"), bytes("v2"))).as("an absent key never equals a value").isFalse();
        assertThat(store.get("absent")).isEmpty();
    }

    @Test
    void compareAndSetWithMatchingExpectedReplaces() {
        store.set("k", bytes("v1"));
        assertThat(store.compareAndSet("k", bytes("v1"), bytes("v2"))).isTrue();
        assertThat(value("k")).isEqualTo("v2");
        assertThat(store.compareAndSet("k", bytes("v1"), bytes("v3"))).as("v1 is stale now").isFalse();
        assertThat(value("k")).isEqualTo("v2");
    }

    @Test
    void concurrentCompareAndSetHasExactlyOneWinnerPerRound() throws Exception {
        int rounds = 20;
        CyclicBarrier barrier = new CyclicBarrier(THREADS);
        store.set("shared", bytes("0"));
        List<Future<List<Integer>>> futures = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
            int me = t;
            futures.add(pool.submit(() -> {
                List<Integer> won = new ArrayList<>();
                for (int r = 0; r < rounds; r++) {
                    barrier.await(20, TimeUnit.SECONDS);
                    if (store.compareAndSet("race/" + r, null, bytes(Integer.toString(me)))) won.add(r);
                    barrier.await(20, TimeUnit.SECONDS);
                    if (store.compareAndSet("shared", bytes(Integer.toString(r)), bytes(Integer.toString(r + 1)))) won.add(rounds + r);
                }
                return won;
            }));
        }
        int[] createWinner = new int[rounds];
        int[] advanceWins = new int[rounds];
        java.util.Arrays.fill(createWinner, -1);
        for (int t = 0; t < THREADS; t++) {
            for (int r : futures.get(t).get(25, TimeUnit.SECONDS)) {
                if (r < rounds) {
                    assertThat(createWinner[r]).as("round %d has a single creator", r).isEqualTo(-1);
                    createWinner[r] = t;
                } else {
                    advanceWins[r - rounds]++;
                }
            }
        }
        for (int r = 0; r < rounds; r++) {
            assertThat(createWinner[r]).as("round %d has a creator", r).isNotEqualTo(-1);
            assertThat(value("race/" + r)).as("round %d's value is its winner's", r).isEqualTo(Integer.toString(createWinner[r]));
            assertThat(advanceWins[r]).as("exactly one thread advanced 'shared' from %d", r).isEqualTo(1);
        }
        assertThat(value("shared")).isEqualTo(Integer.toString(rounds));
    }

    @Test
    void addCountsFromZeroAndTakesNegativeDeltas() {
        assertThat(store.add("c", 5)).isEqualTo(5);
        assertThat(store.add("c", -7)).isEqualTo(-2);
        assertThat(store.add("c", 0)).isEqualTo(-2);
        assertThat(value("c")).isEqualTo("-2");
        store.set("preset", bytes("40"));
        assertThat(store.add("preset", 2)).isEqualTo(42);
    }

    @Test
    void concurrentAddsReturnIncreasingValuesAndAnExactSum() throws Exception {
        int perThread = 50;
        List<Future<List<Long>>> futures = new ArrayList<>();
        CyclicBarrier barrier = new CyclicBarrier(THREADS);
        for (int t = 0; t < THREADS; t++) {
            futures.add(pool.submit(() -> {
                barrier.await(20, TimeUnit.SECONDS);
                List<Long> seen = new ArrayList<>();
                for (int i = 0; i < perThread; i++) seen.add(store.add("counter", 1));
                return seen;
            }));
        }
        List<Long> all = new ArrayList<>();
        for (Future<List<Long>> f : futures) {
            List<Long> seen = f.get(25, TimeUnit.SECONDS);
            for (int i = 1; i < seen.size(); i++) {
                assertThat(seen.get(i)).as("each thread sees its adds increase").isGreaterThan(seen.get(i - 1));
            }
            all.addAll(seen);
        }
        Collections.sort(all);
        assertThat(all).as("every add returned a distinct value, 1..N").isEqualTo(LongStream.rangeClosed(1, THREADS * perThread).boxed().toList());
        assertThat(value("counter")).isEqualTo(Integer.toString(THREADS * perThread));
    }

    @Test
    void deleteRemovesAndReportsWhetherTheKeyExisted() {
        store.set("d", bytes("x"));
        store.set("d2", bytes("y"));
        assertThat(store.delete("d")).isTrue();
        assertThat(store.get("d")).isEmpty();
        assertThat(store.delete("d")).isFalse();
        assertThat(store.delete("never")).isFalse();
        assertThat(store.keys("d")).containsExactly("d2");
        assertThat(store.compareAndSet("d", null, bytes("again"))).as("a deleted key is absent").isTrue();
    }

    @Test
    void keysAreSortedAndFilteredByPrefix() {
        for (String k : List.of("b/2", "a/1", "b/10", "b/1", "c", "b", "ba")) store.set(k, bytes(k));
        assertThat(store.keys("b/")).containsExactly("b/1", "b/10", "b/2");
        assertThat(store.keys("b")).containsExactly("b", "b/1", "b/10", "b/2", "ba");
        assertThat(store.keys("")).containsExactly("a/1", "b", "b/1", "b/10", "b/2", "ba", "c");
        assertThat(store.keys("zzz")).isEmpty();
        assertThat(store.keys("b/10")).containsExactly("b/10");
    }

    @Test
    void waitForReturnsOnceAnotherThreadSetsTheKeys() throws Exception {
        store.set("ready/0", bytes("r0"));
        Future<?> writer = pool.submit(() -> {
            Thread.sleep(100);
            store.set("ready/1", bytes("r1"));
            Thread.sleep(100);
            store.set("ready/2", bytes("r2"));
            return null;
        });
        long start = System.nanoTime();
        Map<String, byte[]> got = store.waitFor(List.of("ready/0", "ready/1", "ready/2"), Deadline.after(Duration.ofSeconds(10)));
        long tookMs = (System.nanoTime() - start) / 1_000_000;
        writer.get(5, TimeUnit.SECONDS);
        assertThat(got).containsOnlyKeys("ready/0", "ready/1", "ready/2");
        assertThat(string(got.get("ready/0"))).isEqualTo("r0");
        assertThat(string(got.get("ready/1"))).isEqualTo("r1");
        assertThat(string(got.get("ready/2"))).isEqualTo("r2");
        assertThat(tookMs).as("woke soon after the last set, ms").isGreaterThanOrEqualTo(150).isLessThan(5000);
    }

    @Test
    void waitForOfPresentKeysReturnsAtOnce() {
        store.set("p", bytes("v"));
        Map<String, byte[]> got = store.waitFor(List.of("p"), Deadline.afterMillis(0));
        assertThat(string(got.get("p"))).isEqualTo("v");
    }

    @Test
    void waitForTimesOutAtTheDeadlineNamingTheMissingKey() {
        store.set("present", bytes("v"));
        long start = System.nanoTime();
        assertThatThrownBy(() -> store.waitFor(List.of("present", "missing/key"), Deadline.afterMillis(300)))
                .isInstanceOf(TimeoutException.class)
                .hasMessageContaining("missing/key")
                .hasMessageNotContaining("[present");
        long tookMs = (System.nanoTime() - start) / 1_000_000;
        assertThat(tookMs).as("waited until the deadline, ms").isGreaterThanOrEqualTo(295).isLessThan(800);
    }

    @Test
    void awaitChangeWakesWhenTheValueChanges() throws Exception {
        store.set("m", bytes("v1"));
        Future<?> writer = pool.submit(() -> {
            Thread.sleep(150);
            store.set("m", bytes("v1"));
            Thread.sleep(50);
            store.set("m", bytes("v2"));
            return null;
        });
        long start = System.nanoTime();
        Optional<byte[]> got = store.awaitChange("m", bytes("v1"), Deadline.after(Duration.ofSeconds(10)));
        long tookMs = (System.nanoTime() - start) / 1_000_000;
        writer.get(5, TimeUnit.SECONDS);
        assertThat(got.map(MetadataStoreContract::string)).as("rewriting the same value is no change").contains("v2");
        assertThat(tookMs).isGreaterThanOrEqualTo(190).isLessThan(5000);
    }

    @Test
    void awaitChangeSeesCreationAndDeletion() throws Exception {
        Future<?> creator = pool.submit(() -> {
            Thread.sleep(100);
            store.set("n", bytes("born"));
            return null;
        });
        assertThat(store.awaitChange("n", null, Deadline.after(Duration.ofSeconds(10))).map(MetadataStoreContract::string)).contains("born");
        creator.get(5, TimeUnit.SECONDS);
        Future<?> deleter = pool.submit(() -> {
            Thread.sleep(100);
            store.delete("n");
            return null;
        });
        assertThat(store.awaitChange("n", bytes("born"), Deadline.after(Duration.ofSeconds(10)))).as("deleted").isEmpty();
        deleter.get(5, TimeUnit.SECONDS);
    }

    @Test
    void awaitChangeReturnsAtOnceWhenTheValueAlreadyDiffers() {
        store.set("m", bytes("now"));
        long start = System.nanoTime();
        assertThat(store.awaitChange("m", bytes("before"), Deadline.after(Duration.ofSeconds(10))).map(MetadataStoreContract::string)).contains("now");
        assertThat(store.awaitChange("absent", bytes("before"), Deadline.after(Duration.ofSeconds(10)))).isEmpty();
        assertThat((System.nanoTime() - start) / 1_000_000).isLessThan(2000);
    }

    @Test
    void awaitChangeReturnsTheUnchangedValueAtTheDeadline() {
        store.set("m", bytes("same"));
        long start = System.nanoTime();
        Optional<byte[]> got = store.awaitChange("m", bytes("same"), Deadline.afterMillis(300));
        long tookMs = (System.nanoTime() - start) / 1_000_000;
        assertThat(got.map(MetadataStoreContract::string)).contains("same");
        assertThat(tookMs).as("returned at the deadline, ms").isGreaterThanOrEqualTo(295).isLessThan(800);

        start = System.nanoTime();
        assertThat(store.awaitChange("absent", null, Deadline.afterMillis(200))).isEmpty();
        assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(195).isLessThan(700);
    }
}
