package org.mooncake4j.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import org.mooncake4j.cuda.internal.CudaDriver;

/**
 * A module of GPU code loaded into one device's primary context: the kernels compiled into this jar
 * at build time ({@link #loadKernels}: {@code fill_u32}, {@code copy_bytes}, {@code reduce_sum_f32},
 * {@code reduce_sum_bf16}, {@code timed_flag_wait}, {@code signal_flag_u64}; see
 * {@code src/main/cuda}), or any fatbin, cubin or PTX image ({@link #load}).
 *
 * <p>The build records which architectures the fatbin holds ({@code kernels.properties});
 * {@link #coversComputeCapability} answers whether a GPU can run them: machine code for {@code sm_XY}
 * runs on compute capability X.Y' with Y' &ge; Y, and {@code compute_XY} PTX is compiled by the driver
 * for any X.Y and newer.
 *
 * <p>Threading: thread-safe; each method makes the module's device current on the calling thread
 * first (see {@link CudaDevice}). {@link #close()} must not race with launches.
 *
 * <p>Ownership: the loader owns the module and unloads it with {@link #close()}, which invalidates
 * its {@link CudaFunction}s. Load it once per device and keep it.
 */
public final class CudaModule implements AutoCloseable {
    static final String FATBIN_RESOURCE = "/org/mooncake4j/cuda/kernels.fatbin";
    static final String ARCHITECTURES_RESOURCE = "/org/mooncake4j/cuda/kernels.properties";

    public static final String KERNELS_NOT_BUILT_MESSAGE = "CUDA kernels were not built (nvcc was not found when"
            + " mooncake4j was built); rebuild on a machine with nvcc (CUDA 12.4+) to use the 'mooncake' backend.";

    private final CudaDevice device;
    private final MemorySegment handle;
    private final ConcurrentHashMap<String, CudaFunction> functions = new ConcurrentHashMap<>();
    private boolean closed;

    private CudaModule(CudaDevice device, MemorySegment handle) {
        this.device = device;
        this.handle = handle;
    }

    /** Loads the kernels built into this jar on {@code device}. */
    public static CudaModule loadKernels(CudaDevice device) {
        byte[] image = readKernelImage(FATBIN_RESOURCE);
        if (!coversComputeCapability(device.computeCapabilityMajor(), device.computeCapabilityMinor())) {
            throw new CudaUnavailableException(notCoveredMessage(kernelArchitectures(), device.toString(), device.computeCapability()));
        }
        return load(device, image);
    }

    /** Why the kernels built for {@code architectures} cannot run on {@code device} (of {@code computeCapability}), and what to do. */
    static String notCoveredMessage(List<String> architectures, String device, String computeCapability) {
        return "The CUDA kernels of mooncake4j were built for " + String.join(", ", architectures) + ", which do not cover " + device
                + "; rebuild mooncake4j-cuda with nvcc targeting compute capability " + computeCapability + ".";
    }

    /** Loads a fatbin, cubin or PTX image on {@code device}. */
    public static CudaModule load(CudaDevice device, byte[] image) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment staged = arena.allocate(image.length + 1L, 16); // +1: PTX text must end in NUL
            MemorySegment.copy(image, 0, staged, ValueLayout.JAVA_BYTE, 0, image.length);
            device.makeCurrent();
            return new CudaModule(device, CudaDriver.cuModuleLoadData(staged));
        }
    }

    /** The bytes of a kernel image resource; {@link CudaUnavailableException} when it was not built. */
    static byte[] readKernelImage(String resource) {
        try (InputStream in = CudaModule.class.getResourceAsStream(resource)) {
            if (in == null) throw new CudaUnavailableException(KERNELS_NOT_BUILT_MESSAGE);
            return in.readAllBytes();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + resource + " from the mooncake4j-cuda jar", e);
        }
    }

    /** The architectures in the built-in fatbin ({@code sm_90}, {@code compute_90}, ...); empty when not built. */
    public static List<String> kernelArchitectures() { return readArchitectures(ARCHITECTURES_RESOURCE); }

    static List<String> readArchitectures(String resource) {
        try (InputStream in = CudaModule.class.getResourceAsStream(resource)) {
            if (in == null) return List.of();
            Properties p = new Properties();
            p.load(in);
            return Arrays.stream(p.getProperty("architectures", "").split(",")).map(String::trim)
                    .filter(s -> !s.isEmpty()).toList();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + resource + " from the mooncake4j-cuda jar", e);
        }
    }

    /** Whether the built-in kernels can run on a GPU of compute capability {@code major.minor}. */
    public static boolean coversComputeCapability(int major, int minor) {
        return covers(kernelArchitectures(), major, minor);
    }

    /**
     * Whether code for {@code architectures} runs on compute capability {@code major.minor}. Targets
     * with the {@code a} suffix (e.g. {@code sm_90a}) run only on exactly their version.
     */
    static boolean covers(List<String> architectures, int major, int minor) {
        for (String a : architectures) {
            boolean sass = a.startsWith("sm_");
            if (!sass && !a.startsWith("compute_")) continue;
            String v = a.substring(sass ? 3 : 8);
            boolean exact = v.endsWith("a");
            int number = Integer.parseInt(v.replaceAll("[a-z]+$", ""));
            int tMajor = number / 10;
            int tMinor = number % 10;
            if (exact) {
                if (tMajor == major && tMinor == minor) return true;
            } else if (sass) {
                if (tMajor == major && tMinor <= minor) return true;
            } else if (major > tMajor || (major == tMajor && minor >= tMinor)) {
                return true;
            }
        }
        return false;
    }

    public CudaDevice device() { return device; }

    /** The kernel {@code name} (an {@code extern "C"} name), looked up once and cached. */
    public CudaFunction function(String name) {
        return functions.computeIfAbsent(name, n -> {
            device.makeCurrent();
            return new CudaFunction(this, n, CudaDriver.cuModuleGetFunction(handle, n));
        });
    }

    @Override
    public synchronized void close() {
        if (closed) return;
        closed = true;
        device.makeCurrent();
        CudaDriver.cuModuleUnload(handle);
    }
}
