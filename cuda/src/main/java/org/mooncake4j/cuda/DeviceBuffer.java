package org.mooncake4j.cuda;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import org.mooncake4j.cuda.internal.CudaDriver;
import org.mooncake4j.cuda.internal.PosixFds;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Device memory that other processes (and other GPUs) can reach, in one of four kinds:
 * <ul>
 * <li>{@link Kind#ALLOCATED}: {@code cuMemAlloc}; shared on the same host with a legacy IPC handle
 *     ({@link #ipcHandle()} → {@link #openIpc} in the other process).</li>
 * <li>{@link Kind#IPC_OPENED}: another process's {@code ALLOCATED} buffer mapped here.</li>
 * <li>{@link Kind#VIRTUAL}: {@code cuMemCreate} with a shareable handle type (fabric where the device
 *     and platform allow it, else a POSIX file descriptor), mapped with {@code cuMemMap} and made
 *     accessible to every peer GPU of this process; shared with {@link #exportHandle()} →
 *     {@link #importShareable}. This is the kind a multi-node NVLink fabric can reach: a buffer without
 *     a fabric handle is invisible to other nodes (see the MNNVL hang report in the design notes).</li>
 * <li>{@link Kind#VIRTUAL_IMPORTED}: another process's {@code VIRTUAL} buffer mapped here.</li>
 * </ul>
 * All pointers are unified virtual addresses: kernels on any GPU that was granted access use them
 * directly, over NVLink for peer memory.
 *
 * <p>Threading: the accessors are thread-safe; export, open, import and {@link #close()} make the
 * buffer's device current on the calling thread first (see {@link CudaDevice}). {@link #close()} must
 * not race with kernels still using the buffer.
 *
 * <p>Ownership: the process that allocated or mapped a buffer releases it with {@link #close()}: an
 * owner's memory is freed, an importer's mapping is removed. An owner must not close while peers still
 * use its memory; agree on that out of band (e.g. a barrier) before closing.
 */
public final class DeviceBuffer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(DeviceBuffer.class);

    /** How the memory was obtained, which decides how it is shared and released. */
    public enum Kind { ALLOCATED, IPC_OPENED, VIRTUAL, VIRTUAL_IMPORTED }

    private final CudaDevice device;
    private final Kind kind;
    private final long pointer;
    private final long size;
    private final long mappedSize;
    private final long allocation;                  // CUmemGenericAllocationHandle of the VIRTUAL kinds
    private final ShareableHandleType handleType;   // VIRTUAL kinds
    private ShareableHandle exported;
    private boolean closed;

    private DeviceBuffer(CudaDevice device, Kind kind, long pointer, long size, long mappedSize, long allocation,
                         ShareableHandleType handleType) {
        this.device = device;
        this.kind = kind;
        this.pointer = pointer;
        this.size = size;
        this.mappedSize = mappedSize;
        this.allocation = allocation;
        this.handleType = handleType;
    }

    // ---- cuMemAlloc + legacy IPC ---------------------------------------------------------------

    /** {@code bytes} of device memory on {@code device} ({@code cuMemAlloc}, 256-byte aligned). */
    public static DeviceBuffer allocate(CudaDevice device, long bytes) {
        requirePositive(bytes);
        device.makeCurrent();
        return new DeviceBuffer(device, Kind.ALLOCATED, CudaDriver.cuMemAlloc(bytes), bytes, bytes, 0, null);
    }

    /** The legacy IPC handle of an {@link Kind#ALLOCATED} buffer. */
    public IpcMemHandle ipcHandle() {
        requireKind(Kind.ALLOCATED, "ipcHandle()");
        device.makeCurrent();
        return IpcMemHandle.of(CudaDriver.cuIpcGetMemHandle(pointer));
    }

    /**
     * Maps another process's {@link Kind#ALLOCATED} buffer of {@code bytes} into this process, for use
     * by kernels on {@code device} (peer access is enabled on demand). A process cannot open its own
     * handles.
     */
    public static DeviceBuffer openIpc(CudaDevice device, IpcMemHandle handle, long bytes) {
        requirePositive(bytes);
        device.makeCurrent();
        long p = CudaDriver.cuIpcOpenMemHandle(handle.bytes(), CudaDriver.CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
        return new DeviceBuffer(device, Kind.IPC_OPENED, p, bytes, bytes, 0, null);
    }

    // ---- cuMemCreate + shareable handles -------------------------------------------------------

    /**
     * {@code bytes} of shareable device memory on {@code device}: a fabric handle when the device
     * reports fabric support and the platform permits it (an IMEX channel), else a POSIX file
     * descriptor. Read-write access is granted to {@code device} and every GPU of this process that can
     * access it as a peer.
     */
    public static DeviceBuffer allocateShareable(CudaDevice device, long bytes) {
        if (device.supportsFabricHandles()) {
            try {
                return allocateShareable(device, bytes, ShareableHandleType.FABRIC);
            } catch (CudaException e) {
                // Typically CUDA_ERROR_NOT_PERMITTED without an IMEX channel; a real shortage fails again below.
                LOG.info("{} reports fabric handle support but refused a fabric allocation ({}); using POSIX file"
                        + " descriptors, which reach this host's GPUs only", device, e.getMessage());
            }
        }
        return allocateShareable(device, bytes, ShareableHandleType.POSIX_FILE_DESCRIPTOR);
    }

    /** Like {@link #allocateShareable(CudaDevice, long)} with an explicit handle type, without fallback. */
    public static DeviceBuffer allocateShareable(CudaDevice device, long bytes, ShareableHandleType type) {
        requirePositive(bytes);
        if (!device.supportsVirtualMemory()) {
            throw new IllegalStateException(device + " does not support CUDA virtual memory management (cuMemCreate);"
                    + " use DeviceBuffer.allocate and IPC handles instead");
        }
        if (type == ShareableHandleType.POSIX_FILE_DESCRIPTOR && !device.supportsPosixFdHandles()) {
            throw new IllegalStateException(device + " cannot export memory as POSIX file descriptors");
        }
        if (type == ShareableHandleType.FABRIC && !device.supportsFabricHandles()) {
            throw new IllegalStateException(device + " does not support fabric handles (multi-node NVLink)");
        }
        device.makeCurrent();
        long granularity = CudaDriver.cuMemGetAllocationGranularity(device.handle(), type.cuValue(),
                CudaDriver.CU_MEM_ALLOC_GRANULARITY_MINIMUM);
        long mapped = roundUp(bytes, granularity);
        List<Integer> access = new ArrayList<>();
        access.add(device.handle());
        for (CudaDevice peer : CudaDevice.all()) {
            if (peer != device && peer.canAccessPeer(device)) access.add(peer.handle());
        }
        long allocation = CudaDriver.cuMemCreate(mapped, device.handle(), type.cuValue());
        long p = map(allocation, mapped, granularity, access.stream().mapToInt(Integer::intValue).toArray());
        return new DeviceBuffer(device, Kind.VIRTUAL, p, bytes, mapped, allocation, type);
    }

    /**
     * The handle another process passes to {@link #importShareable}, for a {@link Kind#VIRTUAL}
     * buffer. Exported once; a file descriptor stays open until {@link #close()}.
     */
    public synchronized ShareableHandle exportHandle() {
        requireKind(Kind.VIRTUAL, "exportHandle()");
        if (exported == null) {
            device.makeCurrent();
            long pid = ProcessHandle.current().pid();
            exported = handleType == ShareableHandleType.FABRIC
                    ? ShareableHandle.fabric(size, mappedSize, pid, CudaDriver.cuMemExportToFabric(allocation))
                    : ShareableHandle.posixFd(size, mappedSize, pid, CudaDriver.cuMemExportToPosixFd(allocation));
        }
        return exported;
    }

    /**
     * Maps another process's {@link Kind#VIRTUAL} buffer into this process with read-write access for
     * {@code device}. A file-descriptor handle is taken over from the exporter with
     * {@code pidfd_getfd(2)} (see {@link ShareableHandle} for the permission this needs).
     */
    public static DeviceBuffer importShareable(CudaDevice device, ShareableHandle handle) {
        device.makeCurrent();
        long allocation;
        if (handle.type() == ShareableHandleType.FABRIC) {
            allocation = CudaDriver.cuMemImportFromFabric(handle.fabricHandle());
        } else if (handle.ownerPid() == ProcessHandle.current().pid()) {
            allocation = CudaDriver.cuMemImportFromPosixFd(handle.fd());
        } else {
            int fd = PosixFds.takeFromProcess(handle.ownerPid(), handle.fd());
            try {
                allocation = CudaDriver.cuMemImportFromPosixFd(fd);
            } finally {
                PosixFds.close(fd);
            }
        }
        long granularity = CudaDriver.cuMemGetAllocationGranularity(device.handle(), handle.type().cuValue(),
                CudaDriver.CU_MEM_ALLOC_GRANULARITY_MINIMUM);
        long p = map(allocation, handle.mappedSize(), granularity, new int[] {device.handle()});
        return new DeviceBuffer(device, Kind.VIRTUAL_IMPORTED, p, handle.size(), handle.mappedSize(), allocation,
                handle.type());
    }

    /**
     * Reserves an address range, maps {@code allocation} and grants access to {@code accessors}; on
     * failure undoes it all, releasing {@code allocation} too.
     */
    private static long map(long allocation, long mapped, long alignment, int[] accessors) {
        Deque<Runnable> undo = new ArrayDeque<>();
        undo.push(() -> CudaDriver.cuMemRelease(allocation));
        try {
            long p = CudaDriver.cuMemAddressReserve(mapped, alignment);
            undo.push(() -> CudaDriver.cuMemAddressFree(p, mapped));
            CudaDriver.cuMemMap(p, mapped, allocation);
            undo.push(() -> CudaDriver.cuMemUnmap(p, mapped));
            CudaDriver.cuMemSetAccess(p, mapped, accessors);
            return p;
        } catch (RuntimeException e) {
            while (!undo.isEmpty()) {
                try {
                    undo.pop().run();
                } catch (RuntimeException cleanup) {
                    e.addSuppressed(cleanup);
                }
            }
            throw e;
        }
    }

    // ---- accessors -----------------------------------------------------------------------------

    public CudaDevice device() { return device; }

    public Kind kind() { return kind; }

    /** The device pointer (a unified virtual address). */
    public long pointer() { return pointer; }

    /** The usable bytes. */
    public long size() { return size; }

    /** The shareable handle type of the {@code VIRTUAL} kinds; null for the others. */
    public ShareableHandleType handleType() { return handleType; }

    /** Releases the memory or mapping (see the class comment); idempotent. */
    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        device.makeCurrent();
        switch (kind) {
            case ALLOCATED -> CudaDriver.cuMemFree(pointer);
            case IPC_OPENED -> CudaDriver.cuIpcCloseMemHandle(pointer);
            case VIRTUAL, VIRTUAL_IMPORTED -> {
                CudaDriver.cuMemUnmap(pointer, mappedSize);
                CudaDriver.cuMemAddressFree(pointer, mappedSize);
                CudaDriver.cuMemRelease(allocation);
                if (exported != null && exported.type() == ShareableHandleType.POSIX_FILE_DESCRIPTOR) {
                    PosixFds.close(exported.fd());
                }
            }
        }
    }

    private void requireKind(Kind expected, String operation) {
        if (kind != expected) throw new IllegalStateException(operation + " needs a " + expected + " buffer, this one is " + kind);
    }

    private static void requirePositive(long bytes) {
        if (bytes <= 0) throw new IllegalArgumentException("buffer size must be positive, got " + bytes);
    }

    private static long roundUp(long bytes, long granularity) {
        return (bytes + granularity - 1) / granularity * granularity;
    }

    @Override
    public String toString() {
        return "DeviceBuffer(" + kind + ", " + device + ", 0x" + Long.toHexString(pointer) + ", " + size + " bytes)";
    }
}
