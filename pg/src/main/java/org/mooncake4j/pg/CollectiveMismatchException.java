package org.mooncake4j.pg;

/** Ranks called different collectives, or the same collective with different sizes, at the same point. */
public class CollectiveMismatchException extends RuntimeException {
    public CollectiveMismatchException(String message) { super(message); }
}
