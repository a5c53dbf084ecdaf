package org.mooncake4j.core;

/** A wait reached its {@link Deadline}. The message says what was awaited, from whom, and what to check. */
public class TimeoutException extends RuntimeException {
    public TimeoutException(String message) { super(message); }
}
