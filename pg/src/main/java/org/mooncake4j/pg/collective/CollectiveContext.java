package org.mooncake4j.pg.collective;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.pg.CollectiveMismatchException;
import org.mooncake4j.pg.membership.FailureAgreement;

/**
 * The per-group state one collective runs with: the lanes, the participating ranks, the operation's
 * identity (epoch, sequence number, kind) and deadline, a scratch buffer for reductions, and reusable
 * per-peer piece descriptors for {@link #exchange()}.
 *
 * <p>Owned by the group's operation thread: one collective at a time uses it, so it is not
 * thread-safe and allocates nothing per operation.
 */
public final class CollectiveContext implements AutoCloseable {
    final Channels ch;
    final int rank;
    final long payload;
    final MemorySegment scratch;
    final MemorySegment[] sendSeg, recvSeg;
    final long[] sendOff, sendLen, recvOff, recvLen;
    final boolean[] sendOn, recvOn;
    /** Sources of one reduction, in member order (reused). */
    final MemorySegment[] redSrc;
    final long[] redOff;
    /** Participating ranks in rank order (the agreed active mask when the operation started). */
    int[] members = new int[0];
    long epoch;
    long opSeq;
    OpCode op;
    Deadline deadline = Deadline.NEVER;
    /** Where this rank is in the current operation, for a failure report. */
    FailureAgreement.Phase phase = FailureAgreement.Phase.IDLE;
    final Backup backup;
    /** Large all-reduces over registered memory (null when the group has no {@link SharedMemory}). */
    final RegisteredAllReduce registered;
    private final SyncFailureHandler onSyncFailure;

    /**
     * Called when the sync step fails (a member died or the group began a recovery while this rank
     * held its complete result). It runs the agreement and returns normally when the decision commits
     * this operation, or throws to make the group redo it.
     */
    public interface SyncFailureHandler {
        void handle(CollectiveContext c, Channels.WaitFailure failure);
    }

    public CollectiveContext(Channels ch, Backup backup, SyncFailureHandler onSyncFailure) { this(ch, backup, onSyncFailure, null); }

    /** @param shared this process's registered memory, read in place by large all-reduces (may be null) */
    public CollectiveContext(Channels ch, Backup backup, SyncFailureHandler onSyncFailure, SharedMemory shared) {
        this.ch = ch;
        this.backup = backup;
        this.onSyncFailure = onSyncFailure;
        this.rank = ch.rank();
        this.payload = ch.layout().payloadBytes();
        this.scratch = Arena.ofAuto().allocate(payload, 64);
        int n = ch.layout().slots();
        sendSeg = new MemorySegment[n];
        recvSeg = new MemorySegment[n];
        sendOff = new long[n];
        sendLen = new long[n];
        recvOff = new long[n];
        recvLen = new long[n];
        sendOn = new boolean[n];
        recvOn = new boolean[n];
        redSrc = new MemorySegment[n];
        redOff = new long[n];
        registered = shared == null ? null : new RegisteredAllReduce(this, shared, n);
    }

    /** Releases the registered-memory scratch and stripe threads. */
    @Override
    public void close() {
        if (registered != null) registered.close();
    }

    /** Starts an operation: clears the piece tables. */
    public void begin(OpCode op, long epoch, long opSeq, int[] members, Deadline deadline) {
        this.op = op;
        this.epoch = epoch;
        this.opSeq = opSeq;
        this.members = members;
        this.deadline = deadline;
        this.phase = FailureAgreement.Phase.DATA;
        backup.clear();
        java.util.Arrays.fill(sendOn, false);
        java.util.Arrays.fill(recvOn, false);
    }

    public Channels channels() { return ch; }

    public FailureAgreement.Phase phase() { return phase; }

    public long opSeq() { return opSeq; }

    /** The epoch of the membership this operation runs over. */
    public long epoch() { return epoch; }

    /** Where an in-place operation saves its input for a redo (reset at the start of every attempt). */
    public Backup backup() { return backup; }

    /** The deadline of the current attempt. */
    public Deadline deadline() { return deadline; }

    /**
     * The sync step that ends every collective: this rank holds its complete result; it tells every
     * member so and waits until every member says the same. Returning only after that is what lets
     * the survivors of a failure decide the operation's outcome consistently. An algorithm may call it
     * itself before writing its result into the caller's buffer (so a redo finds the input intact);
     * otherwise the group calls it after the algorithm returns. Idempotent per operation.
     */
    public void sync() {
        if (phase == FailureAgreement.Phase.SYNC) return;
        phase = FailureAgreement.Phase.SYNC;
        try {
            for (int p : members) if (p != rank) ch.signalSync(p, opSeq, deadline);
            for (int p : members) if (p != rank) ch.awaitSync(p, opSeq, deadline);
        } catch (Channels.WaitFailure f) {
            onSyncFailure.handle(this, f);
        }
    }

    /**
     * The operation's device kernel ended with its own sync step among all members (every rank held
     * its complete result): the host sync step is not needed, and {@link #sync()} returns at once.
     */
    public void syncedOnDevice() { phase = FailureAgreement.Phase.SYNC; }

    /**
     * The operation's device kernel completed this rank's result but timed out in its own sync step:
     * as a failure of {@link #sync()}, the agreement decides whether the result stands (this returns)
     * or the operation is redone (this throws {@code failure}).
     */
    public void syncFailedOnDevice(Channels.WaitFailure failure) {
        phase = FailureAgreement.Phase.SYNC;
        onSyncFailure.handle(this, failure);
    }

    public int[] members() { return members; }

    public int size() { return members.length; }

    /** This rank's position among the members. */
    public int position() { return positionOf(rank); }

    public int positionOf(int r) {
        for (int i = 0; i < members.length; i++) if (members[i] == r) return i;
        throw new IllegalArgumentException("rank " + r + " is not among the active ranks " + java.util.Arrays.toString(members));
    }

    void sendPiece(int dst, MemorySegment seg, long off, long len) {
        sendOn[dst] = true;
        sendSeg[dst] = seg;
        sendOff[dst] = off;
        sendLen[dst] = len;
    }

    void recvPiece(int src, MemorySegment seg, long off, long len) {
        recvOn[src] = true;
        recvSeg[src] = seg;
        recvOff[src] = off;
        recvLen[src] = len;
    }

    static long chunks(long len, long payload) { return Math.max(1, (len + payload - 1) / payload); }

    /** Sends chunk {@code k} (0-based) of {@code [off, off+len)} to {@code dst}. */
    void sendChunk(int dst, MemorySegment seg, long off, long len, long k) {
        long start = k * payload;
        int n = (int) Math.max(0, Math.min(payload, len - start));
        ch.put(GroupLayout.LANE_COLL, dst, epoch, opSeq, op.ordinal(), seg, off + start, n, len, start, deadline);
    }

    /**
     * Takes the next chunk from {@code src}, checks it belongs to this operation and carries
     * {@code expectedBytes}, and returns its payload. Release it with {@link #done(int)}.
     */
    MemorySegment recvChunk(int src, long expectedBytes) {
        MemorySegment slot = ch.take(GroupLayout.LANE_COLL, src, deadline);
        long e = ChunkHeader.epoch(slot), s = ChunkHeader.opSeq(slot);
        int code = ChunkHeader.opcode(slot), bytes = ChunkHeader.payload(slot);
        if (s != opSeq || code != op.ordinal() || e != epoch) {
            String theirs = code >= 0 && code < OpCode.values().length ? OpCode.values()[code].torchName() : "opcode " + code;
            throw new CollectiveMismatchException("Collective mismatch: rank " + src + " sent data for " + theirs + " #" + s
                    + " (epoch " + e + ") while rank " + rank + " runs " + op.torchName() + " #" + opSeq + " (epoch " + epoch
                    + "). Every rank of a group must call the same collectives in the same order.");
        }
        if (bytes != expectedBytes) {
            throw new CollectiveMismatchException("Size mismatch in " + op.torchName() + " #" + opSeq + ": rank " + src + " sent "
                    + ChunkHeader.total(slot) + " bytes in total (" + bytes + " in this chunk) but rank " + rank + " expected a chunk of "
                    + expectedBytes + ". Every rank must pass tensors of matching shapes and dtypes (and matching split sizes).");
        }
        return slot.asSlice(GroupLayout.HEADER_BYTES, bytes);
    }

    long chunkBytes(long len, long k) { return Math.max(0, Math.min(payload, len - k * payload)); }

    void done(int src) { ch.release(GroupLayout.LANE_COLL, src, deadline); }

    /**
     * Runs the pieces set with {@link #sendPiece}/{@link #recvPiece} as a pipeline of steps: at step
     * k every rank sends chunk k of each of its pieces, then receives chunk k of each incoming piece.
     * With two banks per lane no rank ever waits on a peer that waits on it.
     */
    void exchange() {
        long steps = 0;
        for (int p : members) {
            if (sendOn[p]) steps = Math.max(steps, chunks(sendLen[p], payload));
            if (recvOn[p]) steps = Math.max(steps, chunks(recvLen[p], payload));
        }
        for (long k = 0; k < steps; k++) {
            for (int p : members) {
                if (sendOn[p] && k < chunks(sendLen[p], payload)) sendChunk(p, sendSeg[p], sendOff[p], sendLen[p], k);
            }
            for (int p : members) {
                if (recvOn[p] && k < chunks(recvLen[p], payload)) {
                    long n = chunkBytes(recvLen[p], k);
                    MemorySegment data = recvChunk(p, n);
                    if (n > 0) MemorySegment.copy(data, 0, recvSeg[p], recvOff[p] + k * payload, n);
                    done(p);
                }
            }
        }
    }
}
