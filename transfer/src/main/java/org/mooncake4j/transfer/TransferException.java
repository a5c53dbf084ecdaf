package org.mooncake4j.transfer;

/** A transfer failed; the message names the segment/peer/address, the cause, and what to do. */
public class TransferException extends RuntimeException {
    public TransferException(String message) { super(message); }

    public TransferException(String message, Throwable cause) { super(message, cause); }
}
