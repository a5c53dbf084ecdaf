package org.mooncake4j.pg;

/**
 * This rank was removed from the group (fenced) while it was alive: it was stopped, paused or cut
 * off past the timeout and the survivors went on without it. Its operations are refused; it can
 * rejoin as an extension rank.
 */
public class RankRemovedException extends RuntimeException {
    private final long epoch;

    public RankRemovedException(String message, long epoch) {
        super(message);
        this.epoch = epoch;
    }

    /** The epoch in which this rank was removed. */
    public long epoch() { return epoch; }
}
