package org.mooncake4j.pg;

import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.pg.collective.AllGather;
import org.mooncake4j.pg.collective.AllReduce;
import org.mooncake4j.pg.collective.AllToAll;
import org.mooncake4j.pg.collective.Backup;
import org.mooncake4j.pg.collective.Barrier;
import org.mooncake4j.pg.collective.Broadcast;
import org.mooncake4j.pg.collective.Channels;
import org.mooncake4j.pg.collective.CollectiveContext;
import org.mooncake4j.pg.collective.Gather;
import org.mooncake4j.pg.collective.GroupLayout;
import org.mooncake4j.pg.collective.OpCode;
import org.mooncake4j.pg.collective.Reduce;
import org.mooncake4j.pg.collective.ReduceScatter;
import org.mooncake4j.pg.collective.Reduction;
import org.mooncake4j.pg.gpu.GpuBackend;
import org.mooncake4j.pg.membership.FailureAgreement;
import org.mooncake4j.pg.membership.GroupState;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.MetadataStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A Mooncake process group: {@code dist.init_process_group(backend="mooncake-cpu", ...)} for the JVM.
 *
 * <p>Collectives are called in the same order on every member; each has an {@code ...Async} twin
 * returning a {@link Work}. Blocking calls run on the calling thread when no asynchronous operation is
 * queued (no thread hand-off on the fast path); asynchronous ones run in submission order on the
 * group's operation thread, so several may be in flight. P2P operations run on one thread per peer and
 * direction, independent of collectives. Every operation has a deadline (the group timeout): a peer
 * that dies or hangs makes it fail with {@link PeerFailureException} naming the ranks, never hang.
 *
 * <p>One thread at a time may issue collectives on a group (as with torch.distributed). The group owns
 * its registered segment and threads; {@link #close()} releases them.
 */
public final class ProcessGroup implements AutoCloseable {
    public static final String BACKEND_CPU = "mooncake-cpu";
    public static final String BACKEND_CUDA = "mooncake";
    private static final Logger LOG = LoggerFactory.getLogger(ProcessGroup.class);
    private static final int[] NONE = new int[0];

    private final String backend;
    private final String name;
    private final int rank;
    private final int slots;
    private final Duration timeout;
    private final GroupRuntime runtime;
    private final TransferEngine engine;
    private final MetadataStore store;
    private final FailureAgreement agreement;
    private final GroupLayout layout;
    private final Backup backup = new Backup();
    private final Tensor activeRanks;
    /** The device side of backend mooncake (null for mooncake-cpu). */
    private final GpuBackend gpu;
    /** {@link #gpu}'s device (null for mooncake-cpu). */
    private final Device gpuDevice;
    /** This group's members as ranks of the parent group (null for the world group). */
    private final int[] parentRanks;
    private volatile GroupState state;
    private volatile EpochPlane plane;
    private volatile boolean joined;
    /** True while init's first barrier runs (it gets {@link #initTimeout()}). */
    private volatile boolean initializing;
    private final boolean extensionProcess;
    /** Identifies this process's join request, so the healthy ranks admit exactly it (never 0). */
    private final long joinNonce = java.util.concurrent.ThreadLocalRandom.current().nextLong(1, Long.MAX_VALUE);
    private final long initEpoch;
    private final java.util.TreeSet<Integer> droppedSinceInit = new java.util.TreeSet<>();
    private volatile int[] lastDropped = new int[0];
    private volatile boolean lastCovered = true;
    private final ReentrantLock execLock = new ReentrantLock();
    private final AtomicInteger pendingAsync = new AtomicInteger();
    private ExecutorService opThread;
    private final ExecutorService[] sendThreads;
    private final ExecutorService[] recvThreads;
    private final List<ProcessGroup> children = new ArrayList<>();
    private int subgroupCounter;
    private volatile RuntimeException broken;
    private volatile boolean closed;

    ProcessGroup(GroupRuntime runtime, String backend, String name, int rank, int worldSize, int slots,
                 Tensor activeRanks, boolean extension, int[] parentRanks, Duration timeout, int cudaOrdinal) {
        this.runtime = runtime;
        this.engine = runtime.engine();
        this.store = runtime.store();
        this.backend = backend;
        this.name = name;
        this.rank = rank;
        this.slots = slots;
        this.timeout = timeout;
        this.activeRanks = activeRanks;
        this.parentRanks = parentRanks;
        this.extensionProcess = extension;
        this.layout = new GroupLayout(slots, slotBytes());
        this.sendThreads = new ExecutorService[slots];
        this.recvThreads = new ExecutorService[slots];
        if (backend.equals(BACKEND_CUDA)) {
            try {
                this.gpu = GpuBackend.open(cudaOrdinal, store, keyPrefix(), name, rank, timeout);
            } catch (RuntimeException e) {
                throw new IllegalStateException("backend 'mooncake' cannot start on rank " + rank + " (cuda:" + cudaOrdinal + "): " + e.getMessage(), e);
            }
        } else {
            this.gpu = null;
        }
        this.gpuDevice = gpu == null ? null : Device.cuda(gpu.device().ordinal());
        boolean[] mask = new boolean[slots];
        int[] given = activeRanks.toIntArray();
        for (int r = 0; r < slots; r++) mask[r] = r < worldSize && given[r] != 0;
        if (!extension && !mask[rank]) {
            throw new IllegalArgumentException("rank " + rank + " is marked inactive in activeRanks " + Arrays.toString(given)
                    + "; a rank that starts inactive must be an extension rank (isExtension=true) that joins with joinGroup()");
        }
        this.agreement = new FailureAgreement(store, keyPrefix(), name, rank, timeout);
        GroupState s = agreement.initOrCheck(GroupState.initial(slots, worldSize, mask), extension);
        this.state = s;
        this.initEpoch = s.epoch();
        agreement.startWatcher();
        if (extension) {
            if (rank >= slots) throw new IllegalArgumentException("rank " + rank + " is outside max_world_size " + slots);
            store.set(keyPrefix() + "join/" + rank, Long.toHexString(joinNonce).getBytes(StandardCharsets.UTF_8));
            writeMask(s);
            LOG.info("init group={} rank={} epoch={} extension=true: waiting for joinGroup()", name, rank, s.epoch());
            return;
        }
        try {
            // processes start at different times: init waits longer than one operation's timeout
            initializing = true;
            plane = buildPlane(s, Deadline.after(initTimeout()));
            joined = true;
            writeMask(s);
            barrier();
            initializing = false;
        } catch (RuntimeException e) {
            shutdown();
            throw e;
        }
        LOG.info("init group={} rank={} world_size={} slots={} epoch={} backend={} transport={}", name, rank, worldSize, slots,
                state.epoch(), backend, describeTransports());
    }

    /** The bound on init's rendezvous and first barrier: the group timeout, at least 30 s. */
    private Duration initTimeout() {
        return timeout.compareTo(Duration.ofSeconds(30)) > 0 ? timeout : Duration.ofSeconds(30);
    }

    private EpochPlane buildPlane(GroupState s, Deadline deadline) {
        long e = s.epoch();
        return EpochPlane.build(engine, store, keyPrefix(), "pg." + name.replace('/', '.') + ".r" + rank + "." + runtime.nonce(), rank,
                s, layout, deadline, () -> agreement.changedSince(e), backup, this::onSyncFailure, gpu == null ? runtime.shared() : null);
    }

    // ---- creation ----------------------------------------------------------------------------

    /** {@code dist.init_process_group(backend, rank=rank, world_size=worldSize, pg_options=options)} with rendezvous from the environment. */
    public static ProcessGroup init(String backend, int rank, int worldSize, MooncakeBackendOptions options) {
        return builder().backend(backend).rank(rank).worldSize(worldSize).options(options).init();
    }

    public static ProcessGroupBuilder builder() { return new ProcessGroupBuilder(); }

    static long slotBytes() {
        String s = System.getenv("MOONCAKE_SLOT_BYTES");
        long v = s != null ? Long.parseLong(s.trim()) : Long.getLong("mooncake4j.slotBytes", 1L << 20);
        return Math.max(8192, v / 4096 * 4096);
    }

    String keyPrefix() { return "mooncake4j/pg/" + name + "/"; }

    // ---- identity and state ------------------------------------------------------------------

    public int rank() { return rank; }

    /** The visible active size ({@code dist.get_world_size()}): the members of the current epoch. */
    public int size() { return state.members().length; }

    /** Rank ids in use (active or reserved-inactive), as set at init or by {@link #extendGroupSizeTo}. */
    public int worldSize() { return state.worldSize(); }

    /** Reserved rank slots ({@code max_world_size}). */
    public int maxWorldSize() { return slots; }

    public String backend() { return backend; }

    /** The group's name in the store ({@code world}, {@code world/g1}, ...). */
    public String name() { return name; }

    /** The membership epoch: it grows by one at every agreed failure and every recovery. */
    public long epoch() { return state.epoch(); }

    /** The rank-health mask passed in the options, kept current by the backend (1 = active). */
    public Tensor activeRanks() { return activeRanks; }

    /** The number of ranks this rank is synchronized with (the active members, itself included). */
    public int numSyncedRanks() { return joined ? state.members().length : 0; }

    public Duration timeout() { return timeout; }

    /** The transfer engine this group's segments are registered with (shared with the process's other groups). */
    public TransferEngine transferEngine() { return engine; }

    /** The metadata store this group rendezvouses and agrees through. */
    public MetadataStore store() { return store; }

    /** Ranks removed from this group since this process joined it, in rank order. */
    public int[] droppedRanks() {
        synchronized (droppedSinceInit) { return droppedSinceInit.stream().mapToInt(Integer::intValue).toArray(); }
    }

    /** Ranks removed while the last completed operation ran (empty when none). */
    public int[] lastDroppedRanks() { return lastDropped.clone(); }

    /** Whether the last completed operation's result covered every rank active when it started. */
    public boolean lastLocalSuccess() { return lastCovered; }

    /** Which transport and network interface serve {@code location} ({@code cpu}, {@code cpu:N} or a peer rank as {@code rank:N}), or why none does. */
    public String preferredHca(String location) {
        String loc = location.trim().toLowerCase(java.util.Locale.ROOT);
        if (loc.startsWith("rank:")) {
            int p = Integer.parseInt(loc.substring(5));
            checkRank(p, "rank");
            if (p == rank) return "local (this rank)";
            EpochPlane pl = plane;
            RemoteSegment r = pl == null ? null : pl.peer(p);
            if (r != null) return r.transport() + ": connected to segment " + r.name() + " of engine " + r.engineName();
            String seg = peerSegmentName(p);
            return seg == null ? "none: rank " + p + " is not an active member" : engine.preferredTransport(seg);
        }
        if (loc.equals("cpu") || loc.startsWith("cpu:")) {
            String nic;
            try {
                java.net.NetworkInterface ni = java.net.NetworkInterface.getByInetAddress(java.net.InetAddress.getByName(engine.hostIp()));
                nic = ni == null ? "no interface holds " + engine.hostIp() : ni.getName();
            } catch (java.io.IOException e) {
                nic = "unknown (" + e.getMessage() + ")";
            }
            return "tcp via " + nic + " (" + engine.hostIp() + ":" + engine.port() + ") for peers on other hosts; shm for peers on this host"
                    + " (transport " + engine.transport() + ")";
        }
        if (loc.startsWith("cuda")) return "none: backend " + backend + " moves host memory only; device tensors need backend mooncake";
        throw new IllegalArgumentException("Unknown location '" + location + "': use cpu, cpu:N, cuda:N or rank:N");
    }

    private String peerSegmentName(int p) {
        return store.get(EpochPlane.memberKey(keyPrefix(), state.epoch(), p)).map(b -> new String(b, StandardCharsets.UTF_8)).orElse(null);
    }

    private String describeTransports() {
        StringBuilder sb = new StringBuilder();
        for (int p : state.members()) {
            if (p == rank) continue;
            String seg = peerSegmentName(p);
            if (seg != null) sb.append(sb.isEmpty() ? "" : ",").append(p).append(':').append(engine.openSegment(seg, Deadline.after(timeout)).transport());
        }
        return sb.toString();
    }

    private void writeMask(GroupState s) {
        if (activeRanks.device().isCpu()) {
            for (int r = 0; r < slots; r++) activeRanks.setLong(r, s.isActive(r) ? 1 : 0);
            return;
        }
        int[] m = new int[slots];
        for (int r = 0; r < slots; r++) m[r] = s.isActive(r) ? 1 : 0;
        activeRanks.copyFrom(Tensor.of(m)); // the backend mooncake keeps activeRanks on the GPU
    }

    /** The stage of one operation: host copies of its device tensors (backend mooncake). */
    private Stage stage() {
        return gpu == null ? Stage.HOST : Stage.forDevice(backend, gpuDevice);
    }

    /** Whether {@code t} is a device tensor on this rank's GPU (backend mooncake); fails for another GPU. */
    private boolean onGpu(Tensor t) {
        if (gpu == null || t == null || t.device().isCpu()) return false;
        Stage.checkDevice(gpuDevice, backend, t, "a tensor");
        return true;
    }

    /** The GPU device this rank's group uses (backend mooncake), or -1. */
    public int cudaDevice() { return gpu == null ? -1 : gpu.device().ordinal(); }

    /**
     * A CPU tensor in memory registered with this process's transfer engine (shared memory the other
     * processes on the host map), zero-filled: the host-memory counterpart of NCCL's registered user
     * buffers. A large {@link #allReduce} whose every member passes such a tensor, all on one host,
     * reads the peers' data in place instead of copying it through the staging buffers (see
     * docs/DESIGN.md, "Registered memory"); with ordinary tensors every collective works the same,
     * only slower for large all-reduces. {@link Tensor#close()} unregisters the memory; what is still
     * open when the last group of this process closes is released then. The other processes keep their
     * mapping of a released tensor until their engine closes, so allocate long-lived buffers (as for
     * NCCL registration), not one per call.
     */
    public Tensor allocate(DType dtype, long... shape) {
        long bytes = Tensor.bytesFor(java.util.Objects.requireNonNull(dtype, "dtype"), shape);
        if (closed) throw new IllegalStateException("process group " + name + " is closed: allocate registered memory while it is open");
        org.mooncake4j.pg.collective.SharedMemory mem = runtime.shared();
        org.mooncake4j.pg.collective.SharedMemory.Region r = mem.allocate(bytes);
        return Tensor.wrap(r.memory().asSlice(0, bytes), () -> mem.free(r), dtype, shape);
    }

    // ---- collectives -------------------------------------------------------------------------

    /** {@code dist.all_reduce(t, op)}: every member ends with the reduction over all members, bitwise identical. */
    public void allReduce(Tensor t, ReduceOp op) { allReduceAsync(t, op, false); }

    public Work allReduceAsync(Tensor t, ReduceOp op) { return allReduceAsync(t, op, true); }

    private Work allReduceAsync(Tensor t0, ReduceOp op, boolean async) {
        if (t0 != null) Reduction.validate(t0.dtype(), op);
        if (onGpu(t0) && GpuBackend.allReduceKernel(t0.dtype(), op)) {
            long ptr = t0.devicePointer();
            long n = t0.numel();
            DType dt = t0.dtype();
            return run(OpCode.ALL_REDUCE, async, c -> gpu.allReduce(c, ptr, n, dt, op), null, Stage.HOST,
                    op == ReduceOp.SUM && n > 0 && worldSize() > 1);
        }
        Stage st = stage();
        Tensor t = st.host(t0, "tensor", true, true);
        MemorySegment data = t.segment();
        return run(OpCode.ALL_REDUCE, async, c -> AllReduce.run(c, t.dtype(), op, data, t.numel()), null, st);
    }

    public void broadcast(Tensor t, int root) { broadcastAsync(t, root, false); }

    public Work broadcastAsync(Tensor t, int root) { return broadcastAsync(t, root, true); }

    private Work broadcastAsync(Tensor t0, int root, boolean async) {
        checkRoot(root);
        Stage st = stage();
        Tensor t = st.host(t0, "tensor", rank == root, rank != root);
        MemorySegment data = t.segment();
        return run(OpCode.BROADCAST, async, c -> {
            requireRoot(c, root, "broadcast");
            Broadcast.run(c, data, t.byteSize(), root);
        }, null, st);
    }

    /** {@code dist.all_gather(out, in)}: {@code out} has one tensor per rank of the group (world size), each shaped like {@code in}. */
    public void allGather(List<Tensor> out, Tensor in) { allGatherAsync(out, in, false); }

    public Work allGatherAsync(List<Tensor> out, Tensor in) { return allGatherAsync(out, in, true); }

    private Work allGatherAsync(List<Tensor> out0, Tensor in0, boolean async) {
        checkList(out0, "output", nonNull(in0, "input"));
        Stage st = stage();
        Tensor in = st.host(in0, "input", true, false);
        List<Tensor> out = st.hostList(out0, "output", false, true);
        return run(OpCode.ALL_GATHER, async, c -> {
            int[] m = c.members();
            MemorySegment[] outs = new MemorySegment[m.length];
            long[] offs = new long[m.length];
            for (int i = 0; i < m.length; i++) outs[i] = out.get(m[i]).segment();
            AllGather.run(c, in.segment(), in.byteSize(), outs, offs);
        }, r -> out.get(r).segment().fill((byte) 0), st);
    }

    /** {@code dist.all_gather_into_tensor(out, in)}: {@code out} holds world-size copies of {@code in}'s shape, in rank order. */
    public void allGatherIntoTensor(Tensor out, Tensor in) { allGatherIntoTensorAsync(out, in, false); }

    public Work allGatherIntoTensorAsync(Tensor out, Tensor in) { return allGatherIntoTensorAsync(out, in, true); }

    private Work allGatherIntoTensorAsync(Tensor out0, Tensor in0, boolean async) {
        if (out0 != null && in0 != null && onGpu(out0) && onGpu(in0)) {
            checkSameDtype(out0, in0);
            checkNumel(out0, in0.numel() * worldSize(), "all_gather_into_tensor output", "world_size x input numel");
            long bytes = in0.byteSize();
            long src = in0.devicePointer(), dst = out0.devicePointer();
            return runKernel(OpCode.ALL_GATHER, async, out0, in0, c -> gpu.allGather(c, src, dst, bytes),
                    (c, o, i) -> allGatherIntoHost(c, o, i, bytes), r -> gpu.zero(dst + r * bytes, bytes), bytes > 0);
        }
        checkSameDtype(nonNull(out0, "output"), nonNull(in0, "input"));
        checkNumel(out0, in0.numel() * worldSize(), "all_gather_into_tensor output", "world_size x input numel");
        Stage st = stage();
        Tensor in = st.host(in0, "input", true, false);
        Tensor out = st.host(out0, "output", false, true);
        long bytes = in.byteSize();
        return run(OpCode.ALL_GATHER, async, c -> allGatherIntoHost(c, out, in, bytes), r -> out.segment().asSlice(r * bytes, bytes).fill((byte) 0), st);
    }

    private static void allGatherIntoHost(CollectiveContext c, Tensor out, Tensor in, long bytes) {
        {
            int[] m = c.members();
            MemorySegment[] outs = new MemorySegment[m.length];
            long[] offs = new long[m.length];
            for (int i = 0; i < m.length; i++) {
                outs[i] = out.segment();
                offs[i] = m[i] * bytes;
            }
            AllGather.run(c, in.segment(), bytes, outs, offs);
        }
    }

    /**
     * {@code dist.reduce_scatter_tensor(out, in, op)}: {@code in} holds world-size parts shaped like
     * {@code out}, part r for rank r; each member gets its part reduced over the members (the parts of
     * inactive ranks are ignored).
     */
    public void reduceScatterTensor(Tensor out, Tensor in, ReduceOp op) { reduceScatterTensorAsync(out, in, op, false); }

    public Work reduceScatterTensorAsync(Tensor out, Tensor in, ReduceOp op) { return reduceScatterTensorAsync(out, in, op, true); }

    private Work reduceScatterTensorAsync(Tensor out0, Tensor in0, ReduceOp op, boolean async) {
        if (out0 != null && in0 != null && onGpu(out0) && onGpu(in0) && GpuBackend.allReduceKernel(in0.dtype(), op)) {
            checkSameDtype(out0, in0);
            checkNumel(in0, out0.numel() * worldSize(), "reduce_scatter_tensor input", "world_size x output numel");
            long src = in0.devicePointer(), dst = out0.devicePointer(), n = out0.numel();
            DType dt = in0.dtype();
            return runKernel(OpCode.REDUCE_SCATTER, async, out0, in0, c -> gpu.reduceScatter(c, src, dst, n, dt, op),
                    (c, o, i) -> ReduceScatter.run(c, dt, op, i.segment(), o.segment(), n), null, op == ReduceOp.SUM && n > 0);
        }
        checkSameDtype(nonNull(out0, "output"), nonNull(in0, "input"));
        Reduction.validate(in0.dtype(), op);
        checkNumel(in0, out0.numel() * worldSize(), "reduce_scatter_tensor input", "world_size x output numel");
        Stage st = stage();
        Tensor in = st.host(in0, "input", true, false);
        Tensor out = st.host(out0, "output", false, true);
        return run(OpCode.REDUCE_SCATTER, async, c -> ReduceScatter.run(c, in.dtype(), op, in.segment(), out.segment(), out.numel()), null, st);
    }

    /** {@code dist.all_to_all(out, in)}: {@code in.get(j)} goes to rank j; {@code out.get(j)} comes from rank j. */
    public void allToAll(List<Tensor> out, List<Tensor> in) { allToAllAsync(out, in, false); }

    public Work allToAllAsync(List<Tensor> out, List<Tensor> in) { return allToAllAsync(out, in, true); }

    private Work allToAllAsync(List<Tensor> out0, List<Tensor> in0, boolean async) {
        checkListSize(out0, "output");
        checkListSize(in0, "input");
        for (int j = 0; j < worldSize(); j++) {
            nonNull(out0.get(j), "output[" + j + "]");
            nonNull(in0.get(j), "input[" + j + "]");
        }
        DType dt = in0.get(rank).dtype();
        for (int j = 0; j < worldSize(); j++) {
            if (out0.get(j).dtype() != dt || in0.get(j).dtype() != dt) {
                throw new IllegalArgumentException("all_to_all needs one dtype for every tensor: input[" + rank + "] is " + dt.torchName()
                        + " but input/output[" + j + "] is " + in0.get(j).dtype().torchName() + "/" + out0.get(j).dtype().torchName());
            }
        }
        Stage st = stage();
        List<Tensor> in = st.hostList(in0, "input", true, false);
        List<Tensor> out = st.hostList(out0, "output", false, true);
        return run(OpCode.ALL_TO_ALL, async, c -> {
            int[] m = c.members();
            int n = m.length;
            MemorySegment[] is = new MemorySegment[n], os = new MemorySegment[n];
            long[] io = new long[n], il = new long[n], oo = new long[n], ol = new long[n];
            for (int i = 0; i < n; i++) {
                is[i] = in.get(m[i]).segment();
                il[i] = in.get(m[i]).byteSize();
                os[i] = out.get(m[i]).segment();
                ol[i] = out.get(m[i]).byteSize();
            }
            AllToAll.run(c, is, io, il, os, oo, ol);
        }, r -> out.get(r).segment().fill((byte) 0), st);
    }

    /**
     * {@code dist.all_to_all_single(out, in, out_splits, in_splits)}: rows of dimension 0 split per
     * rank; null splits mean equal parts.
     */
    public void allToAllSingle(Tensor out, Tensor in, long[] outSplits, long[] inSplits) {
        allToAllSingleAsync(out, in, outSplits, inSplits, false);
    }

    public Work allToAllSingleAsync(Tensor out, Tensor in, long[] outSplits, long[] inSplits) {
        return allToAllSingleAsync(out, in, outSplits, inSplits, true);
    }

    private Work allToAllSingleAsync(Tensor out0, Tensor in0, long[] outSplits, long[] inSplits, boolean async) {
        if (out0 != null && in0 != null && onGpu(out0) && onGpu(in0)) {
            checkSameDtype(out0, in0);
            long[] ib = splitBytes(in0, inSplits, "input");
            long[] ob = splitBytes(out0, outSplits, "output");
            if (equalParts(ib) && Arrays.equals(ib, ob)) {
                long[] inOff = offsets(ib), outOff = offsets(ob);
                long src = in0.devicePointer(), dst = out0.devicePointer(), block = ib[0];
                return runKernel(OpCode.ALL_TO_ALL, async, out0, in0, c -> gpu.allToAll(c, src, dst, block),
                        (c, o, i) -> allToAllSingleHost(c, o, i, ib, ob, inOff, outOff), r -> gpu.zero(dst + outOff[r], ob[r]),
                        block > 0);
            }
        }
        checkSameDtype(nonNull(out0, "output"), nonNull(in0, "input"));
        long[] ib = splitBytes(in0, inSplits, "input");
        long[] ob = splitBytes(out0, outSplits, "output");
        long[] inOff = offsets(ib), outOff = offsets(ob);
        Stage st = stage();
        Tensor in = st.host(in0, "input", true, false);
        Tensor out = st.host(out0, "output", false, true);
        return run(OpCode.ALL_TO_ALL, async, c -> allToAllSingleHost(c, out, in, ib, ob, inOff, outOff),
                r -> out.segment().asSlice(outOff[r], ob[r]).fill((byte) 0), st);
    }

    /** A host algorithm over host tensors {@code out} and {@code in}. */
    private interface HostBody { void run(CollectiveContext c, Tensor out, Tensor in); }

    /**
     * Runs an out-of-place GPU operation whose kernel needs every rank of the group: {@code kernel}
     * while all are members, else {@code host} on host copies of {@code in} and {@code out} (the
     * input stays intact, so a redo may rerun either).
     */
    private Work runKernel(OpCode code, boolean async, Tensor out, Tensor in, Body kernel, HostBody host,
                           java.util.function.IntConsumer clearPart, boolean queueable) {
        return run(code, async, c -> {
            if (c.size() == worldSize()) {
                kernel.run(c);
                return;
            }
            try (Tensor hi = in.to(Device.CPU); Tensor ho = Tensor.zeros(out.dtype(), Device.CPU, out.shape())) {
                host.run(c, ho, hi);
                out.copyFrom(ho);
            }
        }, clearPart, Stage.HOST, queueable);
    }

    private static boolean equalParts(long[] b) {
        for (long x : b) if (x != b[0]) return false;
        return true;
    }

    private static void allToAllSingleHost(CollectiveContext c, Tensor out, Tensor in, long[] ib, long[] ob, long[] inOff, long[] outOff) {
        {
            int[] m = c.members();
            int n = m.length;
            MemorySegment[] is = new MemorySegment[n], os = new MemorySegment[n];
            long[] io = new long[n], oo = new long[n], il = new long[n], ol = new long[n];
            for (int i = 0; i < n; i++) {
                is[i] = in.segment();
                os[i] = out.segment();
                io[i] = inOff[m[i]];
                oo[i] = outOff[m[i]];
                il[i] = ib[m[i]];
                ol[i] = ob[m[i]];
            }
            AllToAll.run(c, is, io, il, os, oo, ol);
        }
    }

    /** Exclusive prefix sums: where each rank's piece starts. */
    private static long[] offsets(long[] sizes) {
        long[] o = new long[sizes.length];
        for (int j = 1; j < sizes.length; j++) o[j] = o[j - 1] + sizes[j - 1];
        return o;
    }

    private long[] splitBytes(Tensor t, long[] splits, String what) {
        long rows = t.dim() == 0 ? 1 : t.size(0);
        long rowBytes = rows == 0 ? 0 : t.byteSize() / rows;
        long[] b = new long[worldSize()];
        if (splits == null) {
            if (rows % worldSize() != 0) {
                throw new IllegalArgumentException("all_to_all_single " + what + " has " + rows + " rows, not divisible by world size "
                        + worldSize() + "; pass split sizes");
            }
            Arrays.fill(b, rows / worldSize() * rowBytes);
            return b;
        }
        if (splits.length != worldSize()) {
            throw new IllegalArgumentException("all_to_all_single " + what + " split sizes have " + splits.length + " entries; need world size " + worldSize());
        }
        long sum = 0;
        for (int j = 0; j < worldSize(); j++) {
            if (splits[j] < 0) throw new IllegalArgumentException("all_to_all_single " + what + " split size " + j + " is negative: " + splits[j]);
            sum += splits[j];
            b[j] = splits[j] * rowBytes;
        }
        if (sum != rows) {
            throw new IllegalArgumentException("all_to_all_single " + what + " split sizes sum to " + sum + " but the tensor has " + rows + " rows in dimension 0");
        }
        return b;
    }

    /** {@code dist.barrier()}: returns once every member has entered it. */
    public void barrier() { barrierAsync(false); }

    public Work barrierAsync() { return barrierAsync(true); }

    private Work barrierAsync(boolean async) { return run(OpCode.BARRIER, async, Barrier::run, null, Stage.HOST); }

    /** {@code dist.reduce(t, dst=root, op)}: the root ends with the reduction; other ranks' tensors are unchanged. */
    public void reduce(Tensor t, int root, ReduceOp op) { reduceAsync(t, root, op, false); }

    public Work reduceAsync(Tensor t, int root, ReduceOp op) { return reduceAsync(t, root, op, true); }

    private Work reduceAsync(Tensor t0, int root, ReduceOp op, boolean async) {
        checkRoot(root);
        Reduction.validate(nonNull(t0, "tensor").dtype(), op);
        Stage st = stage();
        Tensor t = st.host(t0, "tensor", true, rank == root);
        return run(OpCode.REDUCE, async, c -> {
            requireRoot(c, root, "reduce");
            Reduce.run(c, t.dtype(), op, t.segment(), t.numel(), root);
        }, null, st);
    }

    /** {@code dist.gather(in, out, dst=root)}: {@code out} (used on the root only) gets one tensor per rank. */
    public void gather(Tensor in, List<Tensor> out, int root) { gatherAsync(in, out, root, false); }

    public Work gatherAsync(Tensor in, List<Tensor> out, int root) { return gatherAsync(in, out, root, true); }

    private Work gatherAsync(Tensor in0, List<Tensor> out0, int root, boolean async) {
        checkRoot(root);
        if (rank == root) checkList(out0, "gather output", nonNull(in0, "input"));
        Stage st = stage();
        Tensor in = st.host(in0, "input", true, false);
        List<Tensor> out = rank == root ? st.hostList(out0, "gather output", false, true) : out0;
        return run(OpCode.GATHER, async, c -> {
            requireRoot(c, root, "gather");
            int[] m = c.members();
            MemorySegment[] outs = new MemorySegment[m.length];
            if (rank == root) for (int i = 0; i < m.length; i++) outs[i] = out.get(m[i]).segment();
            Gather.gather(c, in.segment(), in.byteSize(), outs, root);
        }, r -> {
            if (rank == root) out.get(r).segment().fill((byte) 0);
        }, st);
    }

    /** {@code dist.scatter(out, in, src=root)}: {@code in} (used on the root only) has one tensor per rank. */
    public void scatter(Tensor out, List<Tensor> in, int root) { scatterAsync(out, in, root, false); }

    public Work scatterAsync(Tensor out, List<Tensor> in, int root) { return scatterAsync(out, in, root, true); }

    private Work scatterAsync(Tensor out0, List<Tensor> in0, int root, boolean async) {
        checkRoot(root);
        if (rank == root) checkList(in0, "scatter input", nonNull(out0, "output"));
        Stage st = stage();
        Tensor out = st.host(out0, "output", false, true);
        List<Tensor> in = rank == root ? st.hostList(in0, "scatter input", true, false) : in0;
        return run(OpCode.SCATTER, async, c -> {
            requireRoot(c, root, "scatter");
            int[] m = c.members();
            MemorySegment[] ins = new MemorySegment[m.length];
            if (rank == root) for (int i = 0; i < m.length; i++) ins[i] = in.get(m[i]).segment();
            Gather.scatter(c, ins, out.byteSize(), out.segment(), root);
        }, null, st);
    }

    // ---- point to point ----------------------------------------------------------------------

    public void send(Tensor t, int dst, int tag) { isend(t, dst, tag).await(); }

    public void recv(Tensor t, int src, int tag) { irecv(t, src, tag).await(); }

    /** Posts a send; messages to one peer leave in posting order. Fails if the peer leaves the group meanwhile. */
    public Work isend(Tensor t0, int dst, int tag) {
        checkPeer(dst, "destination");
        Stage st = stage();
        Tensor t = st.host(t0, "tensor", true, false);
        MemorySegment data = t.segment();
        long bytes = t.byteSize();
        return p2p(sendThread(dst), "send to rank " + dst + " tag " + tag, (pl, d) -> pl.p2p.send(dst, tag, pl.epoch, data, bytes, d), dst, st);
    }

    /** Posts a receive; matched by tag, in order per (peer, tag). */
    public Work irecv(Tensor t0, int src, int tag) {
        checkPeer(src, "source");
        Stage st = stage();
        Tensor t = st.host(t0, "tensor", false, true);
        MemorySegment data = t.segment();
        long bytes = t.byteSize();
        return p2p(recvThread(src), "recv from rank " + src + " tag " + tag, (pl, d) -> pl.p2p.recv(src, tag, data, bytes, d), src, st);
    }

    /** {@code dist.batch_isend_irecv(ops)}: starts every operation; the works complete independently. */
    public List<Work> batchIsendIrecv(List<P2POp> ops) {
        List<Work> works = new ArrayList<>(ops.size());
        for (P2POp op : ops) {
            works.add(op.kind() == P2POp.Kind.ISEND ? isend(op.tensor(), op.peer(), op.tag()) : irecv(op.tensor(), op.peer(), op.tag()));
        }
        return works;
    }

    private interface P2PBody { void run(EpochPlane plane, Deadline d); }

    private Work p2p(ExecutorService thread, String what, P2PBody body, int peer, Stage st) {
        checkUsable();
        WorkImpl w = new WorkImpl(what, timeout.toMillis() * 2 + 10_000);
        thread.execute(() -> {
            Deadline d = Deadline.after(timeout);
            EpochPlane pl = plane;
            try {
                checkUsable();
                if (!pl.state.isActive(peer)) {
                    throw new PeerFailureException(what + ": rank " + peer + " is not an active member in epoch " + pl.epoch, new int[] {peer});
                }
                st.copyIn();
                body.run(pl, d);
                st.copyOut();
                w.complete(new int[0], true);
            } catch (Channels.WaitFailure f) {
                w.fail(pl.channels.failure(f, what, 0, new int[] {peer}, timeout.toMillis()));
            } catch (Throwable t) {
                w.fail(t);
            } finally {
                st.close();
            }
        });
        return w;
    }

    private synchronized ExecutorService sendThread(int dst) {
        if (sendThreads[dst] == null) sendThreads[dst] = singleThread("send-" + dst);
        return sendThreads[dst];
    }

    private synchronized ExecutorService recvThread(int src) {
        if (recvThreads[src] == null) recvThreads[src] = singleThread("recv-" + src);
        return recvThreads[src];
    }

    private ExecutorService singleThread(String role) {
        return Executors.newSingleThreadExecutor(Thread.ofPlatform().daemon().name("mooncake-pg-" + name + "-r" + rank + "-" + role).factory());
    }

    // ---- subgroups ---------------------------------------------------------------------------

    /**
     * {@code dist.new_group(ranks)}: a group of its own (own segments, sequence numbers and epochs)
     * over {@code ranks} of this group. Every rank of this group must call it, in the same order
     * (a joining rank too, after {@link #joinGroup()}); a rank not in {@code ranks} gets null. In the
     * new group, ranks are numbered by their order in sorted {@code ranks}.
     */
    public ProcessGroup newGroup(int... ranks) {
        checkUsable();
        int[] sorted = ranks.clone();
        Arrays.sort(sorted);
        if (sorted.length == 0) throw new IllegalArgumentException("new_group needs at least one rank");
        for (int i = 0; i < sorted.length; i++) {
            checkRank(sorted[i], "new_group rank");
            if (i > 0 && sorted[i] == sorted[i - 1]) throw new IllegalArgumentException("new_group ranks repeat rank " + sorted[i]);
        }
        int id;
        synchronized (this) { id = ++subgroupCounter; }
        int myIndex = Arrays.binarySearch(sorted, rank);
        if (myIndex < 0) return null;
        String childName = name + "/g" + id;
        // a joining process enters the subgroups the healthy ranks had when they recovered it
        boolean extension = extensionProcess && rejoinedSubgroups().contains(id);
        Tensor mask = Tensor.zeros(DType.INT32, Device.CPU, sorted.length);
        for (int i = 0; i < sorted.length; i++) mask.setLong(i, state.isActive(sorted[i]) ? 1 : 0);
        ProcessGroup g = new ProcessGroup(runtime.share(), backend, childName, myIndex, sorted.length, sorted.length, mask,
                extension, sorted, timeout, cudaDevice());
        if (extension) g.joinGroup();
        synchronized (this) { children.add(g); }
        return g;
    }

    // ---- elastic membership ------------------------------------------------------------------

    /**
     * {@code pg.join_group()}: on a process started with {@code isExtension=true}, blocks until the
     * healthy ranks recover this rank ({@link #recoverRanks}), then connects to the members. Bounded
     * by the group timeout. If the group changes while it connects (a member fails), it connects to
     * the epoch the members settle on next when it is still in it, and otherwise throws
     * {@link PeerFailureException} naming the epoch that dropped it.
     */
    public void joinGroup() {
        joinGroup(timeout);
    }

    /** {@link #joinGroup()} with an explicit bound on how long to wait for the healthy ranks. */
    public void joinGroup(Duration wait) {
        if (closed) throw new IllegalStateException("process group " + name + " is closed");
        if (joined) throw new IllegalStateException("rank " + rank + " is already a member of group '" + name + "'; joinGroup() is for extension ranks");
        if (!extensionProcess) {
            throw new IllegalStateException("joinGroup() needs a process started with MooncakeBackendOptions(activeRanks, isExtension=true[, maxWorldSize])");
        }
        Deadline d = Deadline.after(wait);
        GroupState s;
        long admittedIn;
        try {
            admittedIn = awaitAdmission(d);
            s = agreement.awaitState(g -> g.epoch() >= admittedIn && !g.recovering(), d,
                    "the healthy ranks to finish recovering rank " + rank);
        } catch (org.mooncake4j.core.TimeoutException e) {
            throw new org.mooncake4j.core.TimeoutException("joinGroup() on rank " + rank + " of group '" + name + "' timed out after "
                    + wait.toMillis() + " ms: the healthy ranks did not recover it. Check that they poll peerState([" + rank + "]) and call recoverRanks(["
                    + rank + "]), and that every rank uses the same store, max_world_size and rank numbering.");
        }
        while (true) {
            if (!s.isActive(rank)) {
                throw new PeerFailureException("rank " + rank + " was admitted to group '" + name + "' in epoch " + admittedIn
                        + " but dropped again before it could connect (epoch " + s.epoch() + ", active " + Arrays.toString(s.members())
                        + "); start it again and have the healthy ranks recover it", new int[] {rank});
            }
            try {
                plane = buildPlane(s, d);
                break;
            } catch (Channels.WaitFailure f) {
                s = settledAfter(s, f, admittedIn, d, wait);
            }
        }
        state = s;
        joined = true;
        writeMask(s);
        store.delete(keyPrefix() + "join/" + rank);
        LOG.info("join group={} rank={} epoch={} active={}", name, rank, s.epoch(), Arrays.toString(s.members()));
    }

    /**
     * After a joiner's connect to epoch {@code from} failed with {@code f} (the group moved on: a member
     * failed, or a recovery began): the state the members settle on next, for the joiner to connect to
     * if it is still in it.
     */
    private GroupState settledAfter(GroupState from, Channels.WaitFailure f, long admittedIn, Deadline d, Duration wait) {
        try {
            return agreement.awaitState(g -> g.isAfter(from) && !g.recovering(), d, "the group to settle after epoch " + from.epoch());
        } catch (org.mooncake4j.core.TimeoutException e) {
            throw new org.mooncake4j.core.TimeoutException("joinGroup() on rank " + rank + " of group '" + name + "': admitted in epoch "
                    + admittedIn + " but could not connect within " + wait.toMillis() + " ms (" + f.getMessage() + " in epoch " + from.epoch()
                    + ", active " + Arrays.toString(from.members()) + "). Check that the members are alive and reachable from this host;"
                    + " then start this process again and have the healthy ranks recover it.");
        }
    }

    /** Waits until the healthy ranks admit this process (its join nonce); returns the epoch they admitted it in. */
    private long awaitAdmission(Deadline d) {
        String key = keyPrefix() + "admitted/" + rank;
        byte[] cur = store.get(key).orElse(null);
        while (true) {
            if (cur != null) {
                String[] v = new String(cur, StandardCharsets.UTF_8).split(" ");
                if (v[0].equals(Long.toHexString(joinNonce))) return Long.parseLong(v[1]);
            }
            if (d.expired()) throw new org.mooncake4j.core.TimeoutException("not admitted");
            cur = store.awaitChange(key, cur, d.min(Deadline.afterMillis(1000))).orElse(null);
        }
    }

    /**
     * {@code pg.get_peer_state(ranks)}: whether each candidate has started as an extension rank and
     * published its metadata. A collective among the healthy ranks: the lowest member reads the store
     * and broadcasts, so every caller gets the same answer.
     */
    public boolean[] peerState(int... ranks) {
        long[] nonces = joinRequests(ranks);
        boolean[] out = new boolean[ranks.length];
        for (int i = 0; i < ranks.length; i++) out[i] = nonces[i] != 0;
        return out;
    }

    /**
     * The join nonce each candidate published (0 = none), as the lowest member read it and broadcast
     * it: every healthy rank acts on the same answer even while joiners come and go.
     */
    private long[] joinRequests(int[] ranks) {
        for (int r : ranks) checkRank(r, "peer_state rank");
        try (Tensor t = Tensor.zeros(DType.INT64, Device.CPU, Math.max(1, ranks.length))) {
            if (rank == state.members()[0]) {
                for (int i = 0; i < ranks.length; i++) {
                    // an empty value is a request already admitted (cleared by compare-and-set)
                    t.setLong(i, store.get(keyPrefix() + "join/" + ranks[i])
                            .map(b -> b.length == 0 ? 0L : Long.parseUnsignedLong(new String(b, StandardCharsets.UTF_8), 16)).orElse(0L));
                }
            }
            broadcast(t, state.members()[0]);
            long[] out = new long[ranks.length];
            for (int i = 0; i < ranks.length; i++) out[i] = t.getLong(i);
            return out;
        }
    }

    /**
     * {@code pg.recover_ranks(ranks)}: a collective among the healthy ranks that makes {@code ranks}
     * members again (a replacement reuses the dead rank's id) in a new epoch, together with the
     * subgroups of this group that contain them. The joiners must have started (see {@link #peerState}).
     * A joiner that is admitted but does not connect within the timeout is dropped again (a warning is
     * logged and {@link #activeRanks()} shows it inactive): poll and recover it again. A joiner that
     * went away between {@code peerState} and this call makes it throw {@link IllegalStateException}
     * ("has not published its metadata") on every healthy rank alike: poll again.
     */
    public void recoverRanks(int... ranks) {
        for (int r : ranks) {
            checkRank(r, "recover rank");
            if (r >= state.worldSize()) {
                throw new IllegalArgumentException("rank " + r + " is outside the world size " + state.worldSize() + "; extend the group first with extendGroupSizeTo");
            }
        }
        // admit exactly the processes that announced themselves (their nonces, as broadcast): a later
        // process for the same rank waits for its own admission
        long[] nonces = joinRequests(ranks);
        for (int i = 0; i < ranks.length; i++) {
            if (nonces[i] == 0) {
                throw new IllegalStateException("recoverRanks: rank " + ranks[i] + " has not published its metadata (it must start with isExtension=true);"
                        + " poll peerState([" + ranks[i] + "]) until it is true");
            }
            if (parentRanks == null) store.set(keyPrefix() + "rejoin/" + ranks[i], subgroupsContaining(ranks[i]).getBytes(StandardCharsets.UTF_8));
        }
        transition("recover_ranks " + Arrays.toString(ranks), s -> {
            boolean[] m = new boolean[slots];
            for (int r = 0; r < slots; r++) m[r] = s.isActive(r);
            for (int r : ranks) m[r] = true;
            return s.next(m, s.worldSize(), 0, GroupState.Outcome.NONE);
        }, admittedIn -> {
            for (int i = 0; i < ranks.length; i++) {
                store.set(keyPrefix() + "admitted/" + ranks[i], (Long.toHexString(nonces[i]) + " " + admittedIn.epoch()).getBytes(StandardCharsets.UTF_8));
                store.compareAndSet(keyPrefix() + "join/" + ranks[i], Long.toHexString(nonces[i]).getBytes(StandardCharsets.UTF_8), new byte[0]);
            }
        });
        int[] joined = java.util.stream.IntStream.of(ranks).filter(state::isActive).toArray();
        if (joined.length < ranks.length) {
            LOG.warn("recover group={} rank={}: ranks {} were admitted but did not connect in time and were dropped again (epoch {});"
                    + " poll peerState and recover them again", name, rank, Arrays.toString(java.util.stream.IntStream.of(ranks)
                    .filter(r -> !state.isActive(r)).toArray()), state.epoch());
        }
        List<ProcessGroup> kids;
        synchronized (this) { kids = new ArrayList<>(children); }
        for (ProcessGroup child : kids) {
            int[] local = java.util.stream.IntStream.of(joined).map(r -> Arrays.binarySearch(child.parentRanks, r)).filter(i -> i >= 0).toArray();
            if (local.length > 0) {
                child.awaitPeers(local);
                child.recoverRanks(local);
            }
        }
        LOG.info("recover group={} rank={} epoch={} recovered={}", name, rank, state.epoch(), Arrays.toString(joined));
    }

    /**
     * {@code pg.extend_group_size_to(size)}: reserves rank ids up to {@code size} (at most
     * max_world_size). The new ranks stay inactive until {@link #recoverRanks} admits them.
     */
    public void extendGroupSizeTo(int size) {
        if (size > slots) {
            throw new IllegalArgumentException("cannot extend group '" + name + "' to " + size + " ranks: max_world_size is " + slots
                    + "; start every rank with a larger max_world_size");
        }
        if (size < state.worldSize()) {
            throw new IllegalArgumentException("cannot shrink group '" + name + "' from " + state.worldSize() + " to " + size + " ranks");
        }
        if (size == state.worldSize()) return;
        transition("extend_group_size_to " + size, s -> s.next(s.mask(), size, 0, GroupState.Outcome.NONE), s -> { });
    }

    /** Polls {@link #peerState} (a collective, so every member stops polling together) until all are ready or the timeout. */
    private void awaitPeers(int[] ranks) {
        Deadline d = Deadline.after(timeout);
        while (true) {
            boolean[] ready = peerState(ranks);
            boolean all = true;
            for (boolean b : ready) all &= b;
            if (all) return;
            if (d.expired()) {
                throw new org.mooncake4j.core.TimeoutException("subgroup '" + name + "': ranks " + Arrays.toString(ranks) + " did not start joining within "
                        + timeout.toMillis() + " ms; the joining process must create its subgroups with newGroup in the same order as the healthy ranks");
            }
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for joining ranks", e);
            }
        }
    }

    /** Subgroup ids (of this process's creation order) whose members include {@code r}. */
    private String subgroupsContaining(int r) {
        StringBuilder sb = new StringBuilder();
        synchronized (this) {
            for (ProcessGroup c : children) {
                if (Arrays.binarySearch(c.parentRanks, r) >= 0) {
                    sb.append(sb.isEmpty() ? "" : ",").append(c.name.substring(c.name.lastIndexOf("/g") + 2));
                }
            }
        }
        return sb.toString();
    }

    private java.util.Set<Integer> rejoinedSubgroups() {
        String v = store.get(keyPrefix() + "rejoin/" + rank).map(b -> new String(b, StandardCharsets.UTF_8)).orElse("");
        java.util.Set<Integer> ids = new java.util.HashSet<>();
        for (String x : v.split(",")) if (!x.isBlank()) ids.add(Integer.parseInt(x.trim()));
        return ids;
    }

    /**
     * A membership change made by every healthy rank together: a barrier (with its sync step, so every
     * member is past all earlier operations), then every member tries the same compare-and-set from
     * the current state; one wins and all adopt the result, run {@code afterChange} with it (idempotent
     * store writes) and build the new epoch's plane.
     */
    private void transition(String what, java.util.function.UnaryOperator<GroupState> change,
                            java.util.function.Consumer<GroupState> afterChange) {
        run(OpCode.MEMBERSHIP, false, c -> {
            Barrier.run(c);
            c.sync();
            GroupState from = plane.state;
            GroupState to = change.apply(from);
            GroupState now = agreement.compareAndSet(from, to) ? to : agreement.read();
            if (now.epoch() <= from.epoch() || now.recovering()) {
                throw new IllegalStateException(what + ": the group state changed concurrently (" + now + "); retry");
            }
            adopt(now);
            afterChange.accept(now);
        }, null, Stage.HOST);
        execLock.lock();
        try {
            currentPlane(); // the members (joiners too) connect to the new epoch's plane now, not at the next operation
        } finally {
            execLock.unlock();
        }
        LOG.info("transition group={} rank={} {} epoch={}", name, rank, what, state.epoch());
    }

    // ---- execution ---------------------------------------------------------------------------

    /** The body of one collective, run with the current epoch's context. */
    private interface Body { void run(CollectiveContext c); }


    /**
     * @param clearPart zero-fills the output part that belongs to a rank (or null when the operation has
     *                  no per-rank output parts); after a redo it is called for each rank dropped while the
     *                  operation ran, so whatever arrived from it before the failure is not left behind and
     *                  every survivor returns the same bytes
     */
    private Work run(OpCode code, boolean async, Body body, java.util.function.IntConsumer clearPart, Stage st) {
        return run(code, async, body, clearPart, st, false);
    }

    /**
     * @param queueable the operation is one collective kernel of the GPU backend ({@link GpuBackend#deferNext}):
     *                  run asynchronously with more operations submitted behind it, it returns to the
     *                  operation thread as soon as its kernel is queued, and is checked (its Work completed)
     *                  while the next one's kernel runs ({@link #executeQueued})
     */
    private Work run(OpCode code, boolean async, Body body, java.util.function.IntConsumer clearPart, Stage st, boolean queueable) {
        try {
            checkUsable();
        } catch (RuntimeException e) {
            st.close();
            throw e;
        }
        if (!async && pendingAsync.get() == 0) {
            execLock.lock();
            try {
                execute(code, body, clearPart, null, st);
            } finally {
                execLock.unlock();
            }
            return null;
        }
        WorkImpl w;
        synchronized (this) {
            w = new WorkImpl(code.torchName(), (pendingAsync.get() + 2L) * timeout.toMillis() * 2 + 10_000);
            if (opThread == null) opThread = singleThread("ops");
            pendingAsync.incrementAndGet();
        }
        opThread.execute(() -> {
            execLock.lock();
            try {
                if (queueable && pendingAsync.get() > 1) executeQueued(code, body, clearPart, w);
                else execute(code, body, clearPart, w, st);
            } catch (Throwable t) {
                w.fail(t);
            } finally {
                // nothing submitted behind: check what is still queued now (it never throws; it completes their Works)
                if (gpu != null && pendingAsync.get() == 1) settleQueued();
                execLock.unlock();
                pendingAsync.decrementAndGet();
            }
        });
        if (!async) {
            w.await();
            return null;
        }
        return w;
    }

    /**
     * Runs one collective to completion over an agreed membership. A failure in the data phase
     * leads to the agreement and a redo in the new epoch (from the saved input); a failure in the sync
     * step is handled in {@link #onSyncFailure} and may commit the result as computed.
     */
    private void execute(OpCode code, Body body, java.util.function.IntConsumer clearPart, WorkImpl work, Stage st) {
        try {
            settleQueued();
            checkUsable();
            st.copyIn();
            execute(code, body, clearPart);
            st.copyOut();
        } finally {
            st.close();
        }
        if (work != null) work.complete(lastDropped, lastCovered);
    }

    private void execute(OpCode code, Body body, java.util.function.IntConsumer clearPart) {
        execute(code, body, clearPart, state);
    }

    /** @param start the state the operation's dropped ranks are counted from (when it was first started) */
    private void execute(OpCode code, Body body, java.util.function.IntConsumer clearPart, GroupState start) {
        long seq;
        while (true) {
            EpochPlane pl = currentPlane();
            seq = ++pl.opSeq;
            CollectiveContext c = pl.ctx;
            c.begin(code, pl.epoch, seq, pl.members, Deadline.after(initializing ? initTimeout() : timeout));
            try {
                body.run(c);
                c.sync();
                pl.unlinkFileOnce();
                break;
            } catch (Channels.WaitFailure f) {
                GroupState next = recover(pl, seq, c.phase(), f);
                adopt(next);
                LOG.info("redo group={} rank={} op={} #{} in epoch {} over {}", name, rank, code.torchName(), seq, next.epoch(),
                        Arrays.toString(next.members()));
                backup.restore();
            } catch (CollectiveMismatchException e) {
                broken = e;
                throw e;
            }
        }
        int[] dropped = start == state ? NONE : Arrays.stream(start.members()).filter(r -> !state.isActive(r)).toArray();
        if (clearPart != null) for (int r : dropped) clearPart.accept(r);
        // a result covers every rank active at the start exactly when nobody was dropped meanwhile
        // (a commit over the old mask is reported with the next operation, on every member alike)
        boolean covered = dropped.length == 0;
        lastDropped = dropped;
        lastCovered = covered;
        if (LOG.isDebugEnabled()) {
            LOG.debug("op group={} rank={} epoch={} #{} {} done covered={} dropped={}", name, rank, state.epoch(), seq, code.torchName(),
                    covered, Arrays.toString(dropped));
        }
    }

    // ---- queued GPU operations ----------------------------------------------------------------

    /**
     * An operation of the GPU backend whose kernel is queued but not checked yet: what {@link #execute}
     * needs to settle it ({@link GpuBackend#queuedOp} hands it back, oldest first).
     */
    private record Queued(OpCode code, Body body, java.util.function.IntConsumer clearPart, WorkImpl work, long seq, EpochPlane plane,
                          GroupState start) {}

    /**
     * Runs a GPU collective of one kernel without waiting for it: the kernel is queued behind the
     * unchecked one (if any), which is then checked while this one runs, so consecutive asynchronous
     * operations keep the GPU busy back to back as NCCL's do. An operation counts once checked: its
     * Work completes then. When the checked one failed, the kernel behind it did nothing
     * (collectives.cu, begin_block); {@link #settleOldest} settles the failure as {@link #execute}
     * would and runs this one again. Falls back to {@link #execute} whenever queueing is not safe: a
     * membership change or recovery under way, a heap not yet built for the members, a member missing.
     */
    private void executeQueued(OpCode code, Body body, java.util.function.IntConsumer clearPart, WorkImpl work) {
        checkUsable();
        GroupState latest = agreement.latest();
        EpochPlane pl = plane;
        boolean steady = joined && (latest == null || (latest.epoch() == state.epoch() && !latest.recovering()))
                && state.epoch() == pl.epoch && pl.members.length == worldSize() && gpu.canQueue(pl.epoch, pl.members);
        if (!steady) {
            execute(code, body, clearPart, work, Stage.HOST);
            return;
        }
        long seq = ++pl.opSeq;
        CollectiveContext c = pl.ctx;
        c.begin(code, pl.epoch, seq, pl.members, Deadline.after(initializing ? initTimeout() : timeout));
        int before = gpu.queuedCount();
        gpu.deferNext(new Queued(code, body, clearPart, work, seq, pl, state));
        try {
            body.run(c);
        } finally {
            gpu.cancelDefer();   // no effect once the kernel was queued
        }
        if (gpu.queuedCount() != before + 1) {
            throw new IllegalStateException("group '" + name + "' rank " + rank + ": " + code.torchName() + " was not queued");
        }
        if (before == 1) settleOldest();
    }

    /** Checks every queued operation, oldest first (completing or failing their Works); never throws. */
    private void settleQueued() {
        while (gpu != null && gpu.queuedCount() > 0) settleOldest();
    }

    /**
     * Checks the oldest queued operation. Completed: its Work completes. Failed: the failure is settled
     * as {@link #execute} settles one (the agreement; then the result stands, when it was complete and
     * the agreement commits it, or the operation is redone from its input), and the operation queued
     * behind it, whose kernel did nothing, is run again. Never throws: an operation that cannot
     * complete fails its Work.
     */
    private void settleOldest() {
        Queued d = (Queued) gpu.queuedOp(0);
        Queued behind = gpu.queuedCount() > 1 ? (Queued) gpu.queuedOp(1) : null;
        Channels.WaitFailure f;
        try {
            f = gpu.checkOldest();
        } catch (RuntimeException e) {
            // the GPU did not finish in time (or the context failed): nothing queued can be trusted
            gpu.forgetQueued();
            d.work().fail(e);
            if (behind != null) behind.work().fail(e);
            return;
        }
        if (f == null) {
            lastDropped = NONE;
            lastCovered = true;
            d.work().complete(lastDropped, lastCovered);
            return;
        }
        // the GPU forgot every queued operation: d failed, the one behind it (if any) did nothing
        try {
            boolean complete = gpu.failedResultComplete();
            GroupState next = recover(d.plane(), d.seq(), complete ? FailureAgreement.Phase.SYNC : FailureAgreement.Phase.DATA, f);
            if (complete && commits(next, d.seq())) {
                // as on the members that had gone on: the new membership is adopted at the next operation
                lastDropped = NONE;
                lastCovered = true;
            } else {
                adopt(next);
                LOG.info("redo group={} rank={} op={} #{} (queued) in epoch {} over {}", name, rank, d.code().torchName(), d.seq(),
                        next.epoch(), Arrays.toString(next.members()));
                gpu.restoreFailedInput();
                execute(d.code(), d.body(), d.clearPart(), d.start());
            }
            d.work().complete(lastDropped, lastCovered);
        } catch (Throwable t) {
            d.work().fail(t);
        }
        if (behind == null) return;
        try {
            checkUsable();
            execute(behind.code(), behind.body(), behind.clearPart(), state);
            behind.work().complete(lastDropped, lastCovered);
        } catch (Throwable t) {
            behind.work().fail(t);
        }
    }

    /** The plane of the adopted state, built (and the old one closed) after a membership change. */
    private EpochPlane currentPlane() {
        while (true) {
            if (!joined) {
                throw new IllegalStateException("rank " + rank + " of group '" + name + "' was started with isExtension=true and has not joined yet:"
                        + " call joinGroup() before any collective");
            }
            GroupState latest = agreement.latest();
            EpochPlane pl = plane;
            if (latest != null && latest.epoch() == pl.epoch && latest.recovering()) {
                // a recovery began while this rank was between operations: take part before starting
                adopt(recover(pl, pl.opSeq + 1, FailureAgreement.Phase.IDLE, null));
            } else if (latest != null && latest.epoch() > state.epoch()) {
                adopt(latest);
            }
            if (state.epoch() == plane.epoch) return plane;
            EpochPlane old = plane;
            try {
                plane = buildPlane(state, Deadline.after(timeout));
            } catch (Channels.WaitFailure f) {
                // a member of the new epoch is gone too: agree again, from the new epoch
                adopt(recoverFrom(state, 1, FailureAgreement.Phase.IDLE, f, old));
                continue;
            }
            old.close();
            try {
                store.delete(EpochPlane.memberKey(keyPrefix(), old.epoch, rank));
            } catch (org.mooncake4j.transfer.store.StoreException e) {
                // only cleanup: the key of an ended epoch is never read again
                LOG.debug("group={} rank={}: could not delete the member key of epoch {}: {}", name, rank, old.epoch, e.getMessage());
            }
        }
    }

    /**
     * Sync-step failure: when the agreement commits this operation, it returns its result computed over
     * the old mask, and the new membership is adopted at the start of the next operation, exactly as
     * on the members that had already returned from this one (they learn of the change there too), so
     * every member reports the same mask and dropped ranks for the same operation. Otherwise the new
     * state is adopted now and the failure rethrown to redo the operation.
     */
    private void onSyncFailure(CollectiveContext c, Channels.WaitFailure f) {
        GroupState next = recover(plane, c.opSeq(), FailureAgreement.Phase.SYNC, f);
        if (commits(next, c.opSeq())) return;
        adopt(next);
        throw f;
    }

    /**
     * Whether decision {@code next}, taken after a failure in operation {@code seq}'s sync step, lets
     * this rank's result of it stand: the operation was committed (or nothing changed) and this rank
     * is still a member.
     */
    private boolean commits(GroupState next, long seq) {
        boolean committed = next.decidedOp() == seq && next.outcome() == GroupState.Outcome.COMMIT
                || next.outcome() == GroupState.Outcome.NONE;
        return committed && next.isActive(rank);
    }

    /** Takes part in the agreement for the failure of {@code pl}'s epoch (once per epoch) and adopts the decision. */
    private GroupState recover(EpochPlane pl, long seq, FailureAgreement.Phase phase, Channels.WaitFailure f) {
        return recoverFrom(pl.state, seq, phase, f, pl);
    }

    private GroupState recoverFrom(GroupState from, long seq, FailureAgreement.Phase phase, Channels.WaitFailure f, EpochPlane pl) {
        // a rank cut off from the store cannot learn the decision: keep trying for five timeouts (the
        // network may heal, and then it finds out whether it is still a member), then give up for good
        Deadline d = Deadline.afterNanos(5 * timeout.toNanos()); // (not Duration.multipliedBy: it computes in BigDecimal, cold on this path)
        while (true) {
            try {
                return agreeOnce(from, seq, phase, f, pl);
            } catch (org.mooncake4j.transfer.store.StoreException e) {
                if (d.expired()) {
                    IllegalStateException err = new IllegalStateException("rank " + rank + " of group '" + name + "' could not reach the metadata store "
                            + store.uri() + " to agree on the membership after a failure in epoch " + from.epoch() + " (" + e.getMessage()
                            + "), so it cannot know whether it is still a member. Its operations are refused; restart it as an extension rank"
                            + " (isExtension=true, joinGroup()) once the store is reachable.", e);
                    broken = err;
                    throw err;
                }
                LockSupport.parkNanos(50_000_000L);
            }
        }
    }

    private GroupState agreeOnce(GroupState from, long seq, FailureAgreement.Phase phase, Channels.WaitFailure f, EpochPlane pl) {
        if (state.epoch() > from.epoch()) return state;
        GroupState latest = agreement.read();
        GroupState next;
        if (latest.epoch() > from.epoch() && !latest.recovering()) {
            next = latest;
        } else {
            int[] dead = pl != null && pl.epoch == from.epoch() ? pl.deadMembers() : new int[0];
            int[] timedOut = f != null && f.timedOut() ? new int[] {f.peer()} : new int[0];
            if (f != null && !f.timedOut() && !(pl != null && pl.channels.peerAlive(f.peer())) && !agreement.changedSince(from.epoch())) {
                dead = withRank(dead, f.peer());
            }
            next = agreement.agree(from, new FailureAgreement.Report(rank, seq, phase, dead, timedOut));
        }
        return next;
    }

    /** {@code ranks} plus {@code r}, sorted, without duplicates (plain array code: this runs in a failure's first report). */
    static int[] withRank(int[] ranks, int r) {
        for (int x : ranks) if (x == r) return ranks;
        int[] out = Arrays.copyOf(ranks, ranks.length + 1);
        out[ranks.length] = r;
        Arrays.sort(out);
        return out;
    }

    /** Makes {@code next} this rank's state; a rank outside its mask is fenced. */
    private void adopt(GroupState next) {
        if (next.epoch() < state.epoch()) return;
        if (!next.isActive(rank)) {
            RankRemovedException e = new RankRemovedException("rank " + rank + " was removed from process group '" + name + "' in epoch "
                    + next.epoch() + " (active ranks now " + Arrays.toString(next.members()) + "): it did not take part in the recovery in time"
                    + " (it was stopped, paused, cut off or slower than the " + timeout.toMillis() + " ms timeout). Its operations are refused."
                    + " To rejoin, start it (or a replacement) with MooncakeBackendOptions(activeRanks, isExtension=true, maxWorldSize) and call"
                    + " joinGroup(); the healthy ranks admit it with peerState([" + rank + "]) and recoverRanks([" + rank + "]).", next.epoch());
            broken = e;
            LOG.warn("fenced group={} rank={} epoch={}", name, rank, next.epoch());
            throw e;
        }
        int[] before = state.members();
        state = next;
        for (int r : before) {
            if (!next.isActive(r)) synchronized (droppedSinceInit) { droppedSinceInit.add(r); }
        }
        writeMask(next);
    }

    // ---- validation --------------------------------------------------------------------------

    /** A rooted operation redone after its root was dropped has nothing to deliver: every survivor fails alike. */
    private void requireRoot(CollectiveContext c, int root, String what) {
        if (Arrays.binarySearch(c.members(), root) < 0) {
            throw new PeerFailureException(what + ": root rank " + root + " was dropped from group '" + name + "' (epoch " + state.epoch()
                    + ", active ranks " + Arrays.toString(c.members()) + ") before every member had its data; the operation cannot complete."
                    + " The group stays usable: pick another root.", new int[] {root});
        }
    }

    private static Tensor nonNull(Tensor t, String what) {
        if (t == null) throw new IllegalArgumentException(what + " is null");
        return t;
    }

    private void checkSameDtype(Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException("dtype mismatch: output is " + a.dtype().torchName() + " but input is " + b.dtype().torchName());
        }
    }

    private static void checkNumel(Tensor t, long expected, String what, String rule) {
        if (t.numel() != expected) {
            throw new IllegalArgumentException(what + " has " + t.numel() + " elements; it needs " + rule + " = " + expected);
        }
    }

    private void checkListSize(List<Tensor> list, String what) {
        if (list == null || list.size() != worldSize()) {
            throw new IllegalArgumentException(what + " list has " + (list == null ? 0 : list.size()) + " tensors; it needs one per rank (" + worldSize() + ")");
        }
    }

    private void checkList(List<Tensor> list, String what, Tensor like) {
        checkListSize(list, what);
        for (int j = 0; j < list.size(); j++) {
            Tensor t = list.get(j);
            if (t == null) throw new IllegalArgumentException(what + "[" + j + "] is null");
            if (t.dtype() != like.dtype() || t.numel() != like.numel()) {
                throw new IllegalArgumentException(what + "[" + j + "] is " + t.dtype().torchName() + Arrays.toString(t.shape())
                        + " but must match " + like.dtype().torchName() + Arrays.toString(like.shape()));
            }
        }
    }

    private void checkRank(int r, String what) {
        if (r < 0 || r >= slots) throw new IllegalArgumentException(what + " " + r + " is out of range [0, " + slots + ")");
    }

    private void checkRoot(int root) {
        checkRank(root, "root");
        if (!state.isActive(root)) throw new IllegalArgumentException("root " + root + " is not an active rank " + Arrays.toString(state.members()));
    }

    private void checkPeer(int p, String what) {
        checkRank(p, what);
        if (p == rank) throw new IllegalArgumentException(what + " " + p + " is this rank; P2P needs another rank");
        if (!state.isActive(p)) throw new IllegalArgumentException(what + " " + p + " is not an active rank " + Arrays.toString(state.members()));
    }

    // ---- lifecycle ---------------------------------------------------------------------------

    private void checkUsable() {
        if (closed) throw new IllegalStateException("process group " + name + " is closed");
        RuntimeException b = broken;
        if (b instanceof RankRemovedException r) throw new RankRemovedException(r.getMessage(), r.epoch());
        if (b != null) {
            throw new IllegalStateException("process group " + name + " on rank " + rank + " is unusable after an earlier error: " + b.getMessage(), b);
        }
        if (!joined) {
            throw new IllegalStateException("rank " + rank + " of group '" + name + "' was started with isExtension=true and has not joined yet:"
                    + " call joinGroup() before any collective or P2P operation");
        }
    }

    /** Leaves the group: stops this rank's threads, unregisters its segment; does not wait for peers. */
    @Override
    public void close() {
        if (closed) return;
        if (extensionProcess && !joined) {
            try {
                store.delete(keyPrefix() + "join/" + rank); // withdraw the join request
            } catch (RuntimeException e) {
                LOG.debug("could not withdraw the join request of rank {}: {}", rank, e.toString());
            }
        }
        closed = true;
        List<ProcessGroup> kids;
        synchronized (this) { kids = new ArrayList<>(children); }
        for (ProcessGroup g : kids) g.close();
        shutdown();
        LOG.info("closed group={} rank={}", name, rank);
    }

    private void shutdown() {
        closed = true;
        EpochPlane pl = plane;
        if (pl != null) pl.channels.abort();
        List<ExecutorService> threads = new ArrayList<>();
        synchronized (this) {
            if (opThread != null) threads.add(opThread);
            for (ExecutorService e : sendThreads) if (e != null) threads.add(e);
            for (ExecutorService e : recvThreads) if (e != null) threads.add(e);
        }
        for (ExecutorService e : threads) e.shutdownNow();
        for (ExecutorService e : threads) {
            try {
                e.awaitTermination(5, TimeUnit.SECONDS);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
            }
        }
        agreement.close();
        if (pl != null) pl.close();
        backup.close();
        runtime.release();
    }

    @Override
    public String toString() { return "ProcessGroup(" + name + ", rank " + rank + " of " + state.worldSize() + ", " + backend + ", epoch " + state.epoch() + ")"; }
}
