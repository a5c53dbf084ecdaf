package org.mooncake4j.ep;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * The routing a dispatch produced, for the matching {@link EpBuffer#combine} (used once) and
 * {@link EpBuffer#nextCombineBuffer}. Opaque to callers.
 *
 * <p>Filled by the dispatch's receive: for local expert j its rows {@code [0, recvCount[j])} are, source
 * rank by source rank in ascending order, {@code perSource[j * numRanks + s]} rows from source s; row p
 * of expert j came from token {@code rowToken[rowBase[j] + p]} of its source, top-k slot
 * {@code rowSlot[rowBase[j] + p]}.
 */
public final class EpHandle {
    final EpBuffer buffer;
    /** The CPU path's segments (null on the CUDA path). */
    final EpSegments segments;
    /** The buffer membership this handle belongs to (segments, or the CUDA path's heap); compared by identity. */
    final Object membership;
    final EpLayout layout;
    final long seq;
    final boolean fp8;
    final int numTokens;
    final int topK;
    /** Ranks this rank sent tokens to (index = rank), fixed at the send. */
    final boolean[] sentTo;
    final int[] perSource;
    final int[] rowBase;
    int[] rowToken;
    int[] rowSlot;
    /** Completes when the receive is done (exceptionally when it failed). */
    final CompletableFuture<Void> received = new CompletableFuture<>();
    final boolean receiveInHook;
    final AtomicBoolean hookStarted = new AtomicBoolean();
    final AtomicBoolean used = new AtomicBoolean();

    EpHandle(EpBuffer buffer, EpSegments segments, Object membership, EpLayout layout, long seq, boolean fp8, int numTokens, int topK,
             boolean receiveInHook) {
        this.buffer = buffer;
        this.segments = segments;
        this.membership = membership;
        this.layout = layout;
        this.seq = seq;
        this.fp8 = fp8;
        this.numTokens = numTokens;
        this.topK = topK;
        this.receiveInHook = receiveInHook;
        this.sentTo = new boolean[layout.numRanks()];
        this.perSource = new int[layout.localExperts() * layout.numRanks()];
        this.rowBase = new int[layout.localExperts() + 1];
    }

    @Override
    public String toString() {
        return "EpHandle(dispatch #" + seq + ", " + numTokens + " tokens x top-" + topK + ", " + layout.localExperts() + " local experts"
                + (fp8 ? ", fp8" : "") + (used.get() ? ", used" : "") + ")";
    }
}
