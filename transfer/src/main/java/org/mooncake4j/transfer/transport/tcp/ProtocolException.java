package org.mooncake4j.transfer.transport.tcp;

import java.io.IOException;

/** A peer sent a frame this engine must not act on (garbage, unknown segment, range outside a segment); the connection is closed. */
class ProtocolException extends IOException {
    ProtocolException(String message) { super(message); }
}
