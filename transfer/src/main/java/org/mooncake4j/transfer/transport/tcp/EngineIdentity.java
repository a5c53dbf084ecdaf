package org.mooncake4j.transfer.transport.tcp;

import java.nio.charset.StandardCharsets;

/**
 * Who is at the other end of a connection: an engine's name and the instance id it drew when it
 * started. A replacement process reuses the name but never the instance, so a stale descriptor or a
 * reused port is told apart from the engine that registered a segment.
 */
public record EngineIdentity(String name, String instanceId) {
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
