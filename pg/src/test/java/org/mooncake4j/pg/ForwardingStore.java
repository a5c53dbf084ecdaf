package org.mooncake4j.pg;

import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.store.MetadataStore;

/**
 * A metadata store that passes every call to another one: tests extend it and override the calls
 * whose failure or timing they stage (a store too busy to answer, a watch answer that arrives late).
 */
public abstract class ForwardingStore implements MetadataStore {
    protected final MetadataStore inner;

    protected ForwardingStore(MetadataStore inner) { this.inner = inner; }

    @Override public String uri() { return inner.uri(); }

    @Override public Optional<byte[]> get(String key) { return inner.get(key); }

    @Override public void set(String key, byte[] value) { inner.set(key, value); }

    @Override public boolean compareAndSet(String key, byte[] expected, byte[] value) { return inner.compareAndSet(key, expected, value); }

    @Override public long add(String key, long delta) { return inner.add(key, delta); }

    @Override public boolean delete(String key) { return inner.delete(key); }

    @Override public List<String> keys(String prefix) { return inner.keys(prefix); }

    @Override public Map<String, byte[]> waitFor(List<String> keys, Deadline deadline) { return inner.waitFor(keys, deadline); }

    @Override public Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline) { return inner.awaitChange(key, current, deadline); }

    @Override public void close() { inner.close(); }
}
