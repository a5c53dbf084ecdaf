package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.function.BooleanSupplier;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.pg.PeerFailureException;
import org.mooncake4j.transfer.RemoteSegment;

/**
 * Pairwise, double-buffered, flow-controlled chunk lanes between this rank and every peer: the one
 * mechanism every collective and P2P operation is built on. It only writes into peers' segments and
 * only waits on words in this rank's own segment, so the same code runs over shm (a write is a
 * memcpy into the peer's mapping) and over tcp (a write is a frame the peer's engine applies).
 *
 * <p>Sending chunk {@code k} (1-based) to {@code d} on a lane uses bank {@code (k-1) % 2} of d's
 * inbox for this rank; it first waits until d has consumed chunk {@code k-2} (its ack word in this
 * rank's segment), then writes header and payload, then publishes {@code k} in d's data word.
 * Receiving waits for the data word, hands out a view of the slot, and acknowledges on
 * {@link #release}.
 *
 * <p>Threading: for one lane, sends to one peer must come from one thread at a time, and receives
 * from one peer likewise (collectives run on the group's operation thread; P2P uses one thread per
 * peer and direction). Different lanes and peers may run concurrently.
 */
public final class Channels {
    private final GroupLayout layout;
    private final MemorySegment local;
    private final int rank;
    private final RemoteSegment[] peers;
    private final long[][] sent;
    private final long[][] received;
    private final MemorySegment[][] headerScratch;
    private final MemorySegment[][][] slots;
    private final BooleanSupplier[] peerGone;
    private final MemorySegment[] descViews;
    private final BooleanSupplier[] descOrChunk;
    private final BooleanSupplier interrupted;
    private volatile boolean aborted;

    /**
     * @param local  this rank's segment for the group, laid out as {@code layout}
     * @param peers  every rank's segment (index = rank); null for this rank and absent ranks
     * @param interrupted  polled while waiting: true ends every wait (a membership change began)
     */
    public Channels(GroupLayout layout, MemorySegment local, int rank, RemoteSegment[] peers, BooleanSupplier interrupted) {
        this.layout = layout;
        this.local = local;
        this.rank = rank;
        this.peers = peers.clone();
        this.interrupted = interrupted;
        int n = layout.slots();
        sent = new long[2][n];
        received = new long[2][n];
        headerScratch = new MemorySegment[2][n];
        slots = new MemorySegment[2][n][2];
        peerGone = new BooleanSupplier[n];
        descViews = new MemorySegment[n];
        descOrChunk = new BooleanSupplier[n];
        for (int p = 0; p < n; p++) descViews[p] = local.asSlice(layout.descBody(p), GroupLayout.LINE);
        java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofAuto();
        for (int lane = 0; lane < 2; lane++) {
            for (int p = 0; p < n; p++) {
                headerScratch[lane][p] = arena.allocate(GroupLayout.HEADER_BYTES, 64);
                for (int b = 0; b < 2; b++) slots[lane][p][b] = local.asSlice(layout.inbox(lane, p, b), layout.slotBytes());
            }
        }
        for (int p = 0; p < n; p++) {
            final int peer = p;
            peerGone[p] = () -> aborted || this.interrupted.getAsBoolean() || this.peers[peer] == null || !this.peers[peer].alive();
            descOrChunk[p] = () -> peerGone[peer].getAsBoolean() || chunkWaiting(peer);
        }
    }

    public GroupLayout layout() { return layout; }

    public int rank() { return rank; }

    /** Makes every wait return at once (the group is closing or has failed). */
    public void abort() { aborted = true; }

    public boolean aborted() { return aborted; }

    public boolean peerAlive(int p) { return peers[p] != null && peers[p].alive(); }

    /** Ranks whose segments are known dead (connection closed), among {@code candidates}. */
    public int[] deadAmong(int[] candidates) {
        int[] dead = new int[candidates.length];
        int n = 0;
        for (int p : candidates) if (p != rank && !peerAlive(p)) dead[n++] = p;
        return Arrays.copyOf(dead, n);
    }

    /**
     * Sends one chunk of {@code len <= payloadBytes} bytes from {@code src[srcOffset..]} to {@code dst}.
     *
     * @throws WaitFailure when {@code dst} does not free the bank before the deadline or is gone
     */
    public void put(int lane, int dst, long epoch, long opSeq, int opcode, MemorySegment src, long srcOffset, int len,
                    long total, long offset, Deadline deadline) {
        RemoteSegment peer = peers[dst];
        if (peer == null) throw new WaitFailure(dst, false);
        long seq = sent[lane][dst] + 1;
        if (seq > 2 && !Waiter.awaitAtLeast(local, layout.ackFlag(lane, dst), seq - 2, deadline, peerGone[dst])) {
            throw new WaitFailure(dst, !peerGone[dst].getAsBoolean());
        }
        int bank = (int) ((seq - 1) & 1);
        long slot = layout.inbox(lane, rank, bank);
        MemorySegment h = headerScratch[lane][dst];
        ChunkHeader.write(h, epoch, opSeq, opcode, len, total, offset);
        try {
            peer.write(slot, h, 0, GroupLayout.HEADER_BYTES, deadline);
            if (len > 0) peer.write(slot + GroupLayout.HEADER_BYTES, src, srcOffset, len, deadline);
            peer.publish(layout.dataFlag(lane, rank), seq, deadline);
        } catch (RuntimeException e) {
            throw new WaitFailure(dst, false, e);
        }
        sent[lane][dst] = seq;
    }

    /**
     * Waits for the next chunk from {@code src} and returns its slot (header, then payload). The slot
     * stays valid until {@link #release(int, int)}.
     */
    public MemorySegment take(int lane, int src, Deadline deadline) {
        long seq = received[lane][src] + 1;
        if (!reached(layout.dataFlag(lane, src), seq, deadline, peerGone[src])) throw new WaitFailure(src, !peerGone[src].getAsBoolean());
        received[lane][src] = seq;
        return slots[lane][src][(int) ((seq - 1) & 1)];
    }

    /** Returns the bank of the last chunk taken from {@code src} to it. */
    public void release(int lane, int src, Deadline deadline) {
        publish(src, layout.ackFlag(lane, rank), received[lane][src], null, deadline);
    }

    /** Tells {@code dst} that this rank holds the complete result of operation {@code opSeq}. */
    public void signalSync(int dst, long opSeq, Deadline deadline) {
        publish(dst, layout.syncFlag(rank), opSeq, null, deadline);
    }

    /** Waits until {@code src} holds the complete result of operation {@code opSeq}. */
    public void awaitSync(int src, long opSeq, Deadline deadline) {
        if (!reached(layout.syncFlag(src), opSeq, deadline, peerGone[src])) throw new WaitFailure(src, !peerGone[src].getAsBoolean());
    }

    /**
     * Writes {@code body} (at most one 64-byte line; null for none) into {@code dst}'s description
     * line for this rank, then publishes {@code value} in its description word.
     */
    public void describe(int dst, long value, MemorySegment body, Deadline deadline) {
        publish(dst, layout.descFlag(rank), value, body, deadline);
    }

    /**
     * Waits until {@code src}'s description word reaches {@code value} and returns its description
     * line (a view into this rank's segment). Returns null, without waiting further, when {@code src}
     * puts a collective chunk into this rank's inbox instead: it runs another algorithm (the ranks'
     * sizes differ); {@link #take} then returns that chunk.
     */
    public MemorySegment awaitDescription(int src, long value, Deadline deadline) {
        if (reached(layout.descFlag(src), value, deadline, descOrChunk[src])) return descViews[src];
        if (chunkWaiting(src)) return null;
        throw new WaitFailure(src, !peerGone[src].getAsBoolean());
    }

    private boolean chunkWaiting(int src) {
        return Waiter.load(local, layout.dataFlag(GroupLayout.LANE_COLL, src)) > received[GroupLayout.LANE_COLL][src];
    }

    /**
     * Waits until this rank's word at {@code offset} reaches {@code target}. A word that got there
     * just before its writer died or {@code stop} fired still counts (the data it announces is good).
     */
    private boolean reached(long offset, long target, Deadline deadline, BooleanSupplier stop) {
        return Waiter.awaitAtLeast(local, offset, target, deadline, stop) || Waiter.load(local, offset) - target >= 0;
    }

    /** Writes {@code body} (if any) at this rank's description line in {@code dst}, then publishes {@code value} at {@code offset} there. */
    private void publish(int dst, long offset, long value, MemorySegment body, Deadline deadline) {
        try {
            if (body != null) peers[dst].write(layout.descBody(rank), body, 0, body.byteSize(), deadline);
            peers[dst].publish(offset, value, deadline);
        } catch (RuntimeException e) {
            throw new WaitFailure(dst, false, e);
        }
    }

    /** Peer {@code p}'s segment for this group mapped into this process (shm), or null (tcp, or not a member). */
    public MemorySegment peerMapping(int p) { return peers[p] == null ? null : peers[p].mapping(); }

    /** The engine that registered peer {@code p}'s segment. */
    public String peerEngine(int p) { return peers[p].engineName(); }

    /** A wait on one peer ended without its chunk or credit: it is gone, or the deadline passed. */
    public static final class WaitFailure extends RuntimeException {
        private final int peer;
        private final boolean timedOut;

        public WaitFailure(int peer, boolean timedOut) { this(peer, timedOut, null); }

        public WaitFailure(int peer, boolean timedOut, Throwable cause) {
            super(timedOut ? "timed out waiting for rank " + peer : "rank " + peer + " is gone", cause, false, false);
            this.peer = peer;
            this.timedOut = timedOut;
        }

        public int peer() { return peer; }

        public boolean timedOut() { return timedOut; }
    }

    /** Converts a wait failure into the user-facing error for the operation named. */
    public PeerFailureException failure(WaitFailure f, String what, long opSeq, int[] participants, long timeoutMillis) {
        int[] dead = deadAmong(participants);
        java.util.TreeSet<Integer> ranks = new java.util.TreeSet<>();
        ranks.add(f.peer());
        for (int d : dead) ranks.add(d);
        int[] r = ranks.stream().mapToInt(Integer::intValue).toArray();
        String msg;
        if (aborted) {
            msg = what + " #" + opSeq + " on rank " + rank + " was aborted: the process group is closing or failed";
        } else if (f.timedOut()) {
            msg = what + " #" + opSeq + " on rank " + rank + " timed out after " + timeoutMillis + " ms waiting for rank(s) "
                    + java.util.Arrays.toString(r) + ": they are slow, hung, stopped or unreachable, or did not call the same operation."
                    + " Check their logs; raise the timeout if they are only slow.";
        } else {
            msg = what + " #" + opSeq + " on rank " + rank + " failed: rank(s) " + java.util.Arrays.toString(r)
                    + " exited or lost their connection" + (f.getCause() != null ? " (" + f.getCause().getMessage() + ")" : "")
                    + ". Check their logs.";
        }
        return new PeerFailureException(msg, r);
    }
}
