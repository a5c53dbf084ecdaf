package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.TimeoutException;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.MetadataStore;

/**
 * The EP segments of one membership: this rank's registered segment and a link to every member's.
 * Built collectively: each rank registers a fresh segment, publishes its name under
 * {@code mooncake4j/ep/<group>/e<epoch>/g<generation>/r<rank>} and opens the members'. The
 * generation counts the exchanges this process made on the group in that epoch, so a buffer closed
 * and created again (every rank in the same order) never picks up a previous buffer's name, and a
 * replacement process building its first buffer in a recovered epoch meets the healthy ranks'
 * {@link EpBuffer#updateEpMember()}, which is their first exchange in that epoch.
 *
 * <p>Owned by one {@link EpBuffer}; replaced as a whole by {@code updateEpMember()}.
 */
final class EpSegments implements AutoCloseable {
    private static final Map<String, AtomicInteger> GENERATIONS = new ConcurrentHashMap<>();

    final int rank;
    final int numRanks;
    final long epoch;
    final LocalSegment local;
    final MemorySegment memory;
    /** Index = rank; null for ranks that are not members of the group's current epoch. */
    final SegmentLink[] links;
    /** Index = rank: true once that peer's engine is known to be gone. */
    final BooleanSupplier[] gone;
    private final TransferEngine engine;
    private final MetadataStore store;
    private final String key;
    private final String[] peerNames;

    private EpSegments(ProcessGroup group, LocalSegment local, String key, SegmentLink[] links, String[] peerNames) {
        this.rank = group.rank();
        this.numRanks = links.length;
        this.epoch = group.epoch();
        this.local = local;
        this.memory = local.memory();
        this.links = links;
        this.engine = group.transferEngine();
        this.store = group.store();
        this.key = key;
        this.peerNames = peerNames;
        this.gone = new BooleanSupplier[links.length];
        for (int p = 0; p < links.length; p++) {
            SegmentLink l = links[p];
            gone[p] = l == null ? () -> true : () -> !l.alive();
        }
    }

    /** Registers, exchanges and opens; ends with a barrier so every member has mapped every segment. */
    static EpSegments exchange(ProcessGroup group, long bytes) {
        TransferEngine engine = group.transferEngine();
        MetadataStore store = group.store();
        int rank = group.rank();
        int numRanks = group.worldSize();
        long epoch = group.epoch();
        String base = "mooncake4j/ep/" + group.name() + "/e" + epoch + "/g"
                + GENERATIONS.computeIfAbsent(group.name() + "/" + epoch, k -> new AtomicInteger()).getAndIncrement() + "/r";
        String name = "ep." + group.name().replace('/', '.') + ".r" + rank + ".e" + epoch + "."
                + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 1);
        LocalSegment seg = engine.registerSegment(name, bytes);
        String[] peerNames = new String[numRanks];
        SegmentLink[] links = new SegmentLink[numRanks];
        try {
            store.set(base + rank, name.getBytes(StandardCharsets.UTF_8));
            int[] active = group.activeRanks().toIntArray();
            Deadline deadline = Deadline.after(group.timeout());
            for (int p = 0; p < numRanks; p++) {
                if (active[p] == 0) continue;
                if (p == rank) {
                    links[p] = SegmentLink.local(seg.memory());
                    continue;
                }
                Map<String, byte[]> found;
                try {
                    found = store.waitFor(List.of(base + p), deadline);
                } catch (TimeoutException e) {
                    throw new IllegalStateException("EpBuffer on rank " + rank + ": rank " + p + " did not publish its EP segment within "
                            + group.timeout().toMillis() + " ms. Every active rank of group " + group.name()
                            + " must create the EpBuffer (or call updateEpMember()) at the same point; check rank " + p + "'s log.", e);
                }
                peerNames[p] = new String(found.get(base + p), StandardCharsets.UTF_8);
                RemoteSegment peer = engine.openSegment(peerNames[p], deadline);
                links[p] = SegmentLink.of(peer);
            }
            EpSegments s = new EpSegments(group, seg, base + rank, links, peerNames);
            group.barrier();
            seg.unlinkFile();
            return s;
        } catch (RuntimeException e) {
            for (String n : peerNames) if (n != null) engine.closeSegment(n);
            store.delete(base + rank);
            seg.close();
            throw e;
        }
    }

    long size() { return memory.byteSize(); }

    /** Unregisters this rank's segment, forgets the peers' and removes the published name. */
    @Override
    public void close() {
        for (String n : peerNames) if (n != null) engine.closeSegment(n);
        local.close();
        try {
            store.delete(key);
        } catch (RuntimeException ignored) {
            // the store is gone with the job; the name only ever pointed at a now-closed segment
        }
    }
}
