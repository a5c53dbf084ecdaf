package org.mooncake4j.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.mooncake4j.cuda.internal.CudaDriver;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One device buffer of the same size and {@link Layout} on every rank of a group (one process and one
 * GPU per rank, on one host), each mapped into every other rank's process, so that kernels read and
 * write any rank's heap over NVLink. The GPU collectives ({@link CudaCollectives}) keep their arrival
 * flags and staging banks here.
 *
 * <p>Creation is collective: every rank calls {@link #create} with the same world size and heap size,
 * and the ranks swap what they need through an {@link Exchange} (the process group implements it with
 * its metadata store; {@link FileExchange} with files in a shared directory). {@link Sharing#AUTO}
 * tries {@code cuMemCreate} memory with shareable handles first ({@link DeviceBuffer#allocateShareable}:
 * a fabric handle where the platform allows it, else a POSIX file descriptor taken over with
 * {@code pidfd_getfd}), and when any rank cannot allocate, export or import it, every rank falls back
 * to {@code cuMemAlloc} with legacy IPC handles. The ranks agree on each step, so they all end with the
 * same kind of memory or all fail with the same error. The header and flags are zeroed before the last
 * exchange, so no peer signals into uninitialised flags.
 *
 * <p>Threading: immutable after creation; the accessors are thread-safe. {@link #close()} must not
 * race with kernels using the heap.
 *
 * <p>Ownership: the creator owns the heap and releases it with {@link #close()}, which unmaps the
 * peers' heaps and frees this rank's. Close only after every rank has finished its last operation on
 * the heap (agree on that with a barrier), because peers read and write this rank's memory.
 */
public final class SymmetricHeap implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(SymmetricHeap.class);

    /** The largest group: the kernels are compiled for 1 to 8 ranks (one host). */
    public static final int MAX_RANKS = 8;
    /** Blocks per SM that the collectives launch (their kernels use up to 128 registers a thread). */
    static final int BLOCKS_PER_SM = 1;

    /**
     * How the ranks swap the bytes each needs from the others during {@link #create}: one round publishes
     * this rank's bytes and returns every rank's bytes of the same round, indexed by rank (this rank's
     * included). Every rank calls it the same number of times, in the same order.
     *
     * <p>An implementation must bound every call with a deadline: when some rank does not publish in
     * time it throws (e.g. {@link ExchangeTimeoutException}) naming the missing ranks, and never blocks
     * forever.
     */
    @FunctionalInterface
    public interface Exchange {
        byte[][] allGather(byte[] mine);
    }

    /** Which kind of device memory the heap uses. */
    public enum Sharing {
        /** {@link #SHAREABLE} where every rank can use it, else {@link #LEGACY_IPC}. */
        AUTO,
        /** {@code cuMemCreate} with a fabric or POSIX file-descriptor handle; fail when not possible. */
        SHAREABLE,
        /** {@code cuMemAlloc} with legacy CUDA IPC handles. */
        LEGACY_IPC
    }

    /**
     * Where things are inside a heap of {@code heapBytes}: a 128-byte header (the u32 abort word at 0,
     * non-zero once a collective on this GPU timed out), {@value #MAX_BLOCKS} rows of arrival flags
     * (row {@code b}, 128-byte aligned, holds one u64 per peer: {@code flags[b][p]} is written by block
     * {@code b} of rank {@code p}), then two data banks of {@link #bankBytes()} each, 4096-byte aligned.
     * The kernels in {@code collectives.cu} hard-code the header and flag constants.
     */
    public record Layout(long heapBytes, long dataOffset, long bankBytes) {
        public static final long ABORT_WORD_OFFSET = 0;
        public static final long FLAGS_OFFSET = 128;
        public static final long FLAG_ROW_BYTES = 128;
        public static final int MAX_BLOCKS = 512;
        public static final long DATA_ALIGNMENT = 4096;
        public static final long MIN_BANK_BYTES = 64 * 1024;
        /** The data area starts here in every heap. */
        public static final long DATA_OFFSET = roundUp(FLAGS_OFFSET + MAX_BLOCKS * FLAG_ROW_BYTES, DATA_ALIGNMENT);

        /** The layout of a heap of {@code heapBytes}; {@link IllegalArgumentException} when too small. */
        public static Layout of(long heapBytes) {
            if (heapBytes < minimumHeapBytes()) {
                throw new IllegalArgumentException("a symmetric heap needs at least " + minimumHeapBytes() + " bytes ("
                        + DATA_OFFSET + " for the header and flags, then two banks of at least " + MIN_BANK_BYTES
                        + "), got " + heapBytes + "; the banks bound one-shot all-reduce and the pipeline chunk size,"
                        + " so give it tens of MiB or more");
            }
            long bank = (heapBytes - DATA_OFFSET) / 2 / DATA_ALIGNMENT * DATA_ALIGNMENT;
            return new Layout(heapBytes, DATA_OFFSET, bank);
        }

        public static long minimumHeapBytes() { return DATA_OFFSET + 2 * MIN_BANK_BYTES; }

        /** The offset of {@code flags[block][peer]}. */
        public long flagOffset(int block, int peer) {
            if (block < 0 || block >= MAX_BLOCKS || peer < 0 || peer >= MAX_RANKS) {
                throw new IndexOutOfBoundsException("flag [" + block + "][" + peer + "] outside " + MAX_BLOCKS + " x " + MAX_RANKS);
            }
            return FLAGS_OFFSET + block * FLAG_ROW_BYTES + peer * 8L;
        }

        /** The offset of bank 0 or 1. */
        public long bankOffset(int bank) {
            if (bank != 0 && bank != 1) throw new IndexOutOfBoundsException("bank " + bank + " (there are banks 0 and 1)");
            return dataOffset + bank * bankBytes;
        }
    }

    private final CudaDevice device;
    private final int rank;
    private final int worldSize;
    private final Layout layout;
    private final Sharing sharing;
    private final DeviceBuffer own;
    private final DeviceBuffer[] peers;    // null at this rank's index
    private final long[] pointers;
    private final DeviceBuffer pointerTable;
    private final int blocksLimit;
    private boolean closed;

    private SymmetricHeap(CudaDevice device, int rank, int worldSize, Layout layout, Mapping mapping,
                          DeviceBuffer pointerTable, int blocksLimit) {
        this.device = device;
        this.rank = rank;
        this.worldSize = worldSize;
        this.layout = layout;
        this.sharing = mapping.sharing;
        this.own = mapping.own;
        this.peers = mapping.peers;
        this.pointers = mapping.pointers();
        this.pointerTable = pointerTable;
        this.blocksLimit = blocksLimit;
    }

    /** {@link #create(CudaDevice, int, int, long, Exchange, Sharing)} with {@link Sharing#AUTO}. */
    public static SymmetricHeap create(CudaDevice device, int rank, int worldSize, long heapBytes, Exchange exchange) {
        return create(device, rank, worldSize, heapBytes, exchange, Sharing.AUTO);
    }

    /**
     * Allocates this rank's heap of {@code heapBytes} on {@code device}, maps every peer's and uploads
     * the table of all ranks' base pointers. Collective: every rank of the group calls it with the same
     * {@code worldSize}, {@code heapBytes} and {@code sharing}. Throws when the exchange times out, the
     * ranks disagree on the arguments, or the memory cannot be shared; the message names the ranks.
     */
    public static SymmetricHeap create(CudaDevice device, int rank, int worldSize, long heapBytes, Exchange exchange,
                                       Sharing sharing) {
        checkArguments(rank, worldSize, heapBytes);
        if (exchange == null || sharing == null) throw new IllegalArgumentException("exchange and sharing must not be null");
        Layout layout = Layout.of(heapBytes);
        Mapping mapping = null;
        if (sharing != Sharing.LEGACY_IPC) {
            mapping = map(device, rank, worldSize, heapBytes, exchange, Sharing.SHAREABLE, sharing == Sharing.SHAREABLE);
        }
        if (mapping == null) mapping = map(device, rank, worldSize, heapBytes, exchange, Sharing.LEGACY_IPC, true);

        DeviceBuffer table = null;
        String failure = null;
        try {
            device.makeCurrent();
            CudaDriver.cuMemsetD8(mapping.own.pointer(), (byte) 0, layout.dataOffset());
            table = DeviceBuffer.allocate(device, worldSize * 8L);
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment host = arena.allocate(ValueLayout.JAVA_LONG, worldSize);
                MemorySegment.copy(mapping.pointers(), 0, host, ValueLayout.JAVA_LONG, 0, worldSize);
                CudaDriver.cuMemcpyHtoD(table.pointer(), host, host.byteSize());
            }
            device.synchronize();
        } catch (RuntimeException e) {
            failure = "rank " + rank + " could not initialise its heap on " + device + ": " + e.getMessage();
        }
        try {
            List<String> failed = failures(exchange.allGather(Verdict.encode(failure)));
            if (!failed.isEmpty()) {
                throw new IllegalStateException("the symmetric heap of " + worldSize + " ranks was not created: "
                        + String.join("; ", failed));
            }
        } catch (RuntimeException e) {
            if (table != null) table.close();
            mapping.close();
            throw e;
        }
        int blocks = Math.min(Layout.MAX_BLOCKS, mapping.minMultiprocessors * BLOCKS_PER_SM);
        SymmetricHeap heap = new SymmetricHeap(device, rank, worldSize, layout, mapping, table, blocks);
        LOG.debug("created {}", heap);
        return heap;
    }

    static void checkArguments(int rank, int worldSize, long heapBytes) {
        if (worldSize < 1 || worldSize > MAX_RANKS) {
            throw new IllegalArgumentException("a symmetric heap spans 1 to " + MAX_RANKS + " ranks (the GPUs of one host),"
                    + " got world size " + worldSize);
        }
        if (rank < 0 || rank >= worldSize) {
            throw new IllegalArgumentException("rank " + rank + " is outside the group of " + worldSize + " ranks (0.."
                    + (worldSize - 1) + ")");
        }
        Layout.of(heapBytes);
    }

    /** This rank's heap and its mappings of the peers' heaps, of one kind of memory. */
    private record Mapping(Sharing sharing, DeviceBuffer own, DeviceBuffer[] peers, int minMultiprocessors) {
        long[] pointers() {
            long[] p = new long[peers.length];
            for (int q = 0; q < peers.length; q++) p[q] = peers[q] == null ? own.pointer() : peers[q].pointer();
            return p;
        }

        void close() { closeAll(own, peers); }
    }

    /**
     * One attempt at a heap of {@code kind}: allocate and export, swap offers, map every peer, swap the
     * verdicts. Returns null (after releasing everything) when some rank could not take part and
     * {@code required} is false; every rank sees the same offers and verdicts, so all return null or
     * none does.
     */
    private static Mapping map(CudaDevice device, int rank, int worldSize, long heapBytes, Exchange exchange,
                               Sharing kind, boolean required) {
        DeviceBuffer own = null;
        byte[] handle = new byte[0];
        String note = "";
        try {
            if (kind == Sharing.SHAREABLE) {
                own = DeviceBuffer.allocateShareable(device, heapBytes);
                handle = own.exportHandle().toBytes();
            } else {
                own = DeviceBuffer.allocate(device, heapBytes);
                handle = own.ipcHandle().bytes();
            }
        } catch (RuntimeException e) {
            note = e.getMessage();
            if (own != null) own.close();
            own = null;
        }
        DeviceBuffer[] peers = new DeviceBuffer[worldSize];
        try {
            Offer mine = new Offer(rank, worldSize, heapBytes, device.multiprocessorCount(), ProcessHandle.current().pid(),
                    own == null ? null : kind, handle, note);
            Offer[] offers = Offer.decodeAll(exchange.allGather(mine.toBytes()), rank, worldSize, heapBytes);
            List<String> unable = new ArrayList<>();
            for (Offer o : offers) {
                if (o.kind() == null) unable.add("rank " + o.rank() + " could not allocate or export it: " + o.note());
            }
            if (!unable.isEmpty()) return giveUp(kind, required, unable, own, peers);

            String failure = null;
            for (int q = 0; q < worldSize && failure == null; q++) {
                if (q == rank) continue;
                try {
                    peers[q] = kind == Sharing.SHAREABLE
                            ? DeviceBuffer.importShareable(device, ShareableHandle.fromBytes(offers[q].handle()))
                            : DeviceBuffer.openIpc(device, IpcMemHandle.of(offers[q].handle()), heapBytes);
                } catch (RuntimeException e) {
                    failure = "rank " + rank + " could not map rank " + q + "'s heap (pid " + offers[q].pid() + "): "
                            + e.getMessage();
                }
            }
            List<String> failed = failures(exchange.allGather(Verdict.encode(failure)));
            if (!failed.isEmpty()) return giveUp(kind, required, failed, own, peers);
            int minSm = Integer.MAX_VALUE;
            for (Offer o : offers) minSm = Math.min(minSm, o.multiprocessors());
            return new Mapping(kind, own, peers, minSm);
        } catch (RuntimeException e) {
            closeAll(own, peers);
            throw e;
        }
    }

    private static Mapping giveUp(Sharing kind, boolean required, List<String> reasons, DeviceBuffer own,
                                  DeviceBuffer[] peers) {
        closeAll(own, peers);
        String what = kind == Sharing.SHAREABLE ? "cuMemCreate memory with shareable handles" : "cuMemAlloc memory with legacy IPC handles";
        if (required) {
            throw new IllegalStateException("the symmetric heap cannot use " + what + ": " + String.join("; ", reasons)
                    + (kind == Sharing.SHAREABLE ? ". Use Sharing.AUTO or LEGACY_IPC, or let the processes take each"
                    + " other's file descriptors (same user and kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE)." : "."));
        }
        LOG.info("symmetric heap: not using {} ({}); falling back to legacy IPC", what, String.join("; ", reasons));
        return null;
    }

    private static void closeAll(DeviceBuffer own, DeviceBuffer[] peers) {
        for (DeviceBuffer p : peers) {
            if (p != null) p.close();
        }
        if (own != null) own.close();
    }

    /** The messages of the ranks whose verdict was a failure, in rank order. */
    private static List<String> failures(byte[][] verdicts) {
        List<String> failed = new ArrayList<>();
        for (int q = 0; q < verdicts.length; q++) {
            String f = Verdict.decode(verdicts[q], q);
            if (f != null) failed.add(f);
        }
        return failed;
    }

    // ---- accessors -----------------------------------------------------------------------------

    public CudaDevice device() { return device; }

    public int rank() { return rank; }

    public int worldSize() { return worldSize; }

    public Layout layout() { return layout; }

    /** The kind of memory the ranks agreed on: {@link Sharing#SHAREABLE} or {@link Sharing#LEGACY_IPC}. */
    public Sharing sharing() { return sharing; }

    /** The handle type of {@link Sharing#SHAREABLE} heaps; null for legacy IPC. */
    public ShareableHandleType handleType() { return own.handleType(); }

    /** Rank {@code q}'s heap base as kernels in this process address it (this rank's own for {@code q == rank()}). */
    public long pointer(int q) {
        if (q < 0 || q >= worldSize) throw new IndexOutOfBoundsException("rank " + q + " outside 0.." + (worldSize - 1));
        return pointers[q];
    }

    /** A device array of {@link #worldSize()} u64: every rank's heap base, indexed by rank. */
    public long pointerTable() { return pointerTable.pointer(); }

    /** The most blocks a collective launches: one per SM of the smallest GPU of the group, at most {@value Layout#MAX_BLOCKS}. */
    public int blocksLimit() { return blocksLimit; }

    /** Unmaps the peers' heaps and frees this rank's (see the class comment); idempotent. */
    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        pointerTable.close();
        closeAll(own, peers);
    }

    @Override
    public String toString() {
        return "SymmetricHeap(rank " + rank + "/" + worldSize + ", " + device + ", " + layout.heapBytes() + " bytes, "
                + (sharing == Sharing.SHAREABLE ? "cuMemCreate/" + own.handleType() : "legacy IPC") + ", banks of "
                + layout.bankBytes() + " bytes, up to " + blocksLimit + " blocks)";
    }

    // ---- what the ranks swap -------------------------------------------------------------------

    /** A rank's offer: who it is, its GPU's SM count, and its heap handle (kind null: it has none, see note). */
    record Offer(int rank, int worldSize, long heapBytes, int multiprocessors, long pid, Sharing kind, byte[] handle,
                 String note) {
        private static final int MAGIC = 0x4d43_5349; // "MCSI"

        byte[] toBytes() {
            byte[] n = note.getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(44 + handle.length + n.length).order(ByteOrder.LITTLE_ENDIAN);
            b.putInt(MAGIC).putInt(rank).putInt(worldSize).putLong(heapBytes).putInt(multiprocessors).putLong(pid)
                    .putInt(kind == null ? -1 : kind.ordinal()).putInt(handle.length).put(handle).putInt(n.length).put(n);
            return b.array();
        }

        static Offer fromBytes(byte[] bytes, int from) {
            try {
                ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
                if (b.getInt() != MAGIC) throw new IllegalArgumentException("bad magic");
                int rank = b.getInt();
                int world = b.getInt();
                long heapBytes = b.getLong();
                int sm = b.getInt();
                long pid = b.getLong();
                int kind = b.getInt();
                byte[] handle = new byte[b.getInt()];
                b.get(handle);
                byte[] note = new byte[b.getInt()];
                b.get(note);
                return new Offer(rank, world, heapBytes, sm, pid, kind < 0 ? null : Sharing.values()[kind], handle,
                        new String(note, StandardCharsets.UTF_8));
            } catch (RuntimeException e) {
                throw new IllegalStateException("rank " + from + " published something that is not a symmetric heap offer ("
                        + e + "); do all ranks run the same mooncake4j version, and is the exchange used by this group only?");
            }
        }

        /** Decodes one round of offers and checks that the ranks agree on the group and the heap size. */
        static Offer[] decodeAll(byte[][] all, int rank, int worldSize, long heapBytes) {
            if (all.length != worldSize) {
                throw new IllegalStateException("the exchange returned " + all.length + " entries for a group of " + worldSize);
            }
            Offer[] offers = new Offer[worldSize];
            for (int q = 0; q < worldSize; q++) {
                Offer o = fromBytes(all[q], q);
                if (o.rank() != q || o.worldSize() != worldSize || o.heapBytes() != heapBytes) {
                    throw new IllegalStateException("rank " + rank + " (world size " + worldSize + ", heap " + heapBytes
                            + " bytes) got an offer at index " + q + " from rank " + o.rank() + " with world size "
                            + o.worldSize() + " and heap " + o.heapBytes() + " bytes; every rank must create the heap with"
                            + " the same world size and size, and each rank number must be used once");
                }
                offers[q] = o;
            }
            return offers;
        }
    }

    /** One rank's outcome of a step: null for success, else what failed. */
    static final class Verdict {
        private Verdict() {}

        static byte[] encode(String failure) {
            if (failure == null) return new byte[] {1};
            byte[] m = failure.getBytes(StandardCharsets.UTF_8);
            byte[] b = new byte[1 + m.length];
            System.arraycopy(m, 0, b, 1, m.length);
            return b;
        }

        static String decode(byte[] bytes, int from) {
            if (bytes.length == 0) return "rank " + from + " published an empty verdict";
            if (bytes[0] == 1 && bytes.length == 1) return null;
            return new String(bytes, 1, bytes.length - 1, StandardCharsets.UTF_8);
        }
    }

    private static long roundUp(long v, long m) { return (v + m - 1) / m * m; }
}
