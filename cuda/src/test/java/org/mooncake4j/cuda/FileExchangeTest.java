package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The file-based exchange the GPU harness uses to build a symmetric heap across processes. */
class FileExchangeTest {
    @TempDir
    Path dir;

    /** One thread per simulated rank (the common pool may have a single thread on a small machine). */
    private final ExecutorService ranks = Executors.newCachedThreadPool();

    @org.junit.jupiter.api.AfterEach
    void stopRanks() { ranks.shutdownNow(); }

    private static byte[] bytes(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    private static String text(byte[] b) { return new String(b, StandardCharsets.UTF_8); }

    @Test
    void everyRankGetsEveryRanksBytesInRankOrderRoundAfterRound() throws Exception {
        int world = 3;
        List<CompletableFuture<List<String>>> futures = new ArrayList<>();
        for (int r = 0; r < world; r++) {
            int rank = r;
            futures.add(CompletableFuture.supplyAsync(() -> {
                FileExchange x = new FileExchange(dir, rank, world, Duration.ofSeconds(20));
                List<String> seen = new ArrayList<>();
                for (int round = 0; round < 3; round++) {
                    byte[][] all = x.allGather(bytes("r" + rank + "k" + round));
                    StringBuilder s = new StringBuilder();
                    for (byte[] b : all) s.append(text(b)).append(' ');
                    seen.add(s.toString().trim());
                }
                return seen;
            }, ranks));
        }
        for (CompletableFuture<List<String>> f : futures) {
            assertThat(f.get(30, TimeUnit.SECONDS)).containsExactly("r0k0 r1k0 r2k0", "r0k1 r1k1 r2k1", "r0k2 r1k2 r2k2");
        }
    }

    @Test
    void aRoundTimesOutNamingTheRanksThatDidNotPublish() {
        FileExchange rank0 = new FileExchange(dir, 0, 4, Duration.ofMillis(300));
        CompletableFuture<Void> rank2 = CompletableFuture.runAsync(
                () -> new FileExchange(dir, 2, 4, Duration.ofSeconds(1)).allGather(bytes("two")), ranks);
        long t0 = System.nanoTime();
        assertThatThrownBy(() -> rank0.allGather(bytes("zero")))
                .isInstanceOfSatisfying(ExchangeTimeoutException.class, e -> {
                    assertThat(e.missingRanks()).containsExactly(1, 3);
                    assertThat(e).isInstanceOf(org.mooncake4j.core.TimeoutException.class);
                })
                .hasMessageContaining("rank 0: exchange round 0 in " + dir)
                .hasMessageContaining("ranks [1, 3] have not published")
                .hasMessageContaining("round-000000.rank-1, round-000000.rank-3")
                .hasMessageContaining("alive");
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertThat(ms).isBetween(290L, 3_000L);
        assertThatThrownBy(rank2::join).hasCauseInstanceOf(ExchangeTimeoutException.class)
                .hasMessageContaining("rank 2: exchange round 0").hasMessageContaining("ranks [1, 3]");
    }

    @Test
    void aRankSeesOnlyItsOwnRoundNotAnEarlierOne() throws Exception {
        FileExchange a = new FileExchange(dir, 0, 2, Duration.ofSeconds(10));
        FileExchange b = new FileExchange(dir, 1, 2, Duration.ofSeconds(10));
        CompletableFuture<byte[][]> first = CompletableFuture.supplyAsync(() -> a.allGather(bytes("a0")), ranks);
        assertThat(b.allGather(bytes("b0"))[0]).isEqualTo(bytes("a0"));
        assertThat(text(first.get(10, TimeUnit.SECONDS)[1])).isEqualTo("b0");

        CompletableFuture<byte[][]> second = CompletableFuture.supplyAsync(() -> a.allGather(bytes("a1")), ranks);
        byte[][] seen = b.allGather(bytes("b1"));
        assertThat(text(seen[0])).isEqualTo("a1");
        assertThat(text(second.get(10, TimeUnit.SECONDS)[1])).isEqualTo("b1");
        // round 0 is finished by everyone once round 1 is complete: its files are gone, round 1's stay
        assertThat(Files.exists(dir.resolve(FileExchange.fileName(0, 0)))).isFalse();
        assertThat(Files.exists(dir.resolve(FileExchange.fileName(0, 1)))).isFalse();
        assertThat(Files.exists(dir.resolve(FileExchange.fileName(1, 0)))).isTrue();
        assertThat(a.rounds()).isEqualTo(2);
    }

    @Test
    void aSingleRankGetsItsOwnBytesBack() {
        FileExchange x = new FileExchange(dir, 0, 1, Duration.ofSeconds(1));
        assertThat(x.allGather(bytes("solo"))).isDeepEqualTo(new byte[][] {bytes("solo")});
    }

    @Test
    void badArgumentsAreRefusedWithTheReason() {
        assertThatThrownBy(() -> new FileExchange(dir.resolve("missing"), 0, 2, Duration.ofSeconds(1)))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("does not exist")
                .hasMessageContaining("same path to every rank");
        assertThatThrownBy(() -> new FileExchange(dir, 2, 2, Duration.ofSeconds(1)))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("rank 2 is outside the group of 2");
        assertThatThrownBy(() -> new FileExchange(dir, 0, 2, Duration.ZERO))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout must be positive");
    }

    @Test
    void aRoundThatCompletesJustBeforeTheDeadlineSucceeds() throws ExecutionException, InterruptedException, java.util.concurrent.TimeoutException {
        FileExchange a = new FileExchange(dir, 0, 2, Duration.ofMillis(1500));
        CompletableFuture<byte[][]> late = CompletableFuture.supplyAsync(() -> {
            try {
                Thread.sleep(400);
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
            return new FileExchange(dir, 1, 2, Duration.ofSeconds(5)).allGather(bytes("late"));
        }, ranks);
        assertThat(text(a.allGather(bytes("early"))[1])).isEqualTo("late");
        assertThat(text(late.get(10, TimeUnit.SECONDS)[0])).isEqualTo("early");
    }
}
