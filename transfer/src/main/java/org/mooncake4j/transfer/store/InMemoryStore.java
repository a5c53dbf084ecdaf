package org.mooncake4j.transfer.store;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;

/**
 * A store inside one process: the state behind the embedded store's server, and a store for
 * single-process use. Thread-safe (one monitor; waiters sleep on it).
 */
public final class InMemoryStore implements MetadataStore {
    private final TreeMap<String, byte[]> map = new TreeMap<>();
    private final String uri;

    public InMemoryStore() { this("memory:"); }

    public InMemoryStore(String uri) { this.uri = uri; }

    @Override public String uri() { return uri; }

    @Override
    public synchronized Optional<byte[]> get(String key) {
        byte[] v = map.get(key);
        return Optional.ofNullable(v == null ? null : v.clone());
    }

    @Override
    public synchronized void set(String key, byte[] value) {
        map.put(key, value.clone());
        notifyAll();
    }

    @Override
    public synchronized boolean compareAndSet(String key, byte[] expected, byte[] value) {
        byte[] cur = map.get(key);
        if (expected == null ? cur != null : cur == null || !Arrays.equals(cur, expected)) return false;
        map.put(key, value.clone());
        notifyAll();
        return true;
    }

    @Override
    public synchronized long add(String key, long delta) {
        byte[] cur = map.get(key);
        long v = (cur == null ? 0 : Long.parseLong(new String(cur, java.nio.charset.StandardCharsets.UTF_8))) + delta;
        map.put(key, Long.toString(v).getBytes(java.nio.charset.StandardCharsets.UTF_8));
        notifyAll();
        return v;
    }

    @Override
    public synchronized boolean delete(String key) {
        boolean had = map.remove(key) != null;
        if (had) notifyAll();
        return had;
    }

    @Override
    public synchronized List<String> keys(String prefix) {
        List<String> out = new ArrayList<>();
        for (String k : map.tailMap(prefix, true).keySet()) {
            if (!k.startsWith(prefix)) break;
            out.add(k);
        }
        return out;
    }

    @Override
    public synchronized Map<String, byte[]> waitFor(List<String> keys, Deadline deadline) {
        while (true) {
            Map<String, byte[]> out = new LinkedHashMap<>();
            List<String> missing = new ArrayList<>();
            for (String k : keys) {
                byte[] v = map.get(k);
                if (v == null) missing.add(k); else out.put(k, v.clone());
            }
            if (missing.isEmpty()) return out;
            if (!sleep(deadline)) {
                throw new TimeoutException("Timed out waiting for store keys " + missing + " in " + uri
                        + ": the processes that publish them have not started or have failed; check that every rank uses the same store and world size.");
            }
        }
    }

    @Override
    public synchronized Optional<byte[]> awaitChange(String key, byte[] current, Deadline deadline) {
        while (true) {
            byte[] v = map.get(key);
            boolean same = current == null ? v == null : v != null && Arrays.equals(v, current);
            if (!same || !sleep(deadline)) return Optional.ofNullable(v == null ? null : v.clone());
        }
    }

    /** Waits on the monitor until notified or the deadline; false when the deadline has passed. */
    private boolean sleep(Deadline deadline) {
        long left = deadline.remainingMillis();
        if (left == 0) return false;
        try {
            wait(Math.min(left, 1000));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new StoreException("interrupted while waiting on " + uri, e);
        }
        return true;
    }

    /** A copy of every entry (for snapshots and tests). */
    public synchronized Map<String, byte[]> snapshot() { return new HashMap<>(map); }

    @Override public void close() {}
}
