package org.mooncake4j.ep;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.Arrays;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.pg.PeerFailureException;

/**
 * The CPU data path. Dispatch writes each (token, selected expert) row straight from {@code x} (or, for
 * FP8, from one per-token quantized message) into block (expert, this rank) of the owning rank's
 * staging area, then the per-expert counts, then publishes the dispatch sequence number in that
 * rank's signal word for this source. The receiver waits for each active source's word, and packs the
 * rows of each local expert source by source into recvX. Combine writes each received row of the
 * expert outputs straight into the source rank's combine area at (global expert, token), publishes
 * the combine sequence number to every active rank, and the source sums its tokens' rows the way
 * {@link EpBuffer} documents: per expert rank a partial in slot order, rounded to bf16, the partials
 * added in rank order (the CUDA path's expert ranks form those partials themselves).
 *
 * <p>The staging blocks and count words are single-buffered: a rank may send dispatch n + 1 to a peer
 * only after that peer has read dispatch n. The combine receive guarantees it by waiting for the
 * combine word of every rank it dispatched to, whether or not its tokens selected experts there (a
 * peer publishes its combine word only after its dispatch receive is done).
 *
 * <p>A source that does not publish the current sequence number before the deadline, or whose engine
 * is gone, is set to 0 in activeRanks and treated as having sent nothing. A write that fails (the peer
 * is gone) does the same for the destination. With {@code timeoutUs = -1} no rank is dropped for being
 * late: a peer found gone, or one that has not arrived within the group's timeout (the bound on every
 * wait), fails the call with {@link PeerFailureException} after being marked 0.
 *
 * <p>Allocation: per call only arrays of numRanks flags and the handle's row tables; nothing per token.
 * Scratch memory grows to the largest shape seen and is reused.
 */
final class HostEpPath implements EpDataPath {
    private static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final int HEADER = EpLayout.HEADER_BYTES;
    private static final int BLOCK = EpLayout.SCALE_CHANNELS;

    private final int rank;
    /** The process group's timeout: bounds every write, and every wait when timeoutUs = -1. */
    private final Duration groupTimeout;
    // send-side scratch (dispatch send)
    private int[] sendCounts = new int[0];
    private MemorySegment countScratch = MemorySegment.NULL;
    private MemorySegment message = MemorySegment.NULL;
    // receive-side scratch (combine receive)
    private float[] acc = new float[0], part = new float[0];

    HostEpPath(int rank, Duration groupTimeout) {
        this.rank = rank;
        this.groupTimeout = groupTimeout;
    }

    // ---- dispatch ----------------------------------------------------------------------------

    @Override
    public void dispatchSend(Dispatch op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        EpSegments segs = h.segments;
        int numRanks = lay.numRanks(), local = lay.localExperts(), hidden = lay.hidden(), topK = h.topK;
        MemorySegment active = op.activeRanks().segment();
        boolean[] dest = h.sentTo;
        for (int r = 0; r < numRanks; r++) dest[r] = active.get(INT, 4L * r) != 0 && segs.links[r] != null;
        ensureSendScratch(lay.numExperts(), lay.messageBytes());
        Arrays.fill(sendCounts, 0, lay.numExperts(), 0);
        Deadline wd = Deadline.after(groupTimeout);
        MemorySegment xs = op.x().segment(), idx = op.topkIdx().segment(), msg = message;
        long rowBytes = 2L * hidden, fp8Bytes = hidden + 4L * lay.scaleBlocks();
        for (int t = 0; t < h.numTokens; t++) {
            boolean quantized = false;
            long first = (long) t * topK;
            for (int k = 0; k < topK; k++) {
                long e = idx.get(LONG, (first + k) * 8);
                if (e < 0 || selectedEarlier(idx, first, k, e)) continue;
                int r = (int) (e / local);
                if (!dest[r]) continue;
                long off = lay.stagingRow((int) (e % local), rank, sendCounts[(int) e]++);
                msg.set(INT, 0, t);
                msg.set(INT, 4, k);
                msg.set(LONG, 8, h.seq);
                try {
                    if (h.fp8) {
                        if (!quantized) {
                            quantizeRow(xs, t * rowBytes, hidden, msg, HEADER, HEADER + hidden);
                            quantized = true;
                        }
                        segs.links[r].write(off, msg, 0, HEADER + fp8Bytes, wd);
                    } else {
                        segs.links[r].write(off, msg, 0, HEADER, wd);
                        segs.links[r].write(off + HEADER, xs, t * rowBytes, rowBytes, wd);
                    }
                } catch (RuntimeException ex) {
                    dest[r] = false;
                    lost(op.activeRanks(), op.timeoutUs(), r, "dispatch", h.seq, GONE + " (" + ex.getMessage() + ")");
                }
            }
        }
        for (int r = 0; r < numRanks; r++) {
            if (!dest[r]) continue;
            long from = 4L * r * local;
            for (int j = 0; j < local; j++) countScratch.set(INT, from + 4L * j, sendCounts[r * local + j]);
            try {
                segs.links[r].write(lay.countWord(rank, 0), countScratch, from, 4L * local, wd);
                segs.links[r].publish(EpLayout.dispatchSignal(rank), h.seq, wd);
            } catch (RuntimeException ex) {
                dest[r] = false;
                lost(op.activeRanks(), op.timeoutUs(), r, "dispatch", h.seq, GONE + " (" + ex.getMessage() + ")");
            }
        }
    }

    private static boolean selectedEarlier(MemorySegment idx, long first, int k, long e) {
        for (int q = 0; q < k; q++) if (idx.get(LONG, (first + q) * 8) == e) return true;
        return false;
    }

    @Override
    public void dispatchReceive(Dispatch op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        EpSegments segs = h.segments;
        MemorySegment mem = segs.memory;
        int numRanks = lay.numRanks(), local = lay.localExperts(), maxTokens = lay.maxTokens(), hidden = lay.hidden();
        boolean[] arrived = awaitSources(segs, op.activeRanks(), op.timeoutUs(), h.seq, null, "dispatch");
        int total = 0;
        for (int j = 0; j < local; j++) {
            for (int s = 0; s < numRanks; s++) {
                if (!arrived[s]) continue;
                int c = mem.get(INT, lay.countWord(s, j));
                if (c < 0 || c > maxTokens) {
                    throw new IllegalStateException("dispatch #" + h.seq + " on rank " + rank + ": rank " + s + " reported " + c
                            + " tokens for local expert " + j + ", outside [0, " + maxTokens + "]: the ranks disagree on maxTokensPerRank,"
                            + " numExperts or hidden. Pass the same values on every rank.");
                }
                h.perSource[j * numRanks + s] = c;
                total += c;
            }
        }
        h.rowToken = new int[total];
        h.rowSlot = new int[total];
        long dataBytes = h.fp8 ? hidden : 2L * hidden, scaleBytes = 4L * lay.scaleBlocks();
        int base = 0;
        for (int j = 0; j < local; j++) {
            h.rowBase[j] = base;
            int p = 0;
            for (int s = 0; s < numRanks; s++) {
                int c = h.perSource[j * numRanks + s];
                for (int i = 0; i < c; i++, p++) {
                    long m = lay.stagingRow(j, s, i);
                    long rowSeq = mem.get(LONG, m + 8);
                    if (rowSeq != h.seq) {
                        throw new IllegalStateException("dispatch #" + h.seq + " on rank " + rank + ": row " + i + " from rank " + s
                                + " belongs to dispatch #" + rowSeq + ": the ranks are not calling dispatch and combine in the same order."
                                + " Call them alternately, in the same order, on every rank.");
                    }
                    h.rowToken[base + p] = mem.get(INT, m);
                    h.rowSlot[base + p] = mem.get(INT, m + 4);
                    MemorySegment.copy(mem, m + HEADER, mem, lay.recvRow(j, p, h.fp8), dataBytes);
                    if (h.fp8) MemorySegment.copy(mem, m + HEADER + hidden, mem, lay.scaleRow(j, p), scaleBytes);
                }
            }
            mem.set(INT, lay.recvCount() + 4L * j, p);
            base += p;
        }
        h.rowBase[local] = base;
    }

    /**
     * FP8 e4m3 with one float32 scale per 128 channels: scale = amax / 448 over the block (1 when the
     * block is all zeros), value = e4m3(x / scale), rounded to nearest even and saturating at 448.
     */
    static void quantizeRow(MemorySegment x, long xOffset, int hidden, MemorySegment dst, long dataOffset, long scaleOffset) {
        for (int b = 0, from = 0; from < hidden; b++, from += BLOCK) {
            int to = Math.min(hidden, from + BLOCK);
            float amax = 0;
            for (int c = from; c < to; c++) amax = Math.max(amax, Math.abs(FloatFormats.bf16ToFloat(x.get(SHORT, xOffset + 2L * c))));
            float scale = amax == 0 ? 1f : amax / FloatFormats.E4M3_MAX;
            for (int c = from; c < to; c++) {
                dst.set(ValueLayout.JAVA_BYTE, dataOffset + c, FloatFormats.floatToE4m3(FloatFormats.bf16ToFloat(x.get(SHORT, xOffset + 2L * c)) / scale));
            }
            dst.set(FLOAT, scaleOffset + 4L * b, scale);
        }
    }

    // ---- combine -----------------------------------------------------------------------------

    @Override
    public void combineSend(Combine op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        EpSegments segs = h.segments;
        int numRanks = lay.numRanks(), local = lay.localExperts();
        MemorySegment active = op.activeRanks().segment();
        boolean[] dest = op.sentTo();
        for (int r = 0; r < numRanks; r++) dest[r] = active.get(INT, 4L * r) != 0 && segs.links[r] != null;
        Deadline wd = Deadline.after(groupTimeout);
        MemorySegment xs = op.x().segment();
        long rowBytes = 2L * lay.hidden();
        for (int j = 0; j < local; j++) {
            long expert = (long) rank * local + j;
            int base = h.rowBase[j], p = 0;
            for (int s = 0; s < numRanks; s++) {
                int c = h.perSource[j * numRanks + s];
                for (int i = 0; i < c && dest[s]; i++) {
                    long row = (long) j * lay.expertRows() + p + i;
                    try {
                        segs.links[s].write(lay.combineRecvRow(expert, h.rowToken[base + p + i]), xs, row * rowBytes, rowBytes, wd);
                    } catch (RuntimeException ex) {
                        dest[s] = false;
                        lost(op.activeRanks(), op.timeoutUs(), s, "combine", op.seq(), GONE + " (" + ex.getMessage() + ")");
                    }
                }
                p += c;
            }
        }
        for (int r = 0; r < numRanks; r++) {
            if (!dest[r]) continue;
            try {
                segs.links[r].publish(EpLayout.combineSignal(numRanks, rank), op.seq(), wd);
            } catch (RuntimeException ex) {
                lost(op.activeRanks(), op.timeoutUs(), r, "combine", op.seq(), GONE + " (" + ex.getMessage() + ")");
            }
        }
    }

    @Override
    public void combineReceive(Combine op) {
        EpHandle h = op.handle();
        EpLayout lay = h.layout;
        MemorySegment mem = h.segments.memory;
        int numRanks = lay.numRanks(), local = lay.localExperts(), hidden = lay.hidden(), topK = h.topK;
        MemorySegment idx = op.topkIdx().segment(), weights = op.topkWeights().segment(), out = op.out().segment();
        MemorySegment active = op.activeRanks().segment();
        // Wait for every rank this rank dispatched to, also those none of its tokens selected: a rank's
        // combine word says it has consumed this round's dispatch (staging rows and count words). Without
        // it a rank with no selections there would start the next dispatch and overwrite that rank's
        // staging block before it was read.
        awaitSources(h.segments, op.activeRanks(), op.timeoutUs(), op.seq(), h.sentTo, "combine");
        if (acc.length < hidden) {
            acc = new float[hidden];
            part = new float[hidden];
        }
        float[] a = acc, p = part;
        long experts = (long) numRanks * local;
        for (int t = 0; t < h.numTokens; t++) {
            Arrays.fill(a, 0, hidden, 0f);
            // per expert rank in rank order: its slots in slot order into a partial, rounded to bf16
            for (int r = 0; r < numRanks; r++) {
                if (!h.sentTo[r] || active.get(INT, 4L * r) == 0) continue;
                boolean any = false;
                for (int k = 0; k < topK; k++) {
                    long q = (long) t * topK + k;
                    long e = idx.get(LONG, q * 8);
                    if (e < 0 || e >= experts || e / local != r) continue;
                    if (!any) Arrays.fill(p, 0, hidden, 0f);
                    any = true;
                    float w = weights.get(FLOAT, q * 4);
                    long row = lay.combineRecvRow(e, t);
                    for (int c = 0; c < hidden; c++) p[c] += w * FloatFormats.bf16ToFloat(mem.get(SHORT, row + 2L * c));
                }
                if (any) for (int c = 0; c < hidden; c++) a[c] += FloatFormats.bf16ToFloat(FloatFormats.floatToBf16(p[c]));
            }
            long o = (long) t * hidden * 2;
            for (int c = 0; c < hidden; c++) out.set(SHORT, o + 2L * c, FloatFormats.floatToBf16(a[c]));
        }
    }

    // ---- shared ------------------------------------------------------------------------------

    /**
     * Waits for the dispatch (needed == null) or combine signal word of every active rank (for combine:
     * of those {@code needed}, the ranks dispatched to) to reach {@code seq}; marks the ones that do not
     * arrive 0 in activeRanks.
     */
    private boolean[] awaitSources(EpSegments segs, org.mooncake4j.core.Tensor activeRanks, long timeoutUs, long seq, boolean[] needed,
                                   String what) {
        int numRanks = segs.numRanks;
        MemorySegment active = activeRanks.segment();
        MemorySegment mem = segs.memory;
        boolean[] arrived = new boolean[numRanks];
        Deadline deadline = Deadline.afterNanos(timeoutUs < 0 ? groupTimeout.toNanos() : timeoutUs * 1000L);
        for (int s = 0; s < numRanks; s++) {
            if (active.get(INT, 4L * s) == 0 || (needed != null && !needed[s])) continue;
            if (segs.links[s] == null) {
                activeRanks.setLong(s, 0);
                continue;
            }
            long word = needed == null ? EpLayout.dispatchSignal(s) : EpLayout.combineSignal(numRanks, s);
            if (!Waiter.awaitAtLeast(mem, word, seq, deadline, segs.gone[s]) && Waiter.load(mem, word) - seq < 0) {
                lost(activeRanks, timeoutUs, s, what, seq, segs.gone[s].getAsBoolean() ? GONE : "did not send its " + what + " within "
                        + (timeoutUs < 0 ? "the group timeout of " + groupTimeout.toMillis() + " ms" : timeoutUs + " us"));
                continue;
            }
            arrived[s] = true;
        }
        return arrived;
    }

    /** Marks {@code peer} 0; with timeoutUs = -1 (no timeout detection) a lost peer fails the call. */
    private static final String GONE = "exited or lost its connection";

    private void lost(org.mooncake4j.core.Tensor activeRanks, long timeoutUs, int peer, String what, long seq, String reason) {
        activeRanks.setLong(peer, 0);
        if (timeoutUs < 0) {
            throw new PeerFailureException(what + " #" + seq + " on rank " + rank + " failed: rank " + peer + " " + reason
                    + ". It is now 0 in activeRanks. With timeoutUs = -1"
                    + " a lost or hung rank is an error; check its logs, and pass timeoutUs >= 0 to have " + what + " go on without ranks that fail.",
                    new int[] {peer});
        }
    }

    private void ensureSendScratch(int numExperts, long messageBytes) {
        if (sendCounts.length < numExperts) {
            sendCounts = new int[numExperts];
            countScratch = Arena.ofAuto().allocate(4L * numExperts, 64);
        }
        if (message.byteSize() < messageBytes) message = Arena.ofAuto().allocate(messageBytes, 64);
    }
}
