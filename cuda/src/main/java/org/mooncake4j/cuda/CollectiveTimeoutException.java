package org.mooncake4j.cuda;

import java.util.ArrayList;
import java.util.List;
import org.mooncake4j.core.TimeoutException;

/**
 * A GPU collective gave up waiting: on this rank's GPU, a flag wait passed its deadline because
 * {@link #missingRanks()} did not arrive. The symmetric heap is unusable afterwards (the ranks no
 * longer agree on its flags and banks): report the missing ranks to the process group as failed and
 * rebuild the communicator, with a new {@link SymmetricHeap}, among the survivors.
 */
public class CollectiveTimeoutException extends TimeoutException {
    private static final long serialVersionUID = 1L;

    private final int rank;
    private final List<Integer> missingRanks;
    private final boolean resultComplete;

    public CollectiveTimeoutException(int rank, String where, List<Integer> missingRanks, long timeoutNanos) {
        this(rank, where, missingRanks, timeoutNanos, false);
    }

    /** @param resultComplete the timeout happened in the kernel's final sync step, after this rank's result was complete */
    public CollectiveTimeoutException(int rank, String where, List<Integer> missingRanks, long timeoutNanos, boolean resultComplete) {
        super(message(rank, where, missingRanks, timeoutNanos) + (resultComplete ? " (This rank's result was complete: the"
                + " timeout happened in the final sync step.)" : ""));
        this.rank = rank;
        this.missingRanks = List.copyOf(missingRanks);
        this.resultComplete = resultComplete;
    }

    /**
     * Whether this rank's result was complete when the wait timed out: it happened in the kernel's
     * final sync step ({@link CudaCollectives#finalSyncs()}), so only the other ranks' state is unknown.
     */
    public boolean resultComplete() { return resultComplete; }

    /** The rank that observed the timeout. */
    public int rank() { return rank; }

    /** The ranks that did not arrive, ascending; empty only if the GPU reported none (see the message). */
    public List<Integer> missingRanks() { return missingRanks; }

    /** The ranks whose bits are set in {@code mask}, ascending. */
    static List<Integer> ranksOf(int mask) {
        List<Integer> ranks = new ArrayList<>();
        for (int q = 0; q < 32; q++) {
            if ((mask & (1 << q)) != 0) ranks.add(q);
        }
        return ranks;
    }

    static String message(int rank, String where, List<Integer> missing, long timeoutNanos) {
        String who = missing.isEmpty() ? "a peer (the GPU did not say which)" : (missing.size() == 1 ? "rank " : "ranks ")
                + (missing.size() == 1 ? missing.get(0).toString() : missing.toString());
        return "GPU collective on rank " + rank + " (" + where + "): " + who + " did not arrive within the timeout of "
                + (timeoutNanos + 999_999) / 1_000_000 + " ms. The symmetric heap is unusable from now on: report "
                + (missing.isEmpty() ? "the unresponsive ranks" : missing.toString()) + " as failed to the process group"
                + " and rebuild the communicator (a new SymmetricHeap) among the survivors; if "
                + (missing.size() == 1 ? "that rank is" : "those ranks are") + " alive, check that every rank issues the"
                + " same collectives in the same order, and raise the timeout if they are merely slow.";
    }
}
