package org.mooncake4j.transfer.transport;

import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.TransferException;

/** The range checks every transport makes before touching memory, with the messages users see. */
public final class SegmentRanges {
    private SegmentRanges() {}

    /** The message for a range outside a segment, or null when {@code [offset, offset + length)} lies inside it. */
    public static String outside(String segment, long size, long offset, long length) {
        if (offset >= 0 && length >= 0 && offset <= size && length <= size - offset) return null;
        return "Requested address range [" + offset + ", " + (offset + length) + ") is outside segment "
                + segment + " of " + size + " bytes";
    }

    /** Throws {@link TransferException} when the range lies outside the segment. */
    public static void check(String segment, long size, long offset, long length) {
        String m = outside(segment, size, offset, length);
        if (m != null) throw new TransferException(m);
    }

    /** The message for a range outside the caller's local buffer, or null when it lies inside. */
    public static String outsideLocal(String segment, long localSize, long localOffset, long length) {
        if (localOffset >= 0 && length >= 0 && localOffset <= localSize && length <= localSize - localOffset) return null;
        return "Local range [" + localOffset + ", " + (localOffset + length) + ") is outside the local buffer of "
                + localSize + " bytes (transfer with segment " + segment + ")";
    }

    public static void checkLocal(String segment, long localSize, long localOffset, long length) {
        String m = outsideLocal(segment, localSize, localOffset, length);
        if (m != null) throw new TransferException(m);
    }

    /**
     * Checks a {@code publish} target: a sequence word ({@link Waiter#WORD_BYTES} bytes: the value and
     * its sleeper count), 8-byte aligned, inside the segment.
     */
    public static void checkWord(String segment, long size, long offset) {
        check(segment, size, offset, Waiter.WORD_BYTES);
        if ((offset & 7) != 0) {
            throw new TransferException("publish at offset " + offset + " of segment " + segment
                    + " is not 8-byte aligned: sequence words must sit at multiples of 8.");
        }
    }

    /** The message for a publish target outside the segment or misaligned, or null when it is valid. */
    public static String badWord(String segment, long size, long offset) {
        String m = outside(segment, size, offset, Waiter.WORD_BYTES);
        if (m != null) return m;
        return (offset & 7) == 0 ? null : "publish at unaligned offset " + offset + " of segment " + segment;
    }
}
