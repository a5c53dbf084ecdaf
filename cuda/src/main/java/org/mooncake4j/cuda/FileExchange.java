package org.mooncake4j.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.mooncake4j.core.Deadline;

/**
 * A {@link SymmetricHeap.Exchange} through files in a directory that every rank of the group sees
 * (the processes of one host, e.g. a fresh {@code mktemp -d} handed to all of them): round {@code k}
 * of rank {@code r} is the file {@code round-k.rank-r}, written to a temporary name and renamed, so a
 * reader sees all of it or nothing. A round waits for the other ranks' files until its deadline
 * ({@code timeout} from the call) and then throws {@link ExchangeTimeoutException} naming the ranks
 * whose files are missing. Use a new, empty directory for every group: files of an earlier run would
 * be read as this run's.
 *
 * <p>After a round completes, this rank's file of the previous round is deleted: every rank has
 * published the current round, so every rank has finished reading the previous one. The last round's
 * files stay; remove the directory when the group is done.
 *
 * <p>Threading: one round at a time; the rounds of one instance are serialised.
 */
public final class FileExchange implements SymmetricHeap.Exchange {
    private static final long MAX_POLL_NANOS = 5_000_000;

    private final Path dir;
    private final int rank;
    private final int worldSize;
    private final Duration timeout;
    private int round;

    public FileExchange(Path dir, int rank, int worldSize, Duration timeout) {
        if (worldSize < 1) throw new IllegalArgumentException("world size must be at least 1, got " + worldSize);
        if (rank < 0 || rank >= worldSize) {
            throw new IllegalArgumentException("rank " + rank + " is outside the group of " + worldSize + " ranks");
        }
        if (timeout.isNegative() || timeout.isZero()) throw new IllegalArgumentException("timeout must be positive, got " + timeout);
        if (!Files.isDirectory(dir)) {
            throw new IllegalArgumentException("exchange directory " + dir + " does not exist or is not a directory; create it"
                    + " once (e.g. mktemp -d) and give the same path to every rank");
        }
        this.dir = dir;
        this.rank = rank;
        this.worldSize = worldSize;
        this.timeout = timeout;
    }

    public Path directory() { return dir; }

    /** The rounds completed or started so far. */
    public synchronized int rounds() { return round; }

    static String fileName(int round, int rank) { return String.format("round-%06d.rank-%d", round, rank); }

    @Override
    public synchronized byte[][] allGather(byte[] mine) {
        int k = round++;
        Deadline deadline = Deadline.after(timeout);
        publish(k, mine);
        byte[][] all = new byte[worldSize][];
        long pollNanos = 100_000;
        while (true) {
            List<Integer> missing = new ArrayList<>();
            for (int q = 0; q < worldSize; q++) {
                if (all[q] == null) {
                    all[q] = read(k, q);
                    if (all[q] == null) missing.add(q);
                }
            }
            if (missing.isEmpty()) break;
            if (deadline.expired()) throw timedOut(k, missing);
            sleepNanos(Math.min(pollNanos, Math.max(1, deadline.remainingNanos())));
            pollNanos = Math.min(MAX_POLL_NANOS, pollNanos * 2);
        }
        if (k > 0) {
            try {
                Files.deleteIfExists(dir.resolve(fileName(k - 1, rank)));
            } catch (IOException e) {
                // Only tidiness: a leftover file of a finished round is never read again.
            }
        }
        return all;
    }

    private ExchangeTimeoutException timedOut(int k, List<Integer> missing) {
        List<String> files = missing.stream().map(q -> fileName(k, q)).toList();
        return new ExchangeTimeoutException("rank " + rank + ": exchange round " + k + " in " + dir + " timed out after "
                + timeout.toMillis() + " ms: " + (missing.size() == 1 ? "rank " + missing.get(0) + " has" : "ranks " + missing + " have")
                + " not published (missing " + String.join(", ", files) + "). Check that "
                + (missing.size() == 1 ? "that process is alive and was" : "those processes are alive and were") + " started with the same"
                + " directory and world size (" + worldSize + "), and that every rank makes the same calls in the same order.",
                missing);
    }

    private void publish(int k, byte[] bytes) {
        Path target = dir.resolve(fileName(k, rank));
        Path tmp = dir.resolve("." + fileName(k, rank) + ".tmp");
        try {
            Files.write(tmp, bytes);
            Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new UncheckedIOException("rank " + rank + " cannot publish exchange round " + k + " as " + target
                    + ": is " + dir + " writable by every rank?", e);
        }
    }

    /** Rank {@code q}'s bytes of round {@code k}, or null when not published yet. */
    private byte[] read(int k, int q) {
        Path p = dir.resolve(fileName(k, q));
        try {
            return Files.readAllBytes(p);
        } catch (NoSuchFileException e) {
            return null;
        } catch (IOException e) {
            throw new UncheckedIOException("rank " + rank + " cannot read " + p + " (exchange round " + k + " of rank " + q + ")", e);
        }
    }

    private static void sleepNanos(long nanos) {
        try {
            Thread.sleep(Duration.ofNanos(nanos));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for an exchange round", e);
        }
    }

    @Override
    public String toString() { return "FileExchange(" + dir + ", rank " + rank + "/" + worldSize + ", round " + round + ")"; }
}
