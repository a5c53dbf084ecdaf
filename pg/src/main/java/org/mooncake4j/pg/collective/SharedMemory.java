package org.mooncake4j.pg.collective;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicLong;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;

/**
 * Host memory this process registered with its transfer engine so that collectives can use it in
 * place: tensors from {@code ProcessGroup.allocate} and the groups' all-reduce scratch buffers.
 * Processes on the same host map each other's registered memory (shm), so a large all-reduce over
 * such tensors reads the peers' inputs where they are instead of copying them through the staging
 * inboxes (see {@link RegisteredAllReduce}).
 *
 * <p>A region is the segment {@code <engine name>.pgmem.<id>}: a peer derives the name from the
 * engine name of a member's group segment and the id that member puts into its description of the
 * operation. Thread-safe: {@link #find} reads an immutable sorted snapshot and allocates nothing.
 */
public final class SharedMemory implements AutoCloseable {
    /** One registered region: {@code [start, end)} in this process's address space. */
    public record Region(long id, long start, long end, LocalSegment segment) {
        public MemorySegment memory() { return segment.memory(); }
    }

    private static final Region[] NONE = new Region[0];
    private final TransferEngine engine;
    private final AtomicLong nextId = new AtomicLong(1);
    private volatile Region[] regions = NONE;
    private boolean closed;

    public SharedMemory(TransferEngine engine) { this.engine = engine; }

    public static String segmentName(String engineName, long id) { return engineName + ".pgmem." + id; }

    /** Registers {@code bytes} (at least 1) of zeroed shared memory. */
    public synchronized Region allocate(long bytes) {
        if (closed) throw new IllegalStateException("the process group's shared memory is closed: allocate before closing the group");
        if (bytes < 1) bytes = 1;
        long id = nextId.getAndIncrement();
        LocalSegment seg = engine.registerSegment(segmentName(engine.name(), id), align(bytes, 4096));
        Region r = new Region(id, seg.memory().address(), seg.memory().address() + seg.memory().byteSize(), seg);
        Region[] cur = regions;
        Region[] next = Arrays.copyOf(cur, cur.length + 1);
        next[cur.length] = r;
        Arrays.sort(next, (a, b) -> Long.compare(a.start, b.start));
        regions = next;
        return r;
    }

    /** Unregisters {@code r}; peers that mapped it keep their mapping until they unmap it. */
    public synchronized void free(Region r) {
        Region[] cur = regions;
        int k = -1;
        for (int i = 0; i < cur.length; i++) if (cur[i] == r) k = i;
        if (k < 0) return;
        Region[] next = new Region[cur.length - 1];
        System.arraycopy(cur, 0, next, 0, k);
        System.arraycopy(cur, k + 1, next, k, cur.length - k - 1);
        regions = next;
        r.segment.close();
    }

    /** The region that holds all of {@code data}, or null when {@code data} is not (wholly) registered memory. */
    public Region find(MemorySegment data) {
        Region[] rs = regions;
        long a = data.address(), e = a + data.byteSize();
        int lo = 0, hi = rs.length - 1;
        while (lo <= hi) {
            int mid = (lo + hi) >>> 1;
            Region r = rs[mid];
            if (a < r.start) hi = mid - 1;
            else if (a >= r.end) lo = mid + 1;
            else return e <= r.end ? r : null;
        }
        return null;
    }

    /**
     * Maps peer memory {@code id} of the engine {@code engineName} (cached by the engine). Returns
     * null when the segment is reached over tcp, so it cannot be read in place.
     */
    public MemorySegment openPeer(String engineName, long id, Deadline deadline) {
        RemoteSegment s = engine.openSegment(segmentName(engineName, id), deadline);
        return s.mapping();
    }

    @Override
    public synchronized void close() {
        closed = true;
        for (Region r : regions) r.segment.close();
        regions = NONE;
    }

    private static long align(long v, long a) { return (v + a - 1) / a * a; }
}
