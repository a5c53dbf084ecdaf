package org.mooncake4j.transfer;

/** The state of one request of a batch; {@code message} explains a failure or timeout. */
public record TransferStatus(State state, long transferredBytes, String message) {
    public enum State { PENDING, COMPLETED, FAILED, TIMEOUT }

    public boolean done() { return state != State.PENDING; }

    public boolean ok() { return state == State.COMPLETED; }
}
