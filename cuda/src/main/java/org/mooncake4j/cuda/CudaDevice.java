package org.mooncake4j.cuda;

import java.lang.foreign.MemorySegment;
import java.util.List;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * One CUDA device visible to this process (after {@code CUDA_VISIBLE_DEVICES}), with its properties
 * read once, and its primary context.
 *
 * <p>Threading: a CUDA context is current per OS thread. {@link #makeCurrent()} binds this device's
 * primary context to the calling thread (retaining it on first use) and is the only method in
 * mooncake4j that changes a thread's current context. Every operation of {@link CudaStream},
 * {@link CudaEvent}, {@link CudaModule}, {@link CudaFunction}, {@link DeviceBuffer},
 * {@link PinnedHostMemory} and {@link CudaDeviceMemory} calls it for its own device first, in the same
 * call, so callers never need to, and the pair cannot be split across carrier threads of a virtual
 * thread. The context last made current stays current on the thread afterwards.
 *
 * <p>Ownership: instances are process-wide singletons. The primary context is retained once and kept
 * for the life of the process (it is released by the driver at exit), so it never has to be closed.
 */
public final class CudaDevice {
    private static final Object LOCK = new Object();
    private static volatile CudaDevice[] devices;

    private final int ordinal;
    private final int handle;
    private final String name;
    private final int computeMajor;
    private final int computeMinor;
    private final long totalMemory;
    private final int multiprocessors;
    private volatile MemorySegment context;

    private CudaDevice(int ordinal) {
        this.ordinal = ordinal;
        this.handle = CudaDriver.cuDeviceGet(ordinal);
        this.name = CudaDriver.cuDeviceGetName(handle);
        this.computeMajor = attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        this.computeMinor = attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        this.totalMemory = CudaDriver.cuDeviceTotalMem(handle);
        this.multiprocessors = attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    }

    private static CudaDevice[] devices() {
        CudaDevice[] d = devices;
        if (d != null) return d;
        synchronized (LOCK) {
            if (devices != null) return devices;
            CudaDevice[] found;
            try {
                CudaDriver.init();
                found = new CudaDevice[CudaDriver.cuDeviceGetCount()];
                for (int i = 0; i < found.length; i++) found[i] = new CudaDevice(i);
            } catch (CudaException e) {
                if (!e.is(CuResult.CUDA_ERROR_NO_DEVICE)) throw e;
                found = new CudaDevice[0];
            }
            devices = found;
            return found;
        }
    }

    /** The number of CUDA devices this process sees; 0 when the driver is present but sees none. */
    public static int count() { return devices().length; }

    /**
     * The device ordinal of the worker with local rank {@code localRank}: {@code localRank} itself, or
     * {@code localRank} modulo the visible devices when there are more local ranks than devices (several
     * ranks then share a GPU, which the symmetric heaps allow: a test setup, e.g. 8 ranks on 4 GPUs).
     * Without a driver or device it returns {@code localRank} unchanged (opening it then says why).
     */
    public static int ordinalForLocalRank(int localRank) {
        int n;
        try {
            n = count();
        } catch (CudaUnavailableException | CudaException e) {
            return localRank; // opening the device reports the same problem with its context
        }
        return ordinalFor(localRank, n);
    }

    /** {@link #ordinalForLocalRank} with {@code visible} devices. */
    static int ordinalFor(int localRank, int visible) {
        return visible > 0 && localRank >= visible ? localRank % visible : localRank;
    }

    /** Every visible device, by ordinal. */
    public static List<CudaDevice> all() { return List.of(devices()); }

    /** Device {@code ordinal}. */
    public static CudaDevice get(int ordinal) {
        CudaDevice[] d = devices();
        if (ordinal < 0 || ordinal >= d.length) {
            String visible = System.getenv("CUDA_VISIBLE_DEVICES");
            throw new IllegalArgumentException("CUDA device cuda:" + ordinal + " does not exist: this process sees "
                    + d.length + " CUDA device(s) (CUDA_VISIBLE_DEVICES=" + (visible == null ? "unset" : "'" + visible + "'")
                    + ").");
        }
        return d[ordinal];
    }

    /** The driver's CUDA version, e.g. 13000 for CUDA 13.0. */
    public static int driverVersion() {
        CudaDriver.init();
        return CudaDriver.cuDriverGetVersion();
    }

    public int ordinal() { return ordinal; }

    /** The {@code CUdevice} handle, as the driver API takes it. */
    public int handle() { return handle; }

    public String name() { return name; }

    public int computeCapabilityMajor() { return computeMajor; }

    public int computeCapabilityMinor() { return computeMinor; }

    /** E.g. {@code 9.0}. */
    public String computeCapability() { return computeMajor + "." + computeMinor; }

    public long totalMemory() { return totalMemory; }

    public int multiprocessorCount() { return multiprocessors; }

    /** A {@code CU_DEVICE_ATTRIBUTE_*} value. */
    public int attribute(int attribute) { return CudaDriver.cuDeviceGetAttribute(attribute, handle); }

    /** Whether kernels on this device can load and store {@code peer}'s memory (NVLink or PCIe P2P). */
    public boolean canAccessPeer(CudaDevice peer) { return CudaDriver.cuDeviceCanAccessPeer(handle, peer.handle); }

    /** {@code cuMemCreate}/{@code cuMemMap} support. */
    public boolean supportsVirtualMemory() {
        return attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) != 0;
    }

    public boolean supportsPosixFdHandles() {
        return attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED) != 0;
    }

    /** Fabric handles (multi-node NVLink); allocation may still be refused without an IMEX channel. */
    public boolean supportsFabricHandles() {
        return attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED) != 0;
    }

    /** The PCI address, e.g. {@code 0000:18:00.0}. */
    public String pciBusId() {
        return "%04x:%02x:%02x.0".formatted(attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
                attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_PCI_BUS_ID), attribute(CudaDriver.CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID));
    }

    /** Makes this device's primary context current on the calling thread (see the class comment). */
    public void makeCurrent() {
        MemorySegment c = context;
        if (c == null) {
            synchronized (this) {
                c = context;
                if (c == null) context = c = CudaDriver.cuDevicePrimaryCtxRetain(handle);
            }
        }
        CudaDriver.cuCtxSetCurrent(c);
    }

    /** Waits until all work queued on this device (every stream of the primary context) has finished. */
    public void synchronize() {
        makeCurrent();
        CudaDriver.cuCtxSynchronize();
    }

    @Override
    public String toString() {
        return "cuda:" + ordinal + " (" + name + ", compute capability " + computeCapability() + ")";
    }
}
