package org.mooncake4j.pg;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.function.BooleanSupplier;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.pg.collective.Backup;
import org.mooncake4j.pg.collective.Channels;
import org.mooncake4j.pg.collective.CollectiveContext;
import org.mooncake4j.pg.collective.GroupLayout;
import org.mooncake4j.pg.collective.PointToPoint;
import org.mooncake4j.pg.collective.SharedMemory;
import org.mooncake4j.pg.membership.GroupState;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.StoreException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The data plane of one group in one membership epoch: this rank's freshly registered segment, the
 * members' segments of the same epoch, and the lanes over them. A membership change builds a new
 * plane and discards the old one, so sequence words start from zero with the new member set, and a
 * fenced rank that wakes up writes only into segments nobody reads any more.
 *
 * <p>Built and closed by the group's operation thread; P2P threads use it while it is current.
 */
final class EpochPlane implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(EpochPlane.class);
    final GroupState state;
    final long epoch;
    final int[] members;
    final LocalSegment segment;
    final Channels channels;
    final CollectiveContext ctx;
    final PointToPoint p2p;
    private final TransferEngine engine;
    private final RemoteSegment[] peers;
    /** Operations started in this epoch. */
    long opSeq;
    /** Whether this rank's segment file is gone from /dev/shm (every member has mapped it). */
    boolean fileUnlinked;

    private EpochPlane(TransferEngine engine, GroupState state, LocalSegment segment, RemoteSegment[] peers, Channels channels, Backup backup,
                       CollectiveContext.SyncFailureHandler onSyncFailure, SharedMemory shared) {
        this.engine = engine;
        this.peers = peers;
        this.state = state;
        this.epoch = state.epoch();
        this.members = state.members();
        this.segment = segment;
        this.channels = channels;
        this.ctx = new CollectiveContext(channels, backup, onSyncFailure, shared);
        this.p2p = new PointToPoint(channels);
    }

    static String memberKey(String prefix, long epoch, int rank) { return prefix + "member/" + epoch + "/" + rank; }

    /**
     * Registers this rank's segment for {@code state}'s epoch, publishes it, and opens every member's.
     *
     * @throws Channels.WaitFailure naming a member whose segment did not appear (or is on a dead
     *                              engine) before the deadline, or when {@code interrupted} fires
     */
    static EpochPlane build(TransferEngine engine, MetadataStore store, String prefix, String segPrefix, int rank,
                            GroupState state, GroupLayout layout, Deadline deadline, BooleanSupplier interrupted,
                            Backup backup, CollectiveContext.SyncFailureHandler onSyncFailure, SharedMemory shared) {
        long epoch = state.epoch();
        String name = segPrefix + ".e" + epoch;
        LocalSegment seg = engine.registerSegment(name, layout.segmentBytes());
        try {
            int[] members = state.members();
            publish(store, memberKey(prefix, epoch, rank), name.getBytes(StandardCharsets.UTF_8), deadline, members, rank);
            RemoteSegment[] peers = new RemoteSegment[state.slots()];
            for (int p : members) {
                if (p == rank) continue;
                String key = memberKey(prefix, epoch, p);
                Map<String, byte[]> found = null;
                while (found == null) {
                    if (interrupted.getAsBoolean()) throw new Channels.WaitFailure(p, false);
                    if (deadline.expired()) throw new Channels.WaitFailure(p, true);
                    try {
                        found = store.waitFor(List.of(key), deadline.min(Deadline.afterMillis(200)));
                    } catch (org.mooncake4j.core.TimeoutException e) {
                        found = null;
                    } catch (StoreException e) {
                        // a store too busy to answer in time (an overloaded host) is waited for like
                        // a missing key, within the same deadline: thrown to the caller it would end
                        // this rank's operation while the other members go on with it
                        LOG.debug("rank {}: waiting for the segment of member {} in epoch {}: {}", rank, p, epoch, e.getMessage());
                        found = null;
                    }
                }
                try {
                    peers[p] = engine.openSegment(new String(found.get(key), StandardCharsets.UTF_8), deadline);
                } catch (RuntimeException e) {
                    throw new Channels.WaitFailure(p, false, e);
                }
                if (!peers[p].alive()) throw new Channels.WaitFailure(p, false);
            }
            return new EpochPlane(engine, state, seg, peers, new Channels(layout, seg.memory(), rank, peers, interrupted), backup, onSyncFailure,
                    shared);
        } catch (RuntimeException e) {
            seg.close();
            throw e;
        }
    }

    /**
     * Sets {@code key}, retrying a store too busy to answer until {@code deadline}; then fails like a
     * member that did not arrive (naming the next member), so the group's agreement decides, instead of
     * ending this rank's operation alone.
     */
    private static void publish(MetadataStore store, String key, byte[] value, Deadline deadline, int[] members, int rank) {
        while (true) {
            try {
                store.set(key, value);
                return;
            } catch (StoreException e) {
                if (deadline.expired()) throw new Channels.WaitFailure(nextMember(members, rank), true, e);
                LOG.debug("rank {}: publishing {}: {}", rank, key, e.getMessage());
                java.util.concurrent.locks.LockSupport.parkNanos(Math.min(50_000_000L, Math.max(0, deadline.remainingNanos())));
            }
        }
    }

    /** The member after {@code rank} in rank order (wrapping), or {@code rank} itself when it is alone. */
    static int nextMember(int[] members, int rank) {
        for (int m : members) if (m > rank) return m;
        for (int m : members) if (m != rank) return m;
        return rank;
    }

    /**
     * Called after an operation's sync step: every member has built this plane, so every same-host
     * member has mapped this rank's segment and its file can go — a kill -9 from now on leaves nothing.
     */
    void unlinkFileOnce() {
        if (fileUnlinked) return;
        segment.unlinkFile();
        fileUnlinked = true;
    }

    /** The segment of member {@code p} in this epoch (null for this rank and non-members). */
    RemoteSegment peer(int p) { return p >= 0 && p < peers.length ? peers[p] : null; }

    /** Ranks among the members whose engines are known dead. */
    int[] deadMembers() { return channels.deadAmong(members); }

    /** Ends this epoch's plane: its waits return, this rank's segment is unregistered, the peers' are unmapped. */
    @Override
    public void close() {
        channels.abort();
        ctx.close();
        segment.close();
        for (RemoteSegment p : peers) if (p != null) engine.closeSegment(p.name());
    }
}
