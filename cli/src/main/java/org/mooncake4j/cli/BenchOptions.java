package org.mooncake4j.cli;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ReduceOp;
import picocli.CommandLine.Option;

/**
 * The benchmark flags, with nccl-tests' names and defaults, shared by {@code pgbench} and its
 * workers: the command parses and {@linkplain #validate() checks} them, then hands them to every
 * worker as arguments ({@link #toArgs()}), so both sides read one definition.
 *
 * <p>A mutable picocli target: filled by the parser, then only read, on one thread.
 */
final class BenchOptions {
    @Option(names = "--collective", paramLabel = "NAME", defaultValue = "all_reduce", converter = BenchCollective.Converter.class,
            description = "all_reduce, all_gather, broadcast, reduce_scatter, alltoall or sendrecv (default: ${DEFAULT-VALUE})")
    BenchCollective collective;

    @Option(names = "--backend", paramLabel = "NAME", defaultValue = ProcessGroup.BACKEND_CPU, description = "Process-group backend (default: ${DEFAULT-VALUE})")
    String backend;

    @Option(names = "--device", paramLabel = "DEV", defaultValue = "cpu", description = "Where the buffers live (default: ${DEFAULT-VALUE})")
    String device;

    @Option(names = {"-g", "--ranks"}, paramLabel = "N", defaultValue = "2", description = "Number of ranks (worker processes) to launch (default: ${DEFAULT-VALUE})")
    int ranks;

    @Option(names = {"-b", "--min-bytes"}, paramLabel = "SIZE", defaultValue = "32M", converter = ByteSize.Converter.class,
            description = "Smallest size, e.g. 8, 1K, 64M (default: ${DEFAULT-VALUE})")
    long minBytes;

    @Option(names = {"-e", "--max-bytes"}, paramLabel = "SIZE", defaultValue = "32M", converter = ByteSize.Converter.class,
            description = "Largest size (default: ${DEFAULT-VALUE})")
    long maxBytes;

    @Option(names = {"-f", "--step-factor"}, paramLabel = "F", defaultValue = "2", description = "Multiply the size by this factor each step (default: ${DEFAULT-VALUE})")
    long stepFactor;

    @Option(names = {"-n", "--iters"}, paramLabel = "N", defaultValue = "20", description = "Timed iterations per size (default: ${DEFAULT-VALUE})")
    int iters;

    @Option(names = "--torch-iters",
            description = "Time each size with the iteration count of PyTorch's baseline scripts (torch_baselines.py, torch_nccl_more.py),"
                    + " so both sides of a side-by-side run average the same number of calls: 200 when each rank's piece (all_gather,"
                    + " reduce_scatter, alltoall: the size over the ranks; else the whole size) is below 1 MiB, 50 below 64 MiB, 10 from"
                    + " 64 MiB. -n is then ignored")
    boolean torchIters;

    @Option(names = {"-w", "--warmup"}, paramLabel = "N", defaultValue = "5", description = "Untimed iterations before timing each size (default: ${DEFAULT-VALUE})")
    int warmup;

    @Option(names = {"-c", "--check"}, paramLabel = "0|1", defaultValue = "1", description = "1: verify each size's result and count wrong elements; 0: skip (default: ${DEFAULT-VALUE})")
    int check;

    @Option(names = {"-d", "--dtype"}, paramLabel = "DTYPE", defaultValue = "float32", description = "Element type: float32, bfloat16, float16, float64, int32, int64, ... (default: ${DEFAULT-VALUE})")
    String dtype;

    @Option(names = {"-o", "--op"}, paramLabel = "OP", defaultValue = "sum", description = "Reduction: sum, prod, min, max, avg (bitwise band, bor, bxor for integers) (default: ${DEFAULT-VALUE})")
    String op;

    @Option(names = {"-r", "--root"}, paramLabel = "RANK", defaultValue = "0", description = "Root rank of rooted collectives (default: ${DEFAULT-VALUE})")
    int root;

    @Option(names = {"-R", "--register"}, paramLabel = "0|1", defaultValue = "1",
            description = "1: host buffers are registered memory (ProcessGroup.allocate), which large all-reduces between processes of one host"
                    + " read in place; 0: ordinary tensors (default: ${DEFAULT-VALUE})")
    int register;

    @Option(names = "--cpu-bind", paramLabel = "auto|none", defaultValue = "auto",
            description = "auto: when this host has at least one but fewer than two CPUs per rank, bind each rank's benchmark thread to a"
                    + " CPU of its own (rank i to the i-th CPU it may run on), as MPI launchers do; none: leave placement to the scheduler"
                    + " (default: ${DEFAULT-VALUE})")
    String cpuBind;

    /** Checks every flag and their combination; the message says which flag is wrong and what it accepts. */
    void validate() {
        if (ranks < 1) throw new IllegalArgumentException("-g/--ranks must be at least 1, got " + ranks);
        if (ranks < collective.minRanks()) {
            throw new IllegalArgumentException("sendrecv needs at least 2 ranks (-g 2): each rank sends to the next one in a ring");
        }
        if (iters < 1) throw new IllegalArgumentException("-n/--iters must be at least 1, got " + iters);
        if (warmup < 0) throw new IllegalArgumentException("-w/--warmup must not be negative, got " + warmup);
        if (check != 0 && check != 1) throw new IllegalArgumentException("-c/--check takes 0 or 1, got " + check);
        if (register != 0 && register != 1) throw new IllegalArgumentException("-R/--register takes 0 or 1, got " + register);
        if (!cpuBind.equals("auto") && !cpuBind.equals("none")) throw new IllegalArgumentException("--cpu-bind takes auto or none, got " + cpuBind);
        if (root < 0 || root >= ranks) throw new IllegalArgumentException("-r/--root " + root + " is not a rank of 0.." + (ranks - 1));
        if (dtype() == DType.BOOL) throw new IllegalArgumentException("-d bool cannot be benchmarked: pick a numeric dtype such as float32");
        ReduceOp reduceOp = op();
        boolean bitwise = reduceOp == ReduceOp.BAND || reduceOp == ReduceOp.BOR || reduceOp == ReduceOp.BXOR;
        if (collective.reduces() && bitwise && !dtype().isInteger()) {
            throw new IllegalArgumentException("-o " + op + " is a bitwise reduction and needs an integer dtype (e.g. -d int32), not " + dtype().torchName());
        }
        String b = backend.toLowerCase(Locale.ROOT);
        if (!b.equals(ProcessGroup.BACKEND_CPU) && !b.equals(ProcessGroup.BACKEND_CUDA)) {
            throw new IllegalArgumentException("--backend " + backend + " is unknown: use " + ProcessGroup.BACKEND_CPU + " (host tensors) or "
                    + ProcessGroup.BACKEND_CUDA + " (CUDA tensors)");
        }
        Device d = Device.parse(device);
        if (d.isCuda() && !b.equals(ProcessGroup.BACKEND_CUDA)) {
            throw new IllegalArgumentException("--device " + device + " puts the buffers on a GPU, which backend " + b + " cannot move; use --backend "
                    + ProcessGroup.BACKEND_CUDA + " --device cuda");
        }
        if (d.isCpu() && b.equals(ProcessGroup.BACKEND_CUDA)) {
            throw new IllegalArgumentException("--backend " + ProcessGroup.BACKEND_CUDA + " moves CUDA tensors but --device is cpu; use --device cuda"
                    + " (each rank uses cuda:LOCAL_RANK) or --backend " + ProcessGroup.BACKEND_CPU + " for host buffers");
        }
        sizes();
    }

    DType dtype() { return DType.parse(dtype); }

    /** Timed iterations of a row of {@code bytes} among {@code n} ranks: {@code -n}, or PyTorch's count with {@code --torch-iters}. */
    int itersFor(long bytes, int n) {
        if (!torchIters) return iters;
        return torchIterations(collective.perRankPieces() ? bytes / n : bytes);
    }

    /** The iteration count of torch_baselines.py and torch_nccl_more.py for a per-rank piece of {@code pieceBytes}. */
    static int torchIterations(long pieceBytes) {
        return pieceBytes < (1L << 20) ? 200 : pieceBytes < (64L << 20) ? 50 : 10;
    }

    ReduceOp op() { return parseOp(op); }

    /** The sweep, in bytes. */
    List<Long> sizes() { return ByteSize.sweep(minBytes, maxBytes, stepFactor); }

    /** nccl-tests' operator names; {@code product} and {@code mean} are accepted too. */
    static ReduceOp parseOp(String name) {
        return switch (name.trim().toLowerCase(Locale.ROOT)) {
            case "sum" -> ReduceOp.SUM;
            case "prod", "product" -> ReduceOp.PRODUCT;
            case "min" -> ReduceOp.MIN;
            case "max" -> ReduceOp.MAX;
            case "avg", "mean" -> ReduceOp.AVG;
            case "band" -> ReduceOp.BAND;
            case "bor" -> ReduceOp.BOR;
            case "bxor" -> ReduceOp.BXOR;
            default -> throw new IllegalArgumentException("-o/--op " + name + " is unknown: use sum, prod, min, max, avg, band, bor or bxor");
        };
    }

    /** The operator as nccl-tests prints it ({@code prod}, not {@code product}). */
    static String opLabel(ReduceOp op) { return op == ReduceOp.PRODUCT ? "prod" : op.name().toLowerCase(Locale.ROOT); }

    /** These options as command-line arguments that parse back to the same values. */
    List<String> toArgs() {
        List<String> a = new ArrayList<>();
        add(a, "--collective", collective.label());
        add(a, "--backend", backend);
        add(a, "--device", device);
        add(a, "--ranks", ranks);
        add(a, "--min-bytes", minBytes);
        add(a, "--max-bytes", maxBytes);
        add(a, "--step-factor", stepFactor);
        add(a, "--iters", iters);
        add(a, "--warmup", warmup);
        if (torchIters) a.add("--torch-iters");
        add(a, "--check", check);
        add(a, "--dtype", dtype);
        add(a, "--op", op);
        add(a, "--root", root);
        add(a, "--register", register);
        add(a, "--cpu-bind", cpuBind);
        return a;
    }

    private static void add(List<String> args, String flag, Object value) {
        args.add(flag);
        args.add(String.valueOf(value));
    }
}
