package org.mooncake4j.cuda.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import org.mooncake4j.cuda.CuResult;
import org.mooncake4j.cuda.CudaException;
import org.mooncake4j.cuda.CudaUnavailableException;

/**
 * Hand-written FFM downcalls to the CUDA driver API in {@code libcuda.so.1}. This is the only class
 * that defines downcall handles to the driver, and every {@code CUresult} goes through one checker
 * ({@link #check}), which throws {@link CudaException} with the call, the code, its name and the
 * driver's description.
 *
 * <p>Binding: the library is opened and the handles are made when this class is first used. Without
 * the library every method throws {@link CudaUnavailableException} (never {@link UnsatisfiedLinkError});
 * a symbol that an older driver lacks fails the same way when that one function is called.
 *
 * <p>Threading: the methods are thread-safe, but CUDA resolves device pointers, streams and modules
 * against the calling thread's <em>current context</em>. Only {@link #cuCtxSetCurrent} changes it;
 * {@link org.mooncake4j.cuda.CudaDevice#makeCurrent()} is the one caller, and the classes of
 * {@code org.mooncake4j.cuda} call it before every operation that needs a context. Methods of this
 * class never set a context themselves.
 *
 * <p>Ownership: the methods return raw handles and pointers; the caller owns them and releases them
 * with the matching call ({@code cuMemFree} for {@code cuMemAlloc}, ...). Handles to opaque driver
 * objects (context, stream, event, module, function) are zero-length {@link MemorySegment}s.
 */
public final class CudaDriver {
    public static final String LIBRARY = "libcuda.so.1";

    public static final String MISSING_LIBRARY_MESSAGE = "The NVIDIA driver library " + LIBRARY
            + " was not found: this host has no NVIDIA driver, so the 'mooncake' (CUDA) backend cannot run here;"
            + " use backend 'mooncake-cpu' or run on a GPU host.";

    // CUdevice_attribute
    public static final int CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 1;
    public static final int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public static final int CU_DEVICE_ATTRIBUTE_PCI_BUS_ID = 33;
    public static final int CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID = 34;
    public static final int CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING = 41;
    public static final int CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID = 50;
    public static final int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public static final int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    public static final int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
    public static final int CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102;
    public static final int CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103;
    public static final int CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED = 128;
    // CUpointer_attribute
    public static final int CU_POINTER_ATTRIBUTE_DEVICE_POINTER = 3;
    public static final int CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9;
    // flags
    public static final int CU_STREAM_NON_BLOCKING = 0x1;
    public static final int CU_EVENT_DEFAULT = 0x0;
    public static final int CU_EVENT_DISABLE_TIMING = 0x2;
    public static final int CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1;
    public static final int CU_MEMHOSTREGISTER_PORTABLE = 0x1;
    public static final int CU_MEMHOSTREGISTER_DEVICEMAP = 0x2;
    public static final int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
    // CUmemAllocationHandleType, CUmemAllocationGranularity_flags
    public static final int CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 0x1;
    public static final int CU_MEM_HANDLE_TYPE_FABRIC = 0x8;
    public static final int CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0x0;
    public static final int CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 0x1;

    private static final Linker LINKER = Linker.nativeLinker();
    private static final SymbolLookup LIB = openLibrary();
    private static final MethodHandle UNAVAILABLE;
    private static final MethodHandle MISSING_SYMBOL;

    static {
        try {
            MethodHandles.Lookup lookup = MethodHandles.lookup();
            UNAVAILABLE = lookup.findStatic(CudaDriver.class, "unavailable", MethodType.methodType(int.class));
            MISSING_SYMBOL = lookup.findStatic(CudaDriver.class, "missingSymbol",
                    MethodType.methodType(int.class, String.class));
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    // ---- the downcall handles: every driver function mooncake4j uses, in one place -------------

    private static final MethodHandle cuInit = bind(fn(JAVA_INT), "cuInit");
    private static final MethodHandle cuDriverGetVersion = bind(fn(ADDRESS), "cuDriverGetVersion");
    private static final MethodHandle cuGetErrorName = bind(fn(JAVA_INT, ADDRESS), "cuGetErrorName");
    private static final MethodHandle cuGetErrorString = bind(fn(JAVA_INT, ADDRESS), "cuGetErrorString");
    private static final MethodHandle cuDeviceGetCount = bind(fn(ADDRESS), "cuDeviceGetCount");
    private static final MethodHandle cuDeviceGet = bind(fn(ADDRESS, JAVA_INT), "cuDeviceGet");
    private static final MethodHandle cuDeviceGetName = bind(fn(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceGetName");
    private static final MethodHandle cuDeviceGetAttribute =
            bind(fn(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceGetAttribute");
    private static final MethodHandle cuDeviceTotalMem_v2 = bind(fn(ADDRESS, JAVA_INT), "cuDeviceTotalMem_v2");
    private static final MethodHandle cuDeviceCanAccessPeer =
            bind(fn(ADDRESS, JAVA_INT, JAVA_INT), "cuDeviceCanAccessPeer");
    private static final MethodHandle cuDevicePrimaryCtxRetain =
            bind(fn(ADDRESS, JAVA_INT), "cuDevicePrimaryCtxRetain");
    private static final MethodHandle cuCtxSetCurrent = bind(fn(ADDRESS), "cuCtxSetCurrent");
    private static final MethodHandle cuCtxGetCurrent = bind(fn(ADDRESS), "cuCtxGetCurrent");
    private static final MethodHandle cuCtxSynchronize = bind(fn(), "cuCtxSynchronize");
    private static final MethodHandle cuMemAlloc_v2 = bind(fn(ADDRESS, JAVA_LONG), "cuMemAlloc_v2");
    private static final MethodHandle cuMemFree_v2 = bind(fn(JAVA_LONG), "cuMemFree_v2");
    private static final MethodHandle cuMemcpyHtoD_v2 =
            bind(fn(JAVA_LONG, ADDRESS, JAVA_LONG), "cuMemcpyHtoD_v2");
    private static final MethodHandle cuMemcpyDtoH_v2 =
            bind(fn(ADDRESS, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoH_v2");
    private static final MethodHandle cuMemcpyDtoD_v2 =
            bind(fn(JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemcpyDtoD_v2");
    private static final MethodHandle cuMemcpyHtoDAsync_v2 =
            bind(fn(JAVA_LONG, ADDRESS, JAVA_LONG, ADDRESS), "cuMemcpyHtoDAsync_v2");
    private static final MethodHandle cuMemcpyDtoHAsync_v2 =
            bind(fn(ADDRESS, JAVA_LONG, JAVA_LONG, ADDRESS), "cuMemcpyDtoHAsync_v2");
    private static final MethodHandle cuMemcpyDtoDAsync_v2 =
            bind(fn(JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS), "cuMemcpyDtoDAsync_v2");
    private static final MethodHandle cuMemsetD8_v2 = bind(fn(JAVA_LONG, JAVA_BYTE, JAVA_LONG), "cuMemsetD8_v2");
    private static final MethodHandle cuMemsetD8Async = bind(fn(JAVA_LONG, JAVA_BYTE, JAVA_LONG, ADDRESS), "cuMemsetD8Async");
    private static final MethodHandle cuMemsetD32_v2 = bind(fn(JAVA_LONG, JAVA_INT, JAVA_LONG), "cuMemsetD32_v2");
    private static final MethodHandle cuMemAllocHost_v2 = bind(fn(ADDRESS, JAVA_LONG), "cuMemAllocHost_v2");
    private static final MethodHandle cuMemFreeHost = bind(fn(ADDRESS), "cuMemFreeHost");
    private static final MethodHandle cuMemHostRegister_v2 =
            bind(fn(ADDRESS, JAVA_LONG, JAVA_INT), "cuMemHostRegister_v2");
    private static final MethodHandle cuMemHostUnregister = bind(fn(ADDRESS), "cuMemHostUnregister");
    private static final MethodHandle cuPointerGetAttribute =
            bind(fn(ADDRESS, JAVA_INT, JAVA_LONG), "cuPointerGetAttribute");
    private static final MethodHandle cuStreamCreate = bind(fn(ADDRESS, JAVA_INT), "cuStreamCreate");
    private static final MethodHandle cuStreamDestroy_v2 = bind(fn(ADDRESS), "cuStreamDestroy_v2");
    private static final MethodHandle cuStreamSynchronize = bind(fn(ADDRESS), "cuStreamSynchronize");
    private static final MethodHandle cuStreamWaitEvent = bind(fn(ADDRESS, ADDRESS, JAVA_INT), "cuStreamWaitEvent");
    private static final MethodHandle cuEventCreate = bind(fn(ADDRESS, JAVA_INT), "cuEventCreate");
    private static final MethodHandle cuEventRecord = bind(fn(ADDRESS, ADDRESS), "cuEventRecord");
    private static final MethodHandle cuEventSynchronize = bind(fn(ADDRESS), "cuEventSynchronize");
    private static final MethodHandle cuEventQuery = bind(fn(ADDRESS), "cuEventQuery");
    /** CUDA 12.8+ headers map cuEventElapsedTime to the _v2 symbol; older drivers only have the first. */
    private static final MethodHandle cuEventElapsedTime_v2 =
            bind(fn(ADDRESS, ADDRESS, ADDRESS), "cuEventElapsedTime_v2", "cuEventElapsedTime");
    private static final MethodHandle cuEventDestroy_v2 = bind(fn(ADDRESS), "cuEventDestroy_v2");
    private static final MethodHandle cuModuleLoadData = bind(fn(ADDRESS, ADDRESS), "cuModuleLoadData");
    private static final MethodHandle cuModuleGetFunction =
            bind(fn(ADDRESS, ADDRESS, ADDRESS), "cuModuleGetFunction");
    private static final MethodHandle cuModuleUnload = bind(fn(ADDRESS), "cuModuleUnload");
    private static final MethodHandle cuLaunchKernel = bind(fn(ADDRESS, JAVA_INT, JAVA_INT, JAVA_INT,
            JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, ADDRESS, ADDRESS), "cuLaunchKernel");
    private static final MethodHandle cuLaunchKernelEx = bind(fn(ADDRESS, ADDRESS, ADDRESS, ADDRESS), "cuLaunchKernelEx");
    private static final MethodHandle cuFuncSetAttribute =
            bind(fn(ADDRESS, JAVA_INT, JAVA_INT), "cuFuncSetAttribute");
    private static final MethodHandle cuIpcGetMemHandle = bind(fn(ADDRESS, JAVA_LONG), "cuIpcGetMemHandle");
    private static final MethodHandle cuIpcOpenMemHandle_v2 =
            bind(fn(ADDRESS, CuStructs.IPC_MEM_HANDLE, JAVA_INT), "cuIpcOpenMemHandle_v2");
    private static final MethodHandle cuIpcCloseMemHandle = bind(fn(JAVA_LONG), "cuIpcCloseMemHandle");
    private static final MethodHandle cuMemCreate = bind(fn(ADDRESS, JAVA_LONG, ADDRESS, JAVA_LONG), "cuMemCreate");
    private static final MethodHandle cuMemRelease = bind(fn(JAVA_LONG), "cuMemRelease");
    private static final MethodHandle cuMemAddressReserve =
            bind(fn(ADDRESS, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemAddressReserve");
    private static final MethodHandle cuMemAddressFree = bind(fn(JAVA_LONG, JAVA_LONG), "cuMemAddressFree");
    private static final MethodHandle cuMemMap =
            bind(fn(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG), "cuMemMap");
    private static final MethodHandle cuMemUnmap = bind(fn(JAVA_LONG, JAVA_LONG), "cuMemUnmap");
    private static final MethodHandle cuMemSetAccess =
            bind(fn(JAVA_LONG, JAVA_LONG, ADDRESS, JAVA_LONG), "cuMemSetAccess");
    private static final MethodHandle cuMemExportToShareableHandle =
            bind(fn(ADDRESS, JAVA_LONG, JAVA_INT, JAVA_LONG), "cuMemExportToShareableHandle");
    private static final MethodHandle cuMemImportFromShareableHandle =
            bind(fn(ADDRESS, ADDRESS, JAVA_INT), "cuMemImportFromShareableHandle");
    private static final MethodHandle cuMemGetAllocationGranularity =
            bind(fn(ADDRESS, ADDRESS, JAVA_INT), "cuMemGetAllocationGranularity");

    private static final Object INIT_LOCK = new Object();
    private static volatile boolean initialized;

    private CudaDriver() {}

    private static SymbolLookup openLibrary() {
        try {
            return SymbolLookup.libraryLookup(LIBRARY, Arena.global());
        } catch (IllegalArgumentException | IllegalCallerException e) {
            return null;
        }
    }

    private static FunctionDescriptor fn(MemoryLayout... args) { return FunctionDescriptor.of(JAVA_INT, args); }

    /** The first of {@code symbols} the library has; a handle that throws when the library or all are missing. */
    private static MethodHandle bind(FunctionDescriptor descriptor, String... symbols) {
        MethodType type = descriptor.toMethodType();
        if (LIB == null) return MethodHandles.dropArguments(UNAVAILABLE, 0, type.parameterList());
        for (String s : symbols) {
            var address = LIB.find(s);
            if (address.isPresent()) return LINKER.downcallHandle(address.get(), descriptor);
        }
        return MethodHandles.dropArguments(MISSING_SYMBOL.bindTo(symbols[0]), 0, type.parameterList());
    }

    private static int unavailable() { throw new CudaUnavailableException(MISSING_LIBRARY_MESSAGE); }

    private static int missingSymbol(String symbol) {
        throw new CudaUnavailableException("The NVIDIA driver library " + LIBRARY + " has no function " + symbol
                + ": the driver is older than mooncake4j needs. Install an NVIDIA driver for CUDA 12.4 or newer.");
    }

    /** True when {@code libcuda.so.1} could be opened (says nothing about GPUs being present). */
    public static boolean libraryPresent() { return LIB != null; }

    // ---- errors ------------------------------------------------------------------------------

    /** The one checker: throws {@link CudaException} for any {@code CUresult} other than success. */
    static void check(int result, String call) {
        if (result != 0) throw failure(result, call);
    }

    /** {@link #check(int, String)} with the call described by {@code format} and one argument. */
    static void check(int result, String format, long a) {
        if (result != 0) throw failure(result, format.formatted(a));
    }

    static void check(int result, String format, long a, long b) {
        if (result != 0) throw failure(result, format.formatted(a, b));
    }

    static void check(int result, String format, long a, long b, long c) {
        if (result != 0) throw failure(result, format.formatted(a, b, c));
    }

    private static CudaException failure(int result, String call) {
        return new CudaException(call, result, errorName(result), errorString(result));
    }

    /** The driver's name of {@code result}, or this module's when the driver cannot say. */
    public static String errorName(int result) {
        String s = driverText(cuGetErrorName, result);
        return s != null ? s : CuResult.nameOf(result);
    }

    /** The driver's description of {@code result}, or this module's when the driver cannot say. */
    public static String errorString(int result) {
        String s = driverText(cuGetErrorString, result);
        return s != null ? s : CuResult.descriptionOf(result);
    }

    private static String driverText(MethodHandle getter, int result) {
        if (LIB == null) return null;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            int rc = (int) getter.invokeExact(result, out);
            MemorySegment text = out.get(ADDRESS, 0);
            return rc == 0 && !text.equals(MemorySegment.NULL) ? text.reinterpret(Long.MAX_VALUE).getString(0) : null;
        } catch (Throwable t) {
            return null;
        }
    }

    private static RuntimeException unchecked(Throwable t) {
        if (t instanceof RuntimeException r) return r;
        if (t instanceof Error e) throw e;
        return new IllegalStateException("CUDA driver call failed unexpectedly", t);
    }

    // ---- initialisation, devices, contexts ---------------------------------------------------

    /** {@code cuInit(0)}, once per process; later calls return at once. */
    public static void init() {
        if (initialized) return;
        synchronized (INIT_LOCK) {
            if (initialized) return;
            try {
                check((int) cuInit.invokeExact(0), "cuInit(0)");
            } catch (Throwable t) {
                throw unchecked(t);
            }
            initialized = true;
        }
    }

    /** The driver's CUDA version, e.g. 13000 for CUDA 13.0. */
    public static int cuDriverGetVersion() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuDriverGetVersion.invokeExact(out), "cuDriverGetVersion()");
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static int cuDeviceGetCount() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuDeviceGetCount.invokeExact(out), "cuDeviceGetCount()");
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** The {@code CUdevice} of ordinal {@code ordinal}. */
    public static int cuDeviceGet(int ordinal) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuDeviceGet.invokeExact(out, ordinal), "cuDeviceGet(ordinal %d)", ordinal);
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static String cuDeviceGetName(int device) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(256);
            check((int) cuDeviceGetName.invokeExact(out, 256, device), "cuDeviceGetName(device %d)", device);
            return out.getString(0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static int cuDeviceGetAttribute(int attribute, int device) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuDeviceGetAttribute.invokeExact(out, attribute, device),
                    "cuDeviceGetAttribute(attribute %d, device %d)", attribute, device);
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static long cuDeviceTotalMem(int device) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuDeviceTotalMem_v2.invokeExact(out, device), "cuDeviceTotalMem_v2(device %d)", device);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Whether kernels on {@code device} can access memory of {@code peer}. */
    public static boolean cuDeviceCanAccessPeer(int device, int peer) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuDeviceCanAccessPeer.invokeExact(out, device, peer),
                    "cuDeviceCanAccessPeer(device %d, peer %d)", device, peer);
            return out.get(JAVA_INT, 0) != 0;
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Retains (and on first use creates) the device's primary context; one retain per call. */
    public static MemorySegment cuDevicePrimaryCtxRetain(int device) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuDevicePrimaryCtxRetain.invokeExact(out, device), "cuDevicePrimaryCtxRetain(device %d)", device);
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Binds {@code context} to the calling OS thread. */
    public static void cuCtxSetCurrent(MemorySegment context) {
        try {
            check((int) cuCtxSetCurrent.invokeExact(context), "cuCtxSetCurrent(0x%x)", context.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** The calling thread's current context; {@link MemorySegment#NULL} when none. */
    public static MemorySegment cuCtxGetCurrent() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuCtxGetCurrent.invokeExact(out), "cuCtxGetCurrent()");
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Waits for all work of the current context. */
    public static void cuCtxSynchronize() {
        try {
            check((int) cuCtxSynchronize.invokeExact(), "cuCtxSynchronize()");
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- linear device memory and copies -----------------------------------------------------

    public static long cuMemAlloc(long bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuMemAlloc_v2.invokeExact(out, bytes), "cuMemAlloc_v2(%d bytes)", bytes);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemFree(long pointer) {
        try {
            check((int) cuMemFree_v2.invokeExact(pointer), "cuMemFree_v2(0x%x)", pointer);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Synchronous copy of {@code bytes} from native host memory {@code src} to device memory. */
    public static void cuMemcpyHtoD(long dst, MemorySegment src, long bytes) {
        try {
            check((int) cuMemcpyHtoD_v2.invokeExact(dst, src, bytes), "cuMemcpyHtoD_v2(dst 0x%x, %d bytes)", dst, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemcpyDtoH(MemorySegment dst, long src, long bytes) {
        try {
            check((int) cuMemcpyDtoH_v2.invokeExact(dst, src, bytes), "cuMemcpyDtoH_v2(src 0x%x, %d bytes)", src, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemcpyDtoD(long dst, long src, long bytes) {
        try {
            check((int) cuMemcpyDtoD_v2.invokeExact(dst, src, bytes),
                    "cuMemcpyDtoD_v2(dst 0x%x, src 0x%x, %d bytes)", dst, src, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Asynchronous on {@code stream}; {@code src} should be page-locked for the copy to overlap. */
    public static void cuMemcpyHtoDAsync(long dst, MemorySegment src, long bytes, MemorySegment stream) {
        try {
            check((int) cuMemcpyHtoDAsync_v2.invokeExact(dst, src, bytes, stream),
                    "cuMemcpyHtoDAsync_v2(dst 0x%x, %d bytes)", dst, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemcpyDtoHAsync(MemorySegment dst, long src, long bytes, MemorySegment stream) {
        try {
            check((int) cuMemcpyDtoHAsync_v2.invokeExact(dst, src, bytes, stream),
                    "cuMemcpyDtoHAsync_v2(src 0x%x, %d bytes)", src, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemcpyDtoDAsync(long dst, long src, long bytes, MemorySegment stream) {
        try {
            check((int) cuMemcpyDtoDAsync_v2.invokeExact(dst, src, bytes, stream),
                    "cuMemcpyDtoDAsync_v2(dst 0x%x, src 0x%x, %d bytes)", dst, src, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Sets {@code count} bytes at {@code dst} to {@code value}. */
    public static void cuMemsetD8(long dst, byte value, long count) {
        try {
            check((int) cuMemsetD8_v2.invokeExact(dst, value, count), "cuMemsetD8_v2(dst 0x%x, %d bytes)", dst, count);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Sets {@code count} 32-bit words at {@code dst} (4-byte aligned) to {@code value}. */
    public static void cuMemsetD32(long dst, int value, long count) {
        try {
            check((int) cuMemsetD32_v2.invokeExact(dst, value, count), "cuMemsetD32_v2(dst 0x%x, %d words)", dst, count);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- page-locked host memory and pointer attributes --------------------------------------

    /** Page-locked host memory of {@code bytes}, mapped into the device address space (UVA). */
    public static MemorySegment cuMemAllocHost(long bytes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuMemAllocHost_v2.invokeExact(out, bytes), "cuMemAllocHost_v2(%d bytes)", bytes);
            return out.get(ADDRESS, 0).reinterpret(bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemFreeHost(MemorySegment memory) {
        try {
            check((int) cuMemFreeHost.invokeExact(memory), "cuMemFreeHost(0x%x)", memory.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Page-locks existing host memory ({@code CU_MEMHOSTREGISTER_*} flags). */
    public static void cuMemHostRegister(MemorySegment memory, int flags) {
        try {
            check((int) cuMemHostRegister_v2.invokeExact(memory, memory.byteSize(), flags),
                    "cuMemHostRegister_v2(0x%x, %d bytes, flags %d)", memory.address(), memory.byteSize(), flags);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemHostUnregister(MemorySegment memory) {
        try {
            check((int) cuMemHostUnregister.invokeExact(memory), "cuMemHostUnregister(0x%x)", memory.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** A pointer-sized attribute ({@code CU_POINTER_ATTRIBUTE_DEVICE_POINTER}, ...) of {@code pointer}. */
    public static long cuPointerGetAttributeLong(int attribute, long pointer) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuPointerGetAttribute.invokeExact(out, attribute, pointer),
                    "cuPointerGetAttribute(attribute %d, 0x%x)", attribute, pointer);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** An int-sized attribute ({@code CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL}, ...) of {@code pointer}. */
    public static int cuPointerGetAttributeInt(int attribute, long pointer) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuPointerGetAttribute.invokeExact(out, attribute, pointer),
                    "cuPointerGetAttribute(attribute %d, 0x%x)", attribute, pointer);
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- streams and events ------------------------------------------------------------------

    public static MemorySegment cuStreamCreate(int flags) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuStreamCreate.invokeExact(out, flags), "cuStreamCreate(flags %d)", flags);
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuStreamDestroy(MemorySegment stream) {
        try {
            check((int) cuStreamDestroy_v2.invokeExact(stream), "cuStreamDestroy_v2(0x%x)", stream.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuStreamSynchronize(MemorySegment stream) {
        try {
            check((int) cuStreamSynchronize.invokeExact(stream), "cuStreamSynchronize(0x%x)", stream.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Makes later work on {@code stream} wait for {@code event}'s last record; the host does not wait. */
    public static void cuStreamWaitEvent(MemorySegment stream, MemorySegment event) {
        try {
            check((int) cuStreamWaitEvent.invokeExact(stream, event, 0),
                    "cuStreamWaitEvent(stream 0x%x, event 0x%x)", stream.address(), event.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static MemorySegment cuEventCreate(int flags) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuEventCreate.invokeExact(out, flags), "cuEventCreate(flags %d)", flags);
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuEventRecord(MemorySegment event, MemorySegment stream) {
        try {
            check((int) cuEventRecord.invokeExact(event, stream),
                    "cuEventRecord(event 0x%x, stream 0x%x)", event.address(), stream.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** True when the work before the event's last record has completed; false while it runs (CUDA_ERROR_NOT_READY). */
    public static boolean cuEventQuery(MemorySegment event) {
        try {
            int r = (int) cuEventQuery.invokeExact(event);
            if (r == 600) return false;
            check(r, "cuEventQuery(0x%x)", event.address());
            return true;
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemsetD8Async(long dst, byte value, long count, MemorySegment stream) {
        try {
            check((int) cuMemsetD8Async.invokeExact(dst, value, count, stream), "cuMemsetD8Async(dst 0x%x, %d bytes)", dst, count);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuEventSynchronize(MemorySegment event) {
        try {
            check((int) cuEventSynchronize.invokeExact(event), "cuEventSynchronize(0x%x)", event.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Milliseconds between two completed timing events. */
    public static float cuEventElapsedTime(MemorySegment start, MemorySegment end) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_FLOAT);
            check((int) cuEventElapsedTime_v2.invokeExact(out, start, end),
                    "cuEventElapsedTime_v2(start 0x%x, end 0x%x)", start.address(), end.address());
            return out.get(JAVA_FLOAT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuEventDestroy(MemorySegment event) {
        try {
            check((int) cuEventDestroy_v2.invokeExact(event), "cuEventDestroy_v2(0x%x)", event.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- modules and launches ----------------------------------------------------------------

    /** Loads a fatbin/cubin/PTX image (native memory) into the current context. */
    public static MemorySegment cuModuleLoadData(MemorySegment image) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            check((int) cuModuleLoadData.invokeExact(out, image), "cuModuleLoadData(%d-byte image)", image.byteSize());
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static MemorySegment cuModuleGetFunction(MemorySegment module, String name) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ADDRESS);
            int rc = (int) cuModuleGetFunction.invokeExact(out, module, a.allocateFrom(name));
            check(rc, "cuModuleGetFunction(\"" + name + "\")");
            return out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuModuleUnload(MemorySegment module) {
        try {
            check((int) cuModuleUnload.invokeExact(module), "cuModuleUnload(0x%x)", module.address());
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /**
     * Launches {@code function} on {@code stream}; {@code params} is a {@code void*[]} whose entries
     * point at the argument values. Allocates nothing on success.
     */
    public static void cuLaunchKernel(MemorySegment function, int gridX, int gridY, int gridZ, int blockX,
                                      int blockY, int blockZ, int sharedBytes, MemorySegment stream,
                                      MemorySegment params, String name) {
        try {
            int rc = (int) cuLaunchKernel.invokeExact(function, gridX, gridY, gridZ, blockX, blockY, blockZ,
                    sharedBytes, stream, params, MemorySegment.NULL);
            if (rc != 0) {
                check(rc, "cuLaunchKernel(" + name + ", grid " + gridX + "x" + gridY + "x" + gridZ + ", block "
                        + blockX + "x" + blockY + "x" + blockZ + ", " + sharedBytes + " bytes shared)");
            }
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // CUlaunchConfig (cuda.h): 7 unsigned ints (grid x/y/z, block x/y/z, shared bytes), then at 32 the
    // stream, at 40 the attribute array, at 48 the attribute count; 56 bytes. One CUlaunchAttribute
    // follows it at 56: the id (an int) at 0 and the value union (64 bytes) at 8; 72 bytes.
    private static final long CONFIG_STREAM = 32, CONFIG_ATTRS = 40, CONFIG_NUM_ATTRS = 48, CONFIG_BYTES = 56;
    private static final long ATTR_ID = 0, ATTR_VALUE = 8, ATTR_BYTES = 72;
    /** CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION. */
    static final int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
    /** Each thread's launch configuration with its one attribute, reused so a launch allocates nothing. */
    private static final ThreadLocal<MemorySegment> LAUNCH_CONFIG = ThreadLocal.withInitial(() -> {
        MemorySegment c = Arena.ofAuto().allocate(CONFIG_BYTES + ATTR_BYTES, 8);
        c.fill((byte) 0);
        c.set(ADDRESS, CONFIG_ATTRS, c.asSlice(CONFIG_BYTES, ATTR_BYTES));
        c.set(JAVA_INT, CONFIG_NUM_ATTRS, 1);
        c.set(JAVA_INT, CONFIG_BYTES + ATTR_ID, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION);
        c.set(JAVA_INT, CONFIG_BYTES + ATTR_VALUE, 1);
        return c;
    });

    /**
     * Launches {@code function} on {@code stream} as a programmatic dependent launch
     * ({@code cuLaunchKernelEx} with {@code CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION}): its
     * blocks may start once every block of the kernel queued before it has executed
     * {@code griddepcontrol.launch_dependents} (or finished). Allocates nothing after a thread's first call.
     */
    public static void cuLaunchKernelProgrammatic(MemorySegment function, int gridX, int gridY, int gridZ, int blockX,
                                                  int blockY, int blockZ, int sharedBytes, MemorySegment stream,
                                                  MemorySegment params, String name) {
        MemorySegment c = LAUNCH_CONFIG.get();
        c.set(JAVA_INT, 0, gridX);
        c.set(JAVA_INT, 4, gridY);
        c.set(JAVA_INT, 8, gridZ);
        c.set(JAVA_INT, 12, blockX);
        c.set(JAVA_INT, 16, blockY);
        c.set(JAVA_INT, 20, blockZ);
        c.set(JAVA_INT, 24, sharedBytes);
        c.set(ADDRESS, CONFIG_STREAM, stream);
        try {
            int rc = (int) cuLaunchKernelEx.invokeExact(c, function, params, MemorySegment.NULL);
            if (rc != 0) {
                check(rc, "cuLaunchKernelEx(" + name + ", programmatic dependent launch, grid " + gridX + "x" + gridY + "x" + gridZ
                        + ", block " + blockX + "x" + blockY + "x" + blockZ + ", " + sharedBytes + " bytes shared)");
            }
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuFuncSetAttribute(MemorySegment function, int attribute, int value) {
        try {
            check((int) cuFuncSetAttribute.invokeExact(function, attribute, value),
                    "cuFuncSetAttribute(attribute %d, value %d)", attribute, value);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- legacy CUDA IPC ---------------------------------------------------------------------

    /** The 64-byte {@code CUipcMemHandle} of a {@code cuMemAlloc} allocation. */
    public static byte[] cuIpcGetMemHandle(long pointer) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(CuStructs.IPC_MEM_HANDLE);
            check((int) cuIpcGetMemHandle.invokeExact(out, pointer), "cuIpcGetMemHandle(0x%x)", pointer);
            return out.toArray(JAVA_BYTE);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Maps another process's allocation; the handle is passed by value as the 64-byte struct. */
    public static long cuIpcOpenMemHandle(byte[] handle, int flags) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment h = a.allocate(CuStructs.IPC_MEM_HANDLE);
            MemorySegment.copy(handle, 0, h, JAVA_BYTE, 0, CuStructs.HANDLE_SIZE);
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuIpcOpenMemHandle_v2.invokeExact(out, h, flags), "cuIpcOpenMemHandle_v2(flags %d)", flags);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuIpcCloseMemHandle(long pointer) {
        try {
            check((int) cuIpcCloseMemHandle.invokeExact(pointer), "cuIpcCloseMemHandle(0x%x)", pointer);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    // ---- virtual memory management (cuMem*) --------------------------------------------------

    /** Physical memory of {@code bytes} on {@code device}, exportable as {@code handleTypes}. */
    public static long cuMemCreate(long bytes, int device, int handleTypes) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            MemorySegment prop = CuStructs.allocationProp(a, device, handleTypes);
            check((int) cuMemCreate.invokeExact(out, bytes, prop, 0L),
                    "cuMemCreate(%d bytes, device %d, handle types 0x%x)", bytes, device, handleTypes);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemRelease(long handle) {
        try {
            check((int) cuMemRelease.invokeExact(handle), "cuMemRelease(0x%x)", handle);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Reserves {@code bytes} of device virtual address space aligned to {@code alignment}. */
    public static long cuMemAddressReserve(long bytes, long alignment) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuMemAddressReserve.invokeExact(out, bytes, alignment, 0L, 0L),
                    "cuMemAddressReserve(%d bytes, alignment %d)", bytes, alignment);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemAddressFree(long pointer, long bytes) {
        try {
            check((int) cuMemAddressFree.invokeExact(pointer, bytes), "cuMemAddressFree(0x%x, %d bytes)", pointer, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemMap(long pointer, long bytes, long handle) {
        try {
            check((int) cuMemMap.invokeExact(pointer, bytes, 0L, handle, 0L),
                    "cuMemMap(0x%x, %d bytes, handle 0x%x)", pointer, bytes, handle);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    public static void cuMemUnmap(long pointer, long bytes) {
        try {
            check((int) cuMemUnmap.invokeExact(pointer, bytes), "cuMemUnmap(0x%x, %d bytes)", pointer, bytes);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Grants read-write access to the mapped range for each {@code CUdevice} in {@code devices}. */
    public static void cuMemSetAccess(long pointer, long bytes, int[] devices) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment desc = CuStructs.readWriteAccess(a, devices);
            int rc = (int) cuMemSetAccess.invokeExact(pointer, bytes, desc, (long) devices.length);
            if (rc != 0) {
                check(rc, "cuMemSetAccess(0x%x, %d bytes, devices %s)".formatted(pointer, bytes,
                        java.util.Arrays.toString(devices)));
            }
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Exports an allocation made with {@code CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR} as a file descriptor. */
    public static int cuMemExportToPosixFd(long handle) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            check((int) cuMemExportToShareableHandle.invokeExact(out, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    0L), "cuMemExportToShareableHandle(0x%x, POSIX_FILE_DESCRIPTOR)", handle);
            return out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Exports an allocation made with {@code CU_MEM_HANDLE_TYPE_FABRIC} as a 64-byte fabric handle. */
    public static byte[] cuMemExportToFabric(long handle) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(CuStructs.MEM_FABRIC_HANDLE);
            check((int) cuMemExportToShareableHandle.invokeExact(out, handle, CU_MEM_HANDLE_TYPE_FABRIC, 0L),
                    "cuMemExportToShareableHandle(0x%x, FABRIC)", handle);
            return out.toArray(JAVA_BYTE);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Imports an allocation from a file descriptor of this process (the fd is passed as the pointer value). */
    public static long cuMemImportFromPosixFd(int fd) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuMemImportFromShareableHandle.invokeExact(out, MemorySegment.ofAddress(fd),
                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR), "cuMemImportFromShareableHandle(fd %d, POSIX_FILE_DESCRIPTOR)", fd);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** Imports an allocation from a 64-byte fabric handle (passed by pointer). */
    public static long cuMemImportFromFabric(byte[] fabricHandle) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment h = a.allocate(CuStructs.MEM_FABRIC_HANDLE);
            MemorySegment.copy(fabricHandle, 0, h, JAVA_BYTE, 0, CuStructs.HANDLE_SIZE);
            MemorySegment out = a.allocate(JAVA_LONG);
            check((int) cuMemImportFromShareableHandle.invokeExact(out, h, CU_MEM_HANDLE_TYPE_FABRIC),
                    "cuMemImportFromShareableHandle(FABRIC)");
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }

    /** The allocation granularity for pinned memory on {@code device} exportable as {@code handleTypes}. */
    public static long cuMemGetAllocationGranularity(int device, int handleTypes, int option) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            MemorySegment prop = CuStructs.allocationProp(a, device, handleTypes);
            check((int) cuMemGetAllocationGranularity.invokeExact(out, prop, option),
                    "cuMemGetAllocationGranularity(device %d, handle types 0x%x, option %d)", device, handleTypes, option);
            return out.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw unchecked(t);
        }
    }
}
