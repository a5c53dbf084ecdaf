package org.mooncake4j.cli;

import java.time.Duration;
import java.util.stream.IntStream;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.MooncakeBackendOptions;
import org.mooncake4j.pg.ProcessGroup;
import org.mooncake4j.pg.ProcessGroupBuilder;
import org.mooncake4j.pg.ReduceOp;

/**
 * The elastic-recovery protocol of Mooncake's process group, packaged for worker mains started by
 * {@code mooncake4j run --max-restarts K}: a rank whose process died is restarted alone with
 * {@code MOONCAKE_EXTENSION=1}, enters the running group as an extension rank and waits to be
 * admitted; the healthy ranks admit it from their loop.
 *
 * <pre>{@code
 * boolean joining = Elastic.isExtension();
 * ProcessGroup pg = Elastic.initFromEnv(worldSize);          // normal init, or extension init + joinGroup
 * Tensor state = ...;                                           // what a joiner must catch up on (step number, weights, ...)
 * if (joining) Elastic.syncState(pg, state, true);             // receives the healthy ranks' state
 * while (training) {
 *     step(pg);                                                 // collectives; survivors go on when a rank dies
 *     if (Elastic.recoverReady(pg).length > 0) Elastic.syncState(pg, state, false);
 * }
 * Elastic.close(pg);
 * }</pre>
 *
 * <p>Every method that takes a group is a collective of it: all its active ranks call it at the same
 * point of their sequence of operations, on the thread that issues the group's collectives (one
 * thread per group, as with every {@link ProcessGroup} call). {@link #recoverReady} costs one small
 * all-reduce per call (plus a {@code peerState} broadcast while a rank is missing); call it every
 * step, or every k-th step with the same k on every rank. A rank that gets
 * {@link org.mooncake4j.pg.RankRemovedException} (it was dropped while alive) should exit with a
 * non-zero code: the launcher then restarts it as an extension rank.
 *
 * <p>Ownership: {@link #initFromEnv} allocates the {@code activeRanks} tensor that the group keeps
 * current for its whole life; {@link #close(ProcessGroup)} closes the group and then that tensor.
 * Stateless otherwise; the static methods share nothing between threads.
 */
public final class Elastic {
    /** Environment variable: how long a joining rank waits to be admitted, in milliseconds. */
    public static final String JOIN_TIMEOUT_ENV = "MOONCAKE_JOIN_TIMEOUT_MS";
    /** How long a joining rank waits to be admitted when {@value #JOIN_TIMEOUT_ENV} is not set. */
    public static final Duration DEFAULT_JOIN_WAIT = Duration.ofSeconds(120);

    private Elastic() {}

    /** Whether this process is a replacement that must join the running group ({@code MOONCAKE_EXTENSION=1}). */
    public static boolean isExtension() {
        return "1".equals(trimmed(System.getenv(WorkerLauncher.EXTENSION_ENV)));
    }

    /** How many times the launcher has restarted this rank ({@code MOONCAKE_RESTART_COUNT}; 0 when unset). */
    public static int restartCount() {
        String v = trimmed(System.getenv(WorkerLauncher.RESTART_COUNT_ENV));
        return v == null || v.isEmpty() ? 0 : parse(WorkerLauncher.RESTART_COUNT_ENV, v);
    }

    /** How long {@link #initFromEnv(int)} lets a joining rank wait for admission: {@value #JOIN_TIMEOUT_ENV}, else {@link #DEFAULT_JOIN_WAIT}. */
    public static Duration joinWait() {
        String v = trimmed(System.getenv(JOIN_TIMEOUT_ENV));
        if (v == null || v.isEmpty()) return DEFAULT_JOIN_WAIT;
        int ms = parse(JOIN_TIMEOUT_ENV, v);
        if (ms <= 0) throw new IllegalArgumentException(JOIN_TIMEOUT_ENV + "=" + v + " must be a positive number of milliseconds");
        return Duration.ofMillis(ms);
    }

    /** {@link #initFromEnv(int)} with {@code maxWorldSize} = {@code WORLD_SIZE} (replacements only, no growth). */
    public static ProcessGroup initFromEnv() {
        return initFromEnv(envInt("WORLD_SIZE"));
    }

    /**
     * {@link #initFromEnv(ProcessGroupBuilder, int, Duration)} with a default builder (rendezvous
     * and timeout from the environment, backend {@code mooncake-cpu}) and {@link #joinWait()}.
     */
    public static ProcessGroup initFromEnv(int maxWorldSize) {
        return initFromEnv(ProcessGroup.builder(), maxWorldSize, joinWait());
    }

    /**
     * Creates this process's member of the world group from {@code RANK} and {@code WORLD_SIZE},
     * reserving {@code maxWorldSize} rank slots. A first process ({@code MOONCAKE_EXTENSION} unset or
     * {@code 0}) initializes normally with ranks {@code 0..WORLD_SIZE-1} active. A replacement
     * ({@code MOONCAKE_EXTENSION=1}) initializes with {@code isExtension=true} and blocks in
     * {@code joinGroup} for at most {@code joinWait} until the healthy ranks admit it (their
     * {@link #recoverReady}); it must then take part in their {@link #syncState}. The builder's rank,
     * world size and options are set here; its other settings (backend, timeout, store, token) are
     * kept. Throws what {@code init} or {@code joinGroup} throw ({@link org.mooncake4j.core.TimeoutException}
     * when nobody admits this rank in time), after releasing what it created.
     */
    public static ProcessGroup initFromEnv(ProcessGroupBuilder builder, int maxWorldSize, Duration joinWait) {
        int rank = envInt("RANK");
        int world = envInt("WORLD_SIZE");
        if (world <= 0) throw new IllegalArgumentException("WORLD_SIZE=" + world + " must be positive");
        if (maxWorldSize < world) {
            throw new IllegalArgumentException("maxWorldSize " + maxWorldSize + " is smaller than WORLD_SIZE " + world
                    + "; pass at least the world size (more reserves slots for ranks added with extendGroupSizeTo)");
        }
        if (rank < 0 || rank >= maxWorldSize) throw new IllegalArgumentException("RANK=" + rank + " is outside 0.." + (maxWorldSize - 1));
        if (joinWait.isNegative() || joinWait.isZero()) throw new IllegalArgumentException("joinWait must be positive, got " + joinWait);
        boolean extension = isExtension();
        // a joiner may be a rank beyond WORLD_SIZE that the healthy ranks reserved with extendGroupSizeTo
        int ids = extension ? Math.max(world, rank + 1) : world;
        Tensor active = Tensor.zeros(DType.INT32, Device.CPU, maxWorldSize);
        ProcessGroup pg;
        try {
            for (int r = 0; r < ids; r++) active.setLong(r, 1);
            pg = builder.rank(rank).worldSize(ids).options(new MooncakeBackendOptions(active, extension, maxWorldSize)).init();
        } catch (RuntimeException e) {
            active.close();
            throw e;
        }
        if (!extension) return pg;
        try {
            pg.joinGroup(joinWait);
            return pg;
        } catch (RuntimeException e) {
            close(pg);
            throw e;
        }
    }

    /**
     * Called by every active rank at the same point of its loop: admits the replacement ranks that
     * are ready, and returns them (empty when none). The missing ranks are agreed first (an
     * all-reduce of each rank's view of the inactive ranks below {@code worldSize}), so that a rank
     * that has not yet seen the latest failure agreement takes the same path as the others; then
     * {@code peerState} (a broadcast from the lowest member, so every rank gets the same answer) says
     * which have published their join request, and {@code recoverRanks} admits those in a new
     * epoch. When it returns a non-empty array, every rank, old and new, must run the same next
     * collective: {@link #syncState} is made for that.
     */
    public static int[] recoverReady(ProcessGroup pg) {
        int ids = pg.worldSize();
        int[] mask = pg.activeRanks().toIntArray();
        int[] missing;
        try (Tensor t = Tensor.zeros(DType.INT32, Device.CPU, ids)) {
            for (int r = 0; r < ids; r++) if (mask[r] == 0) t.setLong(r, 1);
            pg.allReduce(t, ReduceOp.MAX);
            int[] agreed = t.toIntArray();
            missing = IntStream.range(0, ids).filter(r -> agreed[r] != 0).toArray();
        }
        if (missing.length == 0) return missing;
        boolean[] ready = pg.peerState(missing);
        int[] admit = IntStream.range(0, missing.length).filter(i -> ready[i]).map(i -> missing[i]).toArray();
        if (admit.length > 0) pg.recoverRanks(admit);
        return admit;
    }

    /**
     * Brings joiners up to date: broadcasts {@code state} from the lowest rank that is not joining.
     * The healthy ranks call it with {@code joining=false} right after {@link #recoverReady} returned
     * ranks; each joiner calls it with {@code joining=true} as its first collective after
     * {@link #initFromEnv}. {@code state} must have the same dtype and size everywhere.
     */
    public static void syncState(ProcessGroup pg, Tensor state, boolean joining) {
        try (Tensor root = Tensor.of(new int[] {joining ? Integer.MAX_VALUE : pg.rank()})) {
            pg.allReduce(root, ReduceOp.MIN);
            long r = root.getLong(0);
            if (r == Integer.MAX_VALUE) {
                throw new IllegalStateException("syncState: every active rank said it is joining, so nobody holds the state to send;"
                        + " the healthy ranks must call it with joining=false");
            }
            pg.broadcast(state, (int) r);
        }
    }

    /** Closes {@code pg}, then the {@code activeRanks} tensor {@link #initFromEnv} gave it. */
    public static void close(ProcessGroup pg) {
        Tensor active = pg.activeRanks();
        try {
            pg.close();
        } finally {
            active.close();
        }
    }

    private static int envInt(String name) {
        String v = trimmed(System.getenv(name));
        if (v == null || v.isEmpty()) throw new IllegalArgumentException(name + " is not set: start the worker with 'mooncake4j run'");
        return parse(name, v);
    }

    private static int parse(String name, String v) {
        try {
            return Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(name + "=" + v + " is not a whole number");
        }
    }

    private static String trimmed(String s) { return s == null ? null : s.trim(); }
}
