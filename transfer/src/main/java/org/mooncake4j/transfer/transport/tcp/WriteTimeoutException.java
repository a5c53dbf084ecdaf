package org.mooncake4j.transfer.transport.tcp;

import java.io.IOException;

/**
 * A frame could not be written before its deadline. When part of it was already written the stream
 * is no longer at a frame boundary and the connection must be closed.
 */
final class WriteTimeoutException extends IOException {
    private final boolean midFrame;

    WriteTimeoutException(boolean midFrame) {
        super(midFrame ? "deadline passed with a frame partly written" : "deadline passed before the frame could be written");
        this.midFrame = midFrame;
    }

    boolean midFrame() { return midFrame; }
}
