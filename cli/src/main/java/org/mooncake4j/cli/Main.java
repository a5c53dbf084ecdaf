package org.mooncake4j.cli;

import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Spec;

/**
 * The {@code mooncake4j} command: {@code run} (a torchrun-like launcher), {@code pgbench}
 * (nccl-tests-style benchmarks), {@code epbench} (EP dispatch/combine timing), {@code demo} (every
 * collective on 4 ranks, checked, then a killed rank restarted and rejoined, then the MoE example) and
 * {@code plot} (charts and ratios from result files). Errors a user can fix print as one message
 * with exit code 2 (usage) or 1; unexpected ones print their stack trace too. Runs on the main thread.
 */
@Command(name = "mooncake4j", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = "Fault-tolerant collective communication for the JVM (a Java reproduction of Mooncake's process-group backend).",
        subcommands = {RunCommand.class, PgBenchCommand.class, EpBenchCommand.class, DemoCommand.class, PlotCommand.class, DoctorCommand.class, CommandLine.HelpCommand.class})
public final class Main implements Runnable {
    @Spec
    CommandSpec spec;

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "Missing subcommand: use run, pgbench, epbench, demo, plot or doctor (see mooncake4j help)");
    }

    public static void main(String[] args) {
        String level = System.getenv("MOONCAKE_LOG");
        if (level != null && !level.isBlank()) {
            try {
                // before the first logger exists (slf4j-simple reads its configuration once)
                System.setProperty("org.slf4j.simpleLogger.log.org.mooncake4j", logLevel(level));
            } catch (IllegalArgumentException e) {
                System.err.println("mooncake4j: " + e.getMessage());
                System.exit(2);
            }
        }
        System.exit(commandLine().execute(args));
    }

    /**
     * The slf4j-simple level for {@code MOONCAKE_LOG}: {@code info} (default: one line per lifecycle
     * event — init, join, failure suspected, epoch change, redo, fenced, recover, close), {@code debug}
     * (also one line per operation), {@code trace}, {@code warn}, {@code error} or {@code off}.
     */
    static String logLevel(String value) {
        String v = value.trim().toLowerCase(java.util.Locale.ROOT);
        return switch (v) {
            case "trace", "debug", "info", "warn", "error", "off" -> v;
            default -> throw new IllegalArgumentException("MOONCAKE_LOG must be one of trace, debug, info, warn, error, off; got '" + value + "'");
        };
    }

    /** The configured command line, for {@link #main} and for tests. */
    static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        // everything after run's CLASS|JAR belongs to the worker, even when it looks like an option
        cl.getSubcommands().get("run").setStopAtPositional(true);
        cl.setExecutionExceptionHandler((e, line, parsed) -> {
            String where = line.getCommandName();
            if (userFacing(e)) {
                line.getErr().println("mooncake4j " + where + ": " + e.getMessage());
                for (Throwable c = e.getCause(); c != null; c = c.getCause()) line.getErr().println("  caused by: " + c);
            } else {
                line.getErr().println("mooncake4j " + where + " failed: " + e);
                e.printStackTrace(line.getErr());
            }
            return 1;
        });
        return cl;
    }

    /** Exceptions whose message already says what failed and what to do: print it without a stack trace. */
    private static boolean userFacing(Exception e) {
        return e instanceof IllegalArgumentException || e instanceof IllegalStateException || e instanceof java.io.IOException
                || e instanceof java.io.UncheckedIOException || e.getClass().getName().startsWith("org.mooncake4j.");
    }

    /** The version, from the resource Maven fills in at build time. */
    static String version() {
        try (InputStream in = Main.class.getResourceAsStream("version.properties")) {
            if (in == null) return "unknown (version.properties missing from the class path)";
            Properties p = new Properties();
            p.load(in);
            return p.getProperty("version", "unknown");
        } catch (IOException e) {
            return "unknown (" + e.getMessage() + ")";
        }
    }

    /** picocli's {@code --version}. */
    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"mooncake4j " + version(), "Java " + Runtime.version() + " (" + System.getProperty("java.vendor") + ")"};
        }
    }
}
