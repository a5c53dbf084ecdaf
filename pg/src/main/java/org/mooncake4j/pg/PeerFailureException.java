package org.mooncake4j.pg;

import java.util.Arrays;

/** A collective or P2P operation could not complete because peers failed or did not answer in time. */
public class PeerFailureException extends RuntimeException {
    private final int[] ranks;

    public PeerFailureException(String message, int[] ranks) {
        super(message);
        this.ranks = ranks.clone();
    }

    /** The ranks that failed or did not answer. */
    public int[] ranks() { return ranks.clone(); }

    @Override
    public String toString() { return super.toString() + " ranks=" + Arrays.toString(ranks); }
}
