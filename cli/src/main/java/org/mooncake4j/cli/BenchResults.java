package org.mooncake4j.cli;

import java.io.IOException;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.mooncake4j.core.internal.CpuAffinity;

/**
 * Benchmark result files: {@code {"machine": {...}, "date": ..., "rows": [row, ...]}}, written by
 * pgbench and by {@code bench/gloo_allreduce.py}, read by {@code mooncake4j plot}. Stateless; the
 * records are immutable.
 */
final class BenchResults {
    private BenchResults() {}

    /**
     * One measured size, as in an nccl-tests table row. {@code op} is {@code none} and {@code root}
     * -1 where the collective has none; {@code wrong} is -1 when results were not checked.
     */
    record Row(String collective, long bytes, long count, String dtype, String op, int root, int ranks,
               double timeUs, double algbw, double busbw, long wrong) {

        Map<String, Object> toJson() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("collective", collective);
            m.put("bytes", bytes);
            m.put("count", count);
            m.put("dtype", dtype);
            m.put("op", op);
            m.put("root", root);
            m.put("ranks", ranks);
            m.put("time_us", timeUs);
            m.put("algbw", algbw);
            m.put("busbw", busbw);
            m.put("wrong", wrong < 0 ? null : wrong);
            return m;
        }

        static Row fromJson(Map<?, ?> m) {
            return new Row(string(m, "collective", "?"), number(m, "bytes").longValue(), optionalNumber(m, "count", 0).longValue(),
                    string(m, "dtype", "?"), string(m, "op", "none"), optionalNumber(m, "root", -1).intValue(),
                    optionalNumber(m, "ranks", 0).intValue(), number(m, "time_us").doubleValue(),
                    optionalNumber(m, "algbw", 0).doubleValue(), number(m, "busbw").doubleValue(),
                    optionalNumber(m, "wrong", -1).longValue());
        }
    }

    /** What a chart needs of one row. */
    record Point(long bytes, double timeUs, double busbw) {}

    /** The whole file as JSON text, stamped with this machine and the current time. */
    static String toJson(List<Row> rows) {
        Map<String, Object> doc = new LinkedHashMap<>();
        Map<String, Object> machine = new LinkedHashMap<>();
        machine.put("hostname", hostname());
        machine.put("cores", CpuAffinity.processCpus());
        doc.put("machine", machine);
        doc.put("date", OffsetDateTime.now().format(DateTimeFormatter.ISO_OFFSET_DATE_TIME));
        List<Object> list = new ArrayList<>();
        for (Row r : rows) list.add(r.toJson());
        doc.put("rows", list);
        return Json.write(doc);
    }

    static void write(Path file, List<Row> rows) throws IOException {
        Path parent = file.toAbsolutePath().getParent();
        if (parent != null) Files.createDirectories(parent);
        Files.writeString(file, toJson(rows));
    }

    /** The rows of a file written by {@link #write}. */
    static List<Row> readRows(Path file) throws IOException {
        List<Row> rows = new ArrayList<>();
        for (Object o : rowList(file, parse(file), null)) {
            if (!(o instanceof Map<?, ?> m)) throw new IllegalArgumentException(file + ": a row is not a JSON object: " + o);
            rows.add(Row.fromJson(m));
        }
        return rows;
    }

    /**
     * The points of a result file, sorted by size. Accepted layouts: a list of rows; an object with
     * {@code rows}; an object whose member {@code key} is a list of rows or of
     * {@code [bytes, time_us, busbw]} triples (the layout of {@code torch_baselines.py}).
     */
    static List<Point> readPoints(Path file, String key) throws IOException {
        List<Point> points = new ArrayList<>();
        for (Object o : rowList(file, parse(file), key)) {
            switch (o) {
                case Map<?, ?> m -> points.add(new Point(number(m, "bytes").longValue(), number(m, "time_us").doubleValue(),
                        number(m, "busbw").doubleValue()));
                case List<?> t when t.size() >= 3 && t.stream().allMatch(x -> x instanceof Number) -> points.add(new Point(
                        ((Number) t.get(0)).longValue(), ((Number) t.get(1)).doubleValue(), ((Number) t.get(2)).doubleValue()));
                default -> throw new IllegalArgumentException(file + ": entry " + o
                        + " is neither a row object {bytes, time_us, busbw, ...} nor a [bytes, time_us, busbw] triple");
            }
        }
        points.sort((a, b) -> Long.compare(a.bytes(), b.bytes()));
        return points;
    }

    private static Object parse(Path file) throws IOException {
        try {
            return Json.parse(Files.readString(file));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(file + ": " + e.getMessage(), e);
        }
    }

    private static List<?> rowList(Path file, Object doc, String key) {
        Object list = doc;
        if (key != null) {
            if (!(doc instanceof Map<?, ?> m) || !m.containsKey(key)) {
                throw new IllegalArgumentException(file + " has no top-level member '" + key + "'" + members(doc));
            }
            list = m.get(key);
        } else if (doc instanceof Map<?, ?> m) {
            if (!m.containsKey("rows")) {
                throw new IllegalArgumentException(file + " has no 'rows' member; name the member that holds the rows as path.json:KEY" + members(doc));
            }
            list = m.get("rows");
        }
        if (!(list instanceof List<?> l)) throw new IllegalArgumentException(file + (key == null ? "" : " member '" + key + "'") + " is not a JSON list of rows");
        return l;
    }

    private static String members(Object doc) {
        return doc instanceof Map<?, ?> m ? " (members: " + String.join(", ", m.keySet().stream().map(String::valueOf).toList()) + ")" : "";
    }

    private static Number number(Map<?, ?> m, String k) {
        if (m.get(k) instanceof Number n) return n;
        throw new IllegalArgumentException("result row " + m + " lacks the number '" + k + "'");
    }

    private static Number optionalNumber(Map<?, ?> m, String k, long def) {
        return m.get(k) instanceof Number n ? n : def;
    }

    private static String string(Map<?, ?> m, String k, String def) {
        Object v = m.get(k);
        return v == null ? def : v.toString();
    }

    private static String hostname() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            String h = System.getenv("HOSTNAME");
            return h != null ? h : "unknown";
        }
    }
}
