package org.mooncake4j.transfer.store;

import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.mooncake4j.core.Deadline;

/**
 * The metadata store: a small consistent key-value store through which engines publish segment
 * descriptors, groups rendezvous, and survivors agree on membership (compare-and-set).
 * Implementations: {@link EmbeddedStore} ({@code tcp://host:port}) and the etcd store
 * ({@code etcd://host:port/prefix}, module mooncake4j-transfer-etcd).
 *
 * <p>Every method that talks to a server fails with {@link StoreException} naming the server and what
 * to check when it cannot be reached; no method blocks past its deadline (the store's operation
 * timeout for methods without one). Implementations are thread-safe.
 */
public interface MetadataStore extends AutoCloseable {
    /** The URI this store was opened with, for messages. */
    String uri();

    Optional<byte[]> get(String key);

    void set(String key, byte[] value);

    /**
     * Atomically replaces the value of {@code key} with {@code value} if its current value equals
     * {@code expected} ({@code null} = the key is absent). Returns whether it did.
     */
    boolean compareAndSet(String key, byte[] expected, byte[] value);

    /** Atomically adds {@code delta} to a counter (absent = 0) and returns the new value. */
    long add(String key, long delta);

    /** Removes {@code key}; returns whether it existed. */
    boolean delete(String key);

    /** Keys starting with {@code prefix}, sorted. */
    List<String> keys(String prefix);

    /**
     * Blocks until every key exists and returns their values, or throws
     * {@link org.mooncake4j.core.TimeoutException} naming the missing keys at the deadline.
     */
    Map<String, byte[]> waitFor(List<String> keys, Deadline deadline);

    /**
     * Blocks until {@code key}'s value differs from {@code current} ({@code null} = absent) or the
     * deadline passes; returns the value then (empty when absent). A watch, for membership changes.
     */
    Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline);

    @Override
    void close();
}
