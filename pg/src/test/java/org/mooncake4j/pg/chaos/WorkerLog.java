package org.mooncake4j.pg.chaos;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * What one {@link ChaosWorker} printed, parsed: its OP lines by iteration, the lines that end or break
 * its loop, and everything it printed (the library's log included) for failure reports.
 */
final class WorkerLog {
    /** One {@code OP} line. {@code mask} is the active mask after the operation, rank 0 first. */
    record Op(long index, long epoch, String mask, boolean covered, String dropped, String crc, boolean ok, String op, long t, String line) {
        ChaosStep.Kind kind() { return ChaosStep.Kind.ofTorchName(op.substring(0, op.indexOf('/'))); }

        boolean active(int rank) { return mask.charAt(rank) == '1'; }

        /**
         * The fields every survivor must agree on: epoch, mask, which ranks the operation dropped and whether
         * it covered them, the collective, and the digest where results are rank-invariant.
         */
        String agreed() {
            return "epoch=" + epoch + " mask=" + mask + " dropped=" + dropped + " covered=" + covered + " op=" + op
                    + (kind().sameResultOnEveryRank() ? " crc=" + crc : "");
        }
    }

    final int rank;
    final TreeMap<Long, Op> ops = new TreeMap<>();
    final List<String> duplicates = new ArrayList<>();
    /** OP lines cut short (a killed process may die in the middle of one). */
    final List<String> malformed = new ArrayList<>();
    final List<String> mismatches = new ArrayList<>();
    /** ERROR, GAVEUP, INITFAIL and CLOSEFAIL lines. */
    final List<String> errors = new ArrayList<>();
    final List<WorkerProcesses.Line> lines;
    String fenced;
    long doneNanos = -1;
    boolean ready;

    WorkerLog(int rank, List<WorkerProcesses.Line> lines) {
        this.rank = rank;
        this.lines = lines;
        for (WorkerProcesses.Line l : lines) {
            String s = l.text();
            if (s.startsWith("OP ")) {
                Op op = parseOp(s);
                if (op == null) malformed.add(s);
                else if (ops.putIfAbsent(op.index(), op) != null) duplicates.add(s);
            } else if (s.startsWith("MISMATCH ")) {
                mismatches.add(s);
            } else if (s.startsWith("FENCED ")) {
                fenced = s;
            } else if (s.startsWith("DONE ")) {
                doneNanos = Long.parseLong(fields(s).get("t"));
            } else if (s.startsWith("READY ")) {
                ready = true;
            } else if (s.startsWith("ERROR ") || s.startsWith("GAVEUP") || s.startsWith("INITFAIL") || s.startsWith("CLOSEFAIL")) {
                errors.add(s);
            }
        }
    }

    /** The OP line parsed, or null when it is incomplete. */
    static Op parseOp(String line) {
        String[] head = line.split(" ", 3);
        Map<String, String> f = fields(line);
        for (String k : List.of("epoch", "mask", "covered", "dropped", "crc", "ok", "op", "t")) if (!f.containsKey(k)) return null;
        try {
            return new Op(Long.parseLong(head[1]), Long.parseLong(f.get("epoch")), f.get("mask"), Boolean.parseBoolean(f.get("covered")),
                    f.get("dropped"), f.get("crc"), Boolean.parseBoolean(f.get("ok")), f.get("op"), Long.parseLong(f.get("t")), line);
        } catch (NumberFormatException e) {
            return null;
        }
    }

    private static Map<String, String> fields(String line) {
        Map<String, String> m = new HashMap<>();
        for (String tok : line.split(" ")) {
            int eq = tok.indexOf('=');
            if (eq > 0) m.putIfAbsent(tok.substring(0, eq), tok.substring(eq + 1));
        }
        return m;
    }

    /** The first OP line completed after {@code nanos}, or null. */
    Op firstAfter(long nanos) {
        for (Op o : ops.values()) if (o.t() - nanos > 0) return o;
        return null;
    }

    /** The last {@code n} lines, for a failure message. */
    String tail(int n) {
        StringBuilder sb = new StringBuilder();
        for (WorkerProcesses.Line l : lines.subList(Math.max(0, lines.size() - n), lines.size())) sb.append("    ").append(l.text()).append('\n');
        return sb.toString();
    }
}
