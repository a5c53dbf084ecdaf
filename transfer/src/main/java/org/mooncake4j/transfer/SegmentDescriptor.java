package org.mooncake4j.transfer;

import java.net.URLDecoder;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * What a peer needs to reach a segment, as published under {@code mooncake4j/segments/<name>}: one
 * {@code key=value} line per field (values URL-encoded), readable with any store client.
 *
 * @param engine     the registering engine's name
 * @param instanceId the registering engine's instance (changes when a replacement process registers)
 * @param host       the address the engine's TCP server listens on
 * @param hostId     hostname and boot id: equal on two processes only when they share a kernel
 * @param path       the segment's file (for same-host peers)
 * @param segmentId  the id tcp frames carry
 */
record SegmentDescriptor(String engine, String instanceId, String host, int port, String hostId, String path,
                         long size, long pid, int segmentId) {
    private static final int VERSION = 1;

    byte[] encode() {
        Map<String, String> m = new LinkedHashMap<>();
        m.put("version", Integer.toString(VERSION));
        m.put("engine", engine);
        m.put("instance", instanceId);
        m.put("host", host);
        m.put("port", Integer.toString(port));
        m.put("hostId", hostId);
        m.put("path", path);
        m.put("size", Long.toString(size));
        m.put("pid", Long.toString(pid));
        m.put("segmentId", Integer.toString(segmentId));
        StringBuilder b = new StringBuilder();
        m.forEach((k, v) -> b.append(k).append('=').append(URLEncoder.encode(v, StandardCharsets.UTF_8)).append('\n'));
        return b.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** Parses a descriptor of segment {@code name} read from store {@code uri} (both for messages). */
    static SegmentDescriptor decode(String name, byte[] bytes, String uri) {
        Map<String, String> m = new LinkedHashMap<>();
        for (String line : new String(bytes, StandardCharsets.UTF_8).split("\n")) {
            int eq = line.indexOf('=');
            if (eq > 0) m.put(line.substring(0, eq), URLDecoder.decode(line.substring(eq + 1), StandardCharsets.UTF_8));
        }
        try {
            if (Integer.parseInt(field(m, "version")) != VERSION) {
                throw new IllegalArgumentException("descriptor version " + m.get("version") + ", this engine reads " + VERSION);
            }
            return new SegmentDescriptor(field(m, "engine"), field(m, "instance"), field(m, "host"), Integer.parseInt(field(m, "port")),
                    field(m, "hostId"), field(m, "path"), Long.parseLong(field(m, "size")), Long.parseLong(field(m, "pid")),
                    Integer.parseInt(field(m, "segmentId")));
        } catch (IllegalArgumentException e) {
            throw new TransferException("The descriptor of segment " + name + " in the metadata store " + uri + " is malformed (" + e.getMessage()
                    + "): it was not written by this mooncake4j version. Run the same version everywhere, or delete the key "
                    + TransferEngine.SEGMENT_KEY_PREFIX + name + ".", e);
        }
    }

    private static String field(Map<String, String> m, String key) {
        String v = m.get(key);
        if (v == null) throw new IllegalArgumentException("field '" + key + "' is missing");
        return v;
    }

    String address() { return host + ":" + port; }
}
