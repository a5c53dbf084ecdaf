package org.mooncake4j.core;

import java.time.Duration;

/**
 * A point in time on {@link System#nanoTime()} by which a wait must end. Every blocking call in
 * this project takes one: nothing waits forever. {@link #NEVER} exists for callers that ask for
 * an unbounded wait explicitly (EP's {@code timeoutUs = -1}).
 */
public record Deadline(long nanoTime) {
    public static final Deadline NEVER = new Deadline(Long.MAX_VALUE);

    public static Deadline after(Duration d) {
        return afterNanos(d.toNanos());
    }

    public static Deadline afterNanos(long nanos) {
        long now = System.nanoTime();
        long t = now + nanos;
        return new Deadline(nanos < 0 || t < now ? Long.MAX_VALUE : t);
    }

    public static Deadline afterMillis(long millis) { return afterNanos(millis * 1_000_000L); }

    public boolean isNever() { return nanoTime == Long.MAX_VALUE; }

    public boolean expired() { return !isNever() && System.nanoTime() - nanoTime >= 0; }

    /** Nanoseconds left, 0 when expired, {@link Long#MAX_VALUE} for {@link #NEVER}. */
    public long remainingNanos() {
        if (isNever()) return Long.MAX_VALUE;
        return Math.max(0, nanoTime - System.nanoTime());
    }

    public long remainingMillis() {
        long n = remainingNanos();
        return n == Long.MAX_VALUE ? Long.MAX_VALUE : (n + 999_999) / 1_000_000;
    }

    /** The earlier of the two. */
    public Deadline min(Deadline other) {
        if (isNever()) return other;
        if (other.isNever()) return this;
        return nanoTime - other.nanoTime <= 0 ? this : other;
    }
}
