package org.mooncake4j.transfer.store;

/** The metadata store could not be reached or answered with an error; the message says which server and what to do. */
public class StoreException extends RuntimeException {
    public StoreException(String message) { super(message); }

    public StoreException(String message, Throwable cause) { super(message, cause); }
}
