package org.mooncake4j.pg.gpu;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.cuda.ExchangeTimeoutException;
import org.mooncake4j.cuda.SymmetricHeap;
import org.mooncake4j.transfer.store.MetadataStore;

/**
 * A {@link SymmetricHeap.Exchange} over a group's metadata store: round {@code k} publishes this
 * rank's bytes under {@code prefix/k/rank} and waits, with a deadline, for the other ranks' keys of the
 * same round. When the deadline passes it throws {@link ExchangeTimeoutException} naming the ranks that
 * did not publish. Once round {@code k + 1} is complete every rank has read round {@code k}, so this
 * rank then deletes its round-{@code k} key: the store holds at most two rounds per rank.
 *
 * <p>{@code ranks[i]} is the group rank behind exchange index {@code i} (a heap over the surviving
 * members of a group indexes them 0..n-1 but names them by group rank in errors and keys).
 */
public final class StoreExchange implements SymmetricHeap.Exchange {
    private final MetadataStore store;
    private final String prefix;
    private final int index;
    private final int[] ranks;
    private final Duration timeout;
    private int round;

    /** An exchange among group ranks {@code ranks} (this process is {@code ranks[index]}). */
    public StoreExchange(MetadataStore store, String prefix, int index, int[] ranks, Duration timeout) {
        if (store == null) throw new IllegalArgumentException("store is null");
        if (prefix == null || prefix.isBlank()) throw new IllegalArgumentException("the key prefix must not be blank");
        if (ranks == null || ranks.length == 0) throw new IllegalArgumentException("ranks must not be empty");
        if (index < 0 || index >= ranks.length) {
            throw new IllegalArgumentException("index " + index + " is out of range [0, " + ranks.length + ")");
        }
        if (timeout == null || timeout.isNegative() || timeout.isZero()) throw new IllegalArgumentException("timeout must be positive, got " + timeout);
        this.store = store;
        this.prefix = prefix.endsWith("/") ? prefix.substring(0, prefix.length() - 1) : prefix;
        this.index = index;
        this.ranks = ranks.clone();
        this.timeout = timeout;
    }

    /** An exchange among ranks 0..worldSize-1. */
    public static StoreExchange ofWorld(MetadataStore store, String prefix, int rank, int worldSize, Duration timeout) {
        int[] all = new int[worldSize];
        for (int i = 0; i < worldSize; i++) all[i] = i;
        return new StoreExchange(store, prefix, rank, all, timeout);
    }

    private String key(int r, int i) { return prefix + "/" + r + "/" + ranks[i]; }

    @Override
    public synchronized byte[][] allGather(byte[] mine) {
        if (mine == null) throw new IllegalArgumentException("the bytes to publish are null");
        int r = round++;
        store.set(key(r, index), mine);
        List<String> keys = new ArrayList<>(ranks.length);
        for (int i = 0; i < ranks.length; i++) keys.add(key(r, i));
        Map<String, byte[]> got;
        try {
            got = store.waitFor(keys, Deadline.after(timeout));
        } catch (TimeoutException e) {
            List<Integer> missing = new ArrayList<>();
            for (int i = 0; i < ranks.length; i++) {
                if (store.get(keys.get(i)).isEmpty()) missing.add(ranks[i]);
            }
            throw new ExchangeTimeoutException("rank " + ranks[index] + " waited " + timeout.toMillis() + " ms for the device-buffer handles"
                    + " of ranks " + missing + " (round " + r + " under '" + prefix + "' in store " + store.uri() + "); they did not publish."
                    + " Check that every rank creates the same GPU buffer at the same point, and that no rank died or hangs.", missing);
        }
        byte[][] out = new byte[ranks.length][];
        for (int i = 0; i < ranks.length; i++) out[i] = got.get(keys.get(i));
        if (r > 0) store.delete(key(r - 1, index));
        return out;
    }

    /** Deletes this rank's keys of the last round (call after the heap is built on every rank, or when giving up). */
    public synchronized void forgetLastRound() {
        if (round > 0) store.delete(key(round - 1, index));
    }

    @Override
    public String toString() { return "StoreExchange(" + prefix + ", rank " + ranks[index] + " of " + ranks.length + ", round " + round + ")"; }
}
