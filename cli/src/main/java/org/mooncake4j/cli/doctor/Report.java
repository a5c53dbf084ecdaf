package org.mooncake4j.cli.doctor;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * What {@code mooncake4j doctor} prints: sections ({@code == name ==}), one {@code key: value} line
 * per fact, printed as soon as it is known, and at the end a verdict with one line per problem
 * ({@code PROBLEM: what -> what to do}) and per note ({@code NOTE: ...}), or {@code OK: no problems
 * found}. Only problems make the exit code 1.
 *
 * <p>Not thread-safe: one report per run, written from one thread.
 */
public final class Report {
    /** One finding of the verdict. */
    public record Finding(String what, String fix) {
        @Override
        public String toString() { return fix == null ? what : what + " -> " + fix; }
    }

    private final PrintWriter out;
    private final List<Finding> problems = new ArrayList<>();
    private final List<Finding> notes = new ArrayList<>();

    public Report(PrintWriter out) { this.out = out; }

    /** Starts a section: {@code == title ==}. */
    public void section(String title) {
        out.println("== " + title + " ==");
        out.flush();
    }

    /** One fact: {@code key: value}, on one line (line breaks in the value become "; "). */
    public void fact(String key, Object value) {
        out.println(key + ": " + oneLine(String.valueOf(value)));
        out.flush();
    }

    /** Something that will make a group fail or hang here, and what to do about it. */
    public void problem(String what, String fix) { problems.add(new Finding(oneLine(what), fix == null ? null : oneLine(fix))); }

    /** Worth knowing, but nothing fails because of it. */
    public void note(String what) { notes.add(new Finding(oneLine(what), null)); }

    public List<Finding> problems() { return List.copyOf(problems); }

    public List<Finding> notes() { return List.copyOf(notes); }

    /** Prints the verdict section and returns the exit code: 0 without problems, 1 with. */
    public int verdict() {
        section("verdict");
        for (Finding n : notes) out.println("NOTE: " + n);
        for (Finding p : problems) out.println("PROBLEM: " + p);
        if (problems.isEmpty()) out.println("OK: no problems found");
        else out.println(problems.size() + (problems.size() == 1 ? " problem" : " problems") + " found");
        out.flush();
        return problems.isEmpty() ? 0 : 1;
    }

    private static String oneLine(String s) { return s.strip().replaceAll("\\s*\\R\\s*", "; "); }

    /** {@code 1.5 GiB}, {@code 64 MiB}, {@code 512 B}. */
    public static String bytes(long n) {
        if (n < 0) return "unknown";
        String[] units = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
        double v = n;
        int u = 0;
        while (v >= 1024 && u < units.length - 1) {
            v /= 1024;
            u++;
        }
        if (u == 0) return n + " B";
        String text = String.format(Locale.ROOT, "%.1f", v);
        return (text.endsWith(".0") ? text.substring(0, text.length() - 2) : text) + " " + units[u];
    }

    /** {@code 0.42 ms}, {@code 12.3 ms}, {@code 1500 ms}. */
    public static String millis(long nanos) {
        double ms = nanos / 1e6;
        if (ms < 10) return String.format(Locale.ROOT, "%.2f ms", ms);
        if (ms < 100) return String.format(Locale.ROOT, "%.1f ms", ms);
        return String.format(Locale.ROOT, "%.0f ms", ms);
    }
}
