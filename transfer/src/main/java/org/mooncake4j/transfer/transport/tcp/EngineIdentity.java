package org.mooncake4j.transfer.transport.tcp;

import java.nio.charset.StandardCharsets;

/**
 * Who is at the other end of a connection: an engine's name and the instance id it drew when it
 * started. A replacement process reuses the name but never the instance, so a stale descriptor or a
 * reused port is told apart from the engine that registered a segment.
 */
public record EngineIdentity(String name, String instanceId) {
    /** Refuses identities too long for a handshake (the receiver caps them at {@link Frame#MAX_IDENTITY_BYTES}). */
    public EngineIdentity {
        int bytes = name.getBytes(StandardCharsets.UTF_8).length + 1 + instanceId.getBytes(StandardCharsets.UTF_8).length;
        if (bytes > Frame.MAX_IDENTITY_BYTES) {
            throw new IllegalArgumentException("engine name '" + name.substring(0, Math.min(name.length(), 40)) + "...' is too long: its identity"
                    + " takes " + bytes + " bytes in a handshake, at most " + Frame.MAX_IDENTITY_BYTES + " are accepted. Choose a shorter name.");
        }
    }

    byte[] encode() {
        return (name + "\n" + instanceId).getBytes(StandardCharsets.UTF_8);
    }

    static EngineIdentity decode(byte[] bytes) {
        String s = new String(bytes, StandardCharsets.UTF_8);
        int nl = s.lastIndexOf('\n');
        if (nl < 0) throw new IllegalArgumentException("malformed engine identity '" + s + "'");
        return new EngineIdentity(s.substring(0, nl), s.substring(nl + 1));
    }

    @Override
    public String toString() { return name + " (instance " + instanceId + ")"; }
}
