package org.mooncake4j.cli;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.Device;
import org.mooncake4j.pg.ProcessGroup;
import picocli.CommandLine.Option;

/**
 * The flags of {@code epbench}, shared by the command and its workers: the command parses and
 * {@linkplain #validate() checks} them and hands them to every worker as arguments ({@link #toArgs()}).
 * Defaults are DeepEP's low-latency benchmark shape (128 tokens per rank, hidden 7168, top-8 of 288
 * experts, FP8 dispatch).
 *
 * <p>A mutable picocli target: filled by the parser, then only read, on one thread.
 */
final class EpBenchOptions {
    @Option(names = {"-g", "--ranks"}, paramLabel = "N", defaultValue = "2", description = "Number of ranks (worker processes) to launch (default: ${DEFAULT-VALUE})")
    int ranks;

    @Option(names = "--tokens", paramLabel = "T", defaultValue = "128", description = "Tokens per rank, also maxTokensPerRank (default: ${DEFAULT-VALUE})")
    int tokens;

    @Option(names = "--hidden", paramLabel = "H", defaultValue = "7168", description = "Hidden size (default: ${DEFAULT-VALUE})")
    int hidden;

    @Option(names = "--topk", paramLabel = "K", defaultValue = "8", description = "Experts per token, distinct (default: ${DEFAULT-VALUE})")
    int topk;

    @Option(names = "--experts", paramLabel = "E", defaultValue = "288", description = "Global experts, a multiple of --ranks (default: ${DEFAULT-VALUE})")
    int experts;

    @Option(names = "--fp8", negatable = true, defaultValue = "true", fallbackValue = "true",
            description = "Dispatch as FP8 e4m3 with a scale per 128 channels; --no-fp8 sends bf16 (default: ${DEFAULT-VALUE})")
    boolean fp8;

    @Option(names = "--device", paramLabel = "cpu|cuda", defaultValue = "cpu", description = "Where the tensors live: cpu, or cuda (cuda:LOCAL_RANK on each rank) (default: ${DEFAULT-VALUE})")
    String device;

    @Option(names = "--backend", paramLabel = "NAME", defaultValue = ProcessGroup.BACKEND_CPU, description = "Process-group backend the EpBuffer is built on (default: ${DEFAULT-VALUE})")
    String backend;

    @Option(names = {"-n", "--iters"}, paramLabel = "N", defaultValue = "50", description = "Timed iterations (default: ${DEFAULT-VALUE})")
    int iters;

    @Option(names = {"-w", "--warmup"}, paramLabel = "N", defaultValue = "10", description = "Untimed iterations first (default: ${DEFAULT-VALUE})")
    int warmup;

    @Option(names = "--seed", paramLabel = "S", defaultValue = "1", description = "Seed of the tokens and the routing; rank r uses S + r (default: ${DEFAULT-VALUE})")
    long seed;

    /** Checks every flag; the message says which flag is wrong and what it accepts. */
    void validate() {
        if (ranks < 1) throw new IllegalArgumentException("-g/--ranks must be at least 1, got " + ranks);
        if (tokens < 1) throw new IllegalArgumentException("--tokens must be at least 1, got " + tokens);
        if (hidden < 1) throw new IllegalArgumentException("--hidden must be at least 1, got " + hidden);
        if (fp8 && hidden % 128 != 0) throw new IllegalArgumentException("--fp8 needs --hidden to be a multiple of 128 (one scale per 128 channels), got " + hidden + "; or pass --no-fp8");
        if (experts < 1 || experts % ranks != 0) {
            throw new IllegalArgumentException("--experts (" + experts + ") must be a positive multiple of --ranks (" + ranks + ")");
        }
        if (topk < 1 || topk > experts) throw new IllegalArgumentException("--topk must be in [1, --experts = " + experts + "] (distinct experts per token), got " + topk);
        if (iters < 1) throw new IllegalArgumentException("-n/--iters must be at least 1, got " + iters);
        if (warmup < 0) throw new IllegalArgumentException("-w/--warmup must not be negative, got " + warmup);
        String d = device.trim().toLowerCase(Locale.ROOT);
        if (!d.equals("cpu") && !d.equals("cuda")) throw new IllegalArgumentException("--device must be cpu or cuda (each rank then uses cuda:LOCAL_RANK), got " + device);
    }

    boolean cuda() { return device.trim().equalsIgnoreCase("cuda"); }

    /** The device of a rank's tensors: the CPU, or {@code cuda:localRank}. */
    Device device(int localRank) { return cuda() ? Device.cuda(org.mooncake4j.cuda.CudaDevice.ordinalForLocalRank(localRank)) : Device.CPU; }

    /** Bytes one valid (token, expert) selection moves in dispatch: DeepEP's FP8 count {@code hidden + hidden/128*4 + 16}, or {@code 2*hidden + 16} in bf16 (the row plus its 16-byte header). */
    long dispatchBytesPerSelection() { return fp8 ? hidden + hidden / 128 * 4L + 16 : 2L * hidden + 16; }

    /** Bytes one valid selection moves in combine: the bf16 row, {@code 2*hidden}. */
    long combineBytesPerSelection() { return 2L * hidden; }

    /** These options as command-line arguments that parse back to the same values. */
    List<String> toArgs() {
        List<String> a = new ArrayList<>();
        for (Object[] p : new Object[][] {{"--ranks", ranks}, {"--tokens", tokens}, {"--hidden", hidden}, {"--topk", topk}, {"--experts", experts},
                {"--device", device}, {"--backend", backend}, {"--iters", iters}, {"--warmup", warmup}, {"--seed", seed}}) {
            a.add((String) p[0]);
            a.add(String.valueOf(p[1]));
        }
        a.add(fp8 ? "--fp8" : "--no-fp8");
        return a;
    }
}
