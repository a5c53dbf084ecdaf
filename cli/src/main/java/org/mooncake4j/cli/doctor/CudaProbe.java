package org.mooncake4j.cli.doctor;

import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Properties;

/**
 * What the {@code mooncake4j-cuda} module sees on this host: the NVIDIA driver, the GPUs with their
 * compute capability, whether the kernels built into the module cover them, which GPUs can access
 * which as peers, and how their memory can be shared. It calls the module's own public API
 * ({@code CudaDevice}, {@code CudaModule}), so a missing driver is reported with the module's own
 * message.
 *
 * <p>The module is taken from the class path when it is there; otherwise from the jar a build of
 * this source tree left in {@code cuda/target}, or from the local Maven repository. It is called
 * reflectively, so that the command line works without it.
 *
 * <p>Stateless; each {@link #probe} loads the module afresh (the driver itself is initialized once
 * per process).
 */
public final class CudaProbe {
    static final String DEVICE_CLASS = "org.mooncake4j.cuda.CudaDevice";
    static final String MODULE_CLASS = "org.mooncake4j.cuda.CudaModule";
    static final String KERNELS_PROPERTIES = "org/mooncake4j/cuda/kernels.properties";

    /** One GPU. {@code covered}: whether the built kernels run on it. */
    public record Gpu(int ordinal, String name, int major, int minor, long totalMemory, String pciBusId,
                      boolean virtualMemory, boolean posixFdHandles, boolean fabricHandles, boolean covered) {
        public String computeCapability() { return major + "." + minor; }
    }

    /**
     * The findings. {@code module}: where the cuda module came from, or null when it was not found;
     * {@code driverError}: why the driver cannot be used (null when it can), with
     * {@code driverMissing} telling whether the library itself is absent; {@code peerAccess[i][j]}:
     * whether GPU i can access GPU j's memory.
     */
    public record Result(String module, String moduleVersion, List<String> kernelArchitectures, String nvccVersion,
                         String kernelsNotBuiltMessage, int driverVersion, String driverError, boolean driverMissing,
                         List<Gpu> gpus, boolean[][] peerAccess) {
        public boolean moduleFound() { return module != null; }

        public boolean driverUsable() { return moduleFound() && driverError == null; }
    }

    private CudaProbe() {}

    /** Probes with the module from the class path of {@code context}, else from {@code jarCandidates} (first existing). */
    public static Result probe(ClassLoader context, List<Path> jarCandidates) {
        ClassLoader loader = null;
        String module = null;
        if (has(context, DEVICE_CLASS)) {
            loader = context;
            module = "on the class path";
        } else {
            for (Path p : jarCandidates) {
                if (!Files.exists(p)) continue;
                try {
                    URLClassLoader l = new URLClassLoader(new URL[] {p.toUri().toURL()}, context);
                    if (has(l, DEVICE_CLASS)) {
                        loader = l;
                        module = p.toString();
                        break;
                    }
                } catch (MalformedURLException e) {
                    // not a usable path: try the next one
                }
            }
        }
        if (loader == null) return new Result(null, null, List.of(), null, null, 0, null, false, List.of(), new boolean[0][0]);
        try {
            return probe(loader, module);
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            // a module of another version whose API differs: say so instead of failing the whole report
            return new Result(module, null, List.of(), null, null, 0,
                    "the mooncake4j-cuda module at " + module + " could not be queried (" + e + "); is it the same version as this command?",
                    false, List.of(), new boolean[0][0]);
        }
    }

    private static Result probe(ClassLoader loader, String module) throws ReflectiveOperationException {
        Class<?> deviceClass = Class.forName(DEVICE_CLASS, true, loader);
        Class<?> moduleClass = Class.forName(MODULE_CLASS, true, loader);
        Properties kernels = kernelProperties(loader);
        @SuppressWarnings("unchecked")
        List<String> archs = (List<String>) call(moduleClass, null, "kernelArchitectures");
        String notBuilt = String.valueOf(moduleClass.getField("KERNELS_NOT_BUILT_MESSAGE").get(null));
        String version = Optional.ofNullable(deviceClass.getPackage()).map(Package::getImplementationVersion).orElse(null);
        int driverVersion;
        List<Object> devices;
        try {
            driverVersion = (Integer) call(deviceClass, null, "driverVersion");
            @SuppressWarnings("unchecked")
            List<Object> all = (List<Object>) call(deviceClass, null, "all");
            devices = all;
        } catch (InvocationTargetException e) {
            Throwable c = e.getCause();
            boolean missing = c.getClass().getSimpleName().equals("CudaUnavailableException")
                    && String.valueOf(c.getMessage()).contains("was not found");
            return new Result(module, version, archs, kernels.getProperty("nvcc.version"), notBuilt, 0,
                    c.getMessage() == null ? c.toString() : c.getMessage(), missing, List.of(), new boolean[0][0]);
        }
        List<Gpu> gpus = new ArrayList<>();
        for (Object d : devices) {
            int major = (Integer) call(deviceClass, d, "computeCapabilityMajor");
            int minor = (Integer) call(deviceClass, d, "computeCapabilityMinor");
            gpus.add(new Gpu((Integer) call(deviceClass, d, "ordinal"), (String) call(deviceClass, d, "name"), major, minor,
                    (Long) call(deviceClass, d, "totalMemory"), (String) call(deviceClass, d, "pciBusId"),
                    (Boolean) call(deviceClass, d, "supportsVirtualMemory"), (Boolean) call(deviceClass, d, "supportsPosixFdHandles"),
                    (Boolean) call(deviceClass, d, "supportsFabricHandles"),
                    (Boolean) moduleClass.getMethod("coversComputeCapability", int.class, int.class).invoke(null, major, minor)));
        }
        boolean[][] peer = new boolean[devices.size()][devices.size()];
        Method canAccess = deviceClass.getMethod("canAccessPeer", deviceClass);
        for (int i = 0; i < devices.size(); i++) {
            for (int j = 0; j < devices.size(); j++) {
                peer[i][j] = i != j && (Boolean) canAccess.invoke(devices.get(i), devices.get(j));
            }
        }
        return new Result(module, version, archs, kernels.getProperty("nvcc.version"), notBuilt, driverVersion, null, false,
                List.copyOf(gpus), peer);
    }

    private static Object call(Class<?> c, Object target, String method) throws ReflectiveOperationException {
        return c.getMethod(method).invoke(target);
    }

    private static boolean has(ClassLoader l, String className) {
        try {
            Class.forName(className, false, l);
            return true;
        } catch (ClassNotFoundException | LinkageError e) {
            return false;
        }
    }

    private static Properties kernelProperties(ClassLoader l) {
        Properties p = new Properties();
        try (InputStream in = l.getResourceAsStream(KERNELS_PROPERTIES)) {
            if (in != null) p.load(in);
        } catch (IOException e) {
            // absent or unreadable: reported as "not built" through kernelArchitectures()
        }
        return p;
    }

    /**
     * Where a build of this source tree leaves the cuda module, given the location of the running
     * command's classes ({@code .../cli/target/classes} or {@code .../cli/target/mooncake4j-cli-V.jar}),
     * then the local Maven repository's copy of {@code version}.
     */
    public static List<Path> jarCandidates(Path codeLocation, String version) {
        List<Path> out = new ArrayList<>();
        String jar = "mooncake4j-cuda-" + version + ".jar";
        for (Path p = codeLocation; p != null; p = p.getParent()) {
            Path target = p.resolve("cuda").resolve("target");
            if (Files.isDirectory(target)) {
                out.add(target.resolve(jar));
                out.add(target.resolve("classes"));
                break;
            }
        }
        String home = System.getProperty("user.home");
        if (home != null) {
            out.add(Path.of(home, ".m2", "repository", "org", "mooncake4j", "mooncake4j-cuda", version, jar));
        }
        return out;
    }
}
