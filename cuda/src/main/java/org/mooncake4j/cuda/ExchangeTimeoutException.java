package org.mooncake4j.cuda;

import java.util.List;
import org.mooncake4j.core.TimeoutException;

/**
 * A round of a {@link SymmetricHeap.Exchange} ended at its deadline before every rank published:
 * {@link #missingRanks()} did not. The message names them, the round and where to look.
 */
public class ExchangeTimeoutException extends TimeoutException {
    private static final long serialVersionUID = 1L;

    private final List<Integer> missingRanks;

    public ExchangeTimeoutException(String message, List<Integer> missingRanks) {
        super(message);
        this.missingRanks = List.copyOf(missingRanks);
    }

    /** The ranks that had not published when the deadline passed, ascending. */
    public List<Integer> missingRanks() { return missingRanks; }
}
