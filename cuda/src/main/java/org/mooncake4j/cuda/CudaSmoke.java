package org.mooncake4j.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.core.internal.FloatFormats;
import org.mooncake4j.cuda.internal.CudaDriver;
import org.mooncake4j.cuda.internal.PosixFds;

/**
 * GPU smoke test of the CUDA layer, runnable on a GPU host without Maven (see {@code cuda/gpu-smoke.sh}).
 * Every check prints one {@code PASS}, {@code FAIL} or {@code SKIP} line; the exit status is 1 when any
 * check failed.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED -cp 'JARS/*' org.mooncake4j.cuda.CudaSmoke
 *     devices, peer matrix; on every visible GPU: memset, each kernel against a host reference
 *     (random data, poisoned outputs), timed_flag_wait, Tensor on cuda:N, 256 MiB copy bandwidth;
 *     with 2+ GPUs: shareable (cuMemCreate) buffers written by the next GPU's kernels over NVLink.
 * RANK=r WORLD_SIZE=n java ... org.mooncake4j.cuda.CudaSmoke ipc DIR
 *     one of n processes on GPU r: exchanges handles through files in DIR, maps GPU (r+1)%n's buffer
 *     (legacy IPC handle, then cuMemCreate + POSIX fd via pidfd_getfd), writes it with a kernel over
 *     NVLink, signals a flag there, waits with timed_flag_wait for its own flag and verifies the data.
 * </pre>
 */
public final class CudaSmoke {
    private static final int THREADS = 256;
    private static final long MIB = 1L << 20;
    private static final long BANDWIDTH_BYTES = 256 * MIB;
    private static final VarHandle INT_VOLATILE = ValueLayout.JAVA_INT.varHandle();

    private int failures;

    private CudaSmoke() {}

    public static void main(String[] args) {
        CudaSmoke smoke = new CudaSmoke();
        if (args.length == 2 && args[0].equals("ipc")) {
            smoke.guarded("ipc", () -> smoke.ipc(Path.of(args[1]), Integer.parseInt(env("RANK")),
                    Integer.parseInt(env("WORLD_SIZE"))));
        } else if (args.length == 0) {
            smoke.guarded("smoke", smoke::local);
        } else {
            System.err.println("usage: CudaSmoke | RANK=r WORLD_SIZE=n CudaSmoke ipc DIR");
            System.exit(2);
        }
        System.out.println(smoke.failures == 0 ? "SMOKE PASSED" : "SMOKE FAILED: " + smoke.failures + " check(s)");
        System.exit(smoke.failures == 0 ? 0 : 1);
    }

    private static String env(String name) {
        String v = System.getenv(name);
        if (v == null) throw new IllegalArgumentException("environment variable " + name + " is not set");
        return v;
    }

    private void report(String check, boolean ok, String detail) {
        if (!ok) failures++;
        System.out.println((ok ? "PASS " : "FAIL ") + check + ": " + detail);
    }

    private static void skip(String check, String reason) { System.out.println("SKIP " + check + ": " + reason); }

    /** Runs {@code body}; an exception is a failed check, not the end of the smoke test. */
    private void guarded(String check, Runnable body) {
        try {
            body.run();
        } catch (RuntimeException | AssertionError e) {
            report(check, false, e.toString());
            e.printStackTrace(System.out);
        }
    }

    private static int blocks(CudaDevice device, long items) {
        return (int) Math.max(1, Math.min((items + THREADS - 1) / THREADS, device.multiprocessorCount() * 8L));
    }

    // ---- single process ------------------------------------------------------------------------

    private void local() {
        int driver = CudaDevice.driverVersion();
        int count = CudaDevice.count();
        System.out.printf("driver CUDA %d.%d, %d device(s), kernels built for %s%n", driver / 1000, driver % 1000 / 10,
                count, CudaModule.kernelArchitectures());
        if (count == 0) {
            report("devices", false, "no CUDA device is visible");
            return;
        }
        for (CudaDevice d : CudaDevice.all()) {
            System.out.printf("  cuda:%d %s cc %s, %d SMs, %.1f GiB, PCI %s, VMM %b, POSIX fd %b, fabric %b, kernels cover: %b%n",
                    d.ordinal(), d.name(), d.computeCapability(), d.multiprocessorCount(), d.totalMemory() / (double) (1L << 30),
                    d.pciBusId(), d.supportsVirtualMemory(), d.supportsPosixFdHandles(), d.supportsFabricHandles(),
                    CudaModule.coversComputeCapability(d.computeCapabilityMajor(), d.computeCapabilityMinor()));
        }
        StringBuilder matrix = new StringBuilder("peer access (row can access column):\n      ");
        for (CudaDevice c : CudaDevice.all()) matrix.append(String.format("%4d", c.ordinal()));
        for (CudaDevice r : CudaDevice.all()) {
            matrix.append(String.format("%n  %4d", r.ordinal()));
            for (CudaDevice c : CudaDevice.all()) matrix.append(r == c ? "   -" : r.canAccessPeer(c) ? "   Y" : "   n");
        }
        System.out.println(matrix);

        for (CudaDevice d : CudaDevice.all()) {
            try (CudaModule kernels = CudaModule.loadKernels(d); CudaStream stream = CudaStream.create(d)) {
                report("cuda:" + d.ordinal() + " load kernels", true, "fatbin loaded");
                new DeviceChecks(d, kernels, stream).run();
            } catch (RuntimeException e) {
                report("cuda:" + d.ordinal() + " load kernels", false, e.toString());
            }
        }
        if (count >= 2) peerChecks();
        else skip("peer writes", "needs 2+ GPUs");
    }

    /** The single-GPU checks of one device. */
    private final class DeviceChecks {
        private final CudaDevice device;
        private final CudaModule kernels;
        private final CudaStream stream;
        private final String tag;
        private final SplittableRandom random;

        DeviceChecks(CudaDevice device, CudaModule kernels, CudaStream stream) {
            this.device = device;
            this.kernels = kernels;
            this.stream = stream;
            this.tag = "cuda:" + device.ordinal() + " ";
            this.random = new SplittableRandom(42 + device.ordinal());
        }

        void run() {
            guarded(tag + "memset", this::memset);
            guarded(tag + "tensor", this::tensor);
            guarded(tag + "fill_u32", this::fill);
            guarded(tag + "copy_bytes", () -> {
                copy(8 * MIB + 13, 0, 0);
                copy(1 * MIB + 5, 3, 3);
                copy(1 * MIB + 7, 1, 6);
            });
            guarded(tag + "reduce_sum_f32", () -> {
                reduceF32(4, (1 << 20) + 5, 0);
                reduceF32(1, 1000, 0);
                reduceF32(3, 4097, 1);
            });
            guarded(tag + "reduce_sum_bf16", () -> {
                reduceBf16(3, (1 << 20) + 7, 0);
                reduceBf16(8, 4099, 1);
            });
            guarded(tag + "timed_flag_wait", this::flagWait);
            guarded(tag + "sharing", this::sharing);
            guarded(tag + "bandwidth", this::bandwidth);
        }

        /**
         * What a buffer that other processes map must be: a plain ({@code cuMemAlloc}) buffer has no
         * shareable handle and says so; {@code allocateShareable} gives one (a fabric handle where the
         * device and an IMEX channel allow it, else a POSIX file descriptor, the fallback logged); a
         * fabric handle on a device without fabric support is refused with the reason.
         */
        void sharing() {
            try (DeviceBuffer plain = DeviceBuffer.allocate(device, MIB)) {
                String expected = "exportHandle() needs a VIRTUAL buffer, this one is ALLOCATED";
                String got;
                try {
                    got = "exportHandle() returned " + plain.exportHandle();
                } catch (IllegalStateException e) {
                    got = e.getMessage();
                }
                report(tag + "sharing: plain buffer has no shareable handle", expected.equals(got), got);
            }
            if (!device.supportsVirtualMemory()) {
                skip(tag + "sharing: allocateShareable", device + " has no virtual memory management");
                return;
            }
            try (DeviceBuffer shared = DeviceBuffer.allocateShareable(device, MIB)) {
                ShareableHandle handle = shared.exportHandle();
                boolean refusedFabric = device.supportsFabricHandles() && shared.handleType() != ShareableHandleType.FABRIC;
                report(tag + "sharing: allocateShareable", shared.kind() == DeviceBuffer.Kind.VIRTUAL, shared.kind() + " buffer with a "
                        + shared.handleType() + " handle (" + handle + ")" + (refusedFabric ? "; the device supports fabric handles but"
                        + " refused a fabric allocation (logged above): no IMEX channel, so other nodes cannot map it" : ""));
            }
            if (!device.supportsFabricHandles()) {
                String expected = device + " does not support fabric handles (multi-node NVLink)";
                String got;
                try {
                    DeviceBuffer.allocateShareable(device, MIB, ShareableHandleType.FABRIC).close();
                    got = "a fabric allocation succeeded";
                } catch (IllegalStateException e) {
                    got = e.getMessage();
                }
                report(tag + "sharing: fabric handle refused", expected.equals(got), got);
            }
        }

        void memset() {
            long bytes = 4 * MIB;
            try (DeviceBuffer b = DeviceBuffer.allocate(device, bytes); Arena arena = Arena.ofConfined()) {
                MemorySegment host = arena.allocate(bytes);
                device.makeCurrent();
                CudaDriver.cuMemsetD8(b.pointer(), (byte) 0xA5, bytes);
                CudaDriver.cuMemcpyDtoH(host, b.pointer(), bytes);
                boolean bytesOk = allBytes(host, (byte) 0xA5);
                CudaDriver.cuMemsetD32(b.pointer(), 0xDEADBEEF, bytes / 4);
                CudaDriver.cuMemcpyDtoH(host, b.pointer(), bytes);
                boolean wordsOk = allInts(host, 0xDEADBEEF);
                report(tag + "memset", bytesOk && wordsOk, "cuMemsetD8 " + bytesOk + ", cuMemsetD32 " + wordsOk + " over 4 MiB");
            }
        }

        void tensor() {
            float[] values = new float[1000];
            for (int i = 0; i < values.length; i++) values[i] = (float) random.nextGaussian();
            try (Tensor host = Tensor.of(values); Tensor onGpu = host.to(Device.cuda(device.ordinal()));
                 Tensor copy = Tensor.empty(DType.FLOAT32, Device.cuda(device.ordinal()), values.length)) {
                copy.copyFrom(onGpu);
                float[] back = copy.toFloatArray();
                report(tag + "tensor", Arrays.equals(values, back),
                        "Tensor.of -> to(cuda:" + device.ordinal() + ") -> copyFrom on device -> toFloatArray");
            }
        }

        void fill() {
            long n = (1L << 20) + 3;
            long guard = 16;
            int value = random.nextInt();
            try (DeviceBuffer b = DeviceBuffer.allocate(device, (n + guard) * 4); Arena arena = Arena.ofConfined()) {
                poison(b);
                kernels.function("fill_u32").launch(stream, blocks(device, n), THREADS,
                        KernelArgs.begin().ptr(b.pointer()).u32(value).u64(n));
                stream.synchronize();
                MemorySegment host = download(arena, stream, b);
                boolean body = allInts(host.asSlice(0, n * 4), value);
                boolean guardOk = allBytes(host.asSlice(n * 4), (byte) 0xFF);
                report(tag + "fill_u32", body && guardOk, n + " words = 0x" + Integer.toHexString(value)
                        + (guardOk ? ", guard intact" : ", GUARD OVERWRITTEN"));
            }
        }

        void copy(long n, long dstOffset, long srcOffset) {
            long guard = 64;
            try (DeviceBuffer src = DeviceBuffer.allocate(device, n + srcOffset);
                 DeviceBuffer dst = DeviceBuffer.allocate(device, n + dstOffset + guard); Arena arena = Arena.ofConfined()) {
                MemorySegment data = randomBytes(arena, n + srcOffset, random.nextLong());
                upload(stream, data, src);
                poison(dst);
                kernels.function("copy_bytes").launch(stream, blocks(device, n / 16 + 1), THREADS,
                        KernelArgs.begin().ptr(dst.pointer() + dstOffset).ptr(src.pointer() + srcOffset).u64(n));
                stream.synchronize();
                MemorySegment back = download(arena, stream, dst);
                boolean body = back.asSlice(dstOffset, n).mismatch(data.asSlice(srcOffset, n)) == -1;
                boolean guardOk = allBytes(back.asSlice(0, dstOffset), (byte) 0xFF)
                        && allBytes(back.asSlice(dstOffset + n), (byte) 0xFF);
                report(tag + "copy_bytes", body && guardOk, n + " bytes, dst+" + dstOffset + " src+" + srcOffset
                        + (body ? " equal" : " DIFFER") + (guardOk ? ", guards intact" : ", GUARD OVERWRITTEN"));
            }
        }

        void reduceF32(int sources, long n, long offsetElements) {
            try (Arena arena = Arena.ofConfined(); Buffers bufs = new Buffers()) {
                long bytes = (n + offsetElements) * 4;
                float[][] in = new float[sources][(int) n];
                long[] pointers = new long[sources];
                for (int s = 0; s < sources; s++) {
                    MemorySegment h = arena.allocate(bytes);
                    for (int i = 0; i < n; i++) {
                        in[s][i] = (float) (random.nextGaussian() * 1000);
                        h.setAtIndex(ValueLayout.JAVA_FLOAT, offsetElements + i, in[s][i]);
                    }
                    DeviceBuffer b = bufs.add(DeviceBuffer.allocate(device, bytes));
                    upload(stream, h, b);
                    pointers[s] = b.pointer() + offsetElements * 4;
                }
                DeviceBuffer dst = bufs.add(DeviceBuffer.allocate(device, bytes + 64));
                poison(dst);
                DeviceBuffer table = bufs.add(pointerTable(stream, arena, pointers));
                kernels.function("reduce_sum_f32").launch(stream, blocks(device, n / 4 + 1), THREADS,
                        KernelArgs.begin().ptr(dst.pointer() + offsetElements * 4).ptr(table.pointer()).i32(sources).u64(n));
                stream.synchronize();
                MemorySegment back = download(arena, stream, dst);
                long bad = 0;
                for (int i = 0; i < n; i++) {
                    float acc = in[0][i];
                    for (int s = 1; s < sources; s++) acc += in[s][i];
                    float got = back.getAtIndex(ValueLayout.JAVA_FLOAT, offsetElements + i);
                    if (Float.floatToRawIntBits(got) != Float.floatToRawIntBits(acc)) bad++;
                }
                boolean guardOk = allBytes(back.asSlice(bytes), (byte) 0xFF);
                report(tag + "reduce_sum_f32", bad == 0 && guardOk, sources + " sources x " + n + " floats, offset "
                        + offsetElements + ": " + bad + " bitwise mismatches" + (guardOk ? "" : ", GUARD OVERWRITTEN"));
            }
        }

        void reduceBf16(int sources, long n, long offsetElements) {
            try (Arena arena = Arena.ofConfined(); Buffers bufs = new Buffers()) {
                long bytes = (n + offsetElements) * 2;
                short[][] in = new short[sources][(int) n];
                long[] pointers = new long[sources];
                for (int s = 0; s < sources; s++) {
                    MemorySegment h = arena.allocate(bytes);
                    for (int i = 0; i < n; i++) {
                        in[s][i] = FloatFormats.floatToBf16((float) (random.nextGaussian() * 10));
                        h.setAtIndex(ValueLayout.JAVA_SHORT, offsetElements + i, in[s][i]);
                    }
                    DeviceBuffer b = bufs.add(DeviceBuffer.allocate(device, bytes));
                    upload(stream, h, b);
                    pointers[s] = b.pointer() + offsetElements * 2;
                }
                DeviceBuffer dst = bufs.add(DeviceBuffer.allocate(device, bytes + 64));
                poison(dst);
                DeviceBuffer table = bufs.add(pointerTable(stream, arena, pointers));
                kernels.function("reduce_sum_bf16").launch(stream, blocks(device, n / 8 + 1), THREADS,
                        KernelArgs.begin().ptr(dst.pointer() + offsetElements * 2).ptr(table.pointer()).i32(sources).u64(n));
                stream.synchronize();
                MemorySegment back = download(arena, stream, dst);
                long bad = 0;
                for (int i = 0; i < n; i++) {
                    float acc = FloatFormats.bf16ToFloat(in[0][i]);
                    for (int s = 1; s < sources; s++) acc += FloatFormats.bf16ToFloat(in[s][i]);
                    if (back.getAtIndex(ValueLayout.JAVA_SHORT, offsetElements + i) != FloatFormats.floatToBf16(acc)) bad++;
                }
                boolean guardOk = allBytes(back.asSlice(bytes), (byte) 0xFF);
                report(tag + "reduce_sum_bf16", bad == 0 && guardOk, sources + " sources x " + n + " bf16, offset "
                        + offsetElements + ": " + bad + " bitwise mismatches" + (guardOk ? "" : ", GUARD OVERWRITTEN"));
            }
        }

        void flagWait() {
            CudaFunction wait = kernels.function("timed_flag_wait");
            CudaFunction signal = kernels.function("signal_flag_u64");
            try (DeviceBuffer flag = DeviceBuffer.allocate(device, 8); PinnedHostMemory result = PinnedHostMemory.allocate(device, 4);
                 CudaStream other = CudaStream.create(device); CudaEvent start = CudaEvent.create(device, true);
                 CudaEvent end = CudaEvent.create(device, true)) {
                MemorySegment word = result.segment();
                device.makeCurrent();

                CudaDriver.cuMemsetD8(flag.pointer(), (byte) 0, 8);
                CudaDriver.cuMemsetD32(flag.pointer(), 5, 1);
                device.synchronize();
                word.set(ValueLayout.JAVA_INT, 0, -1);
                wait.launch(stream, 1, 1, KernelArgs.begin().ptr(flag.pointer()).u64(5).u64(1_000_000_000L).ptr(result.devicePointer()));
                stream.synchronize();
                report(tag + "timed_flag_wait already set", word.get(ValueLayout.JAVA_INT, 0) == 1,
                        "flag 5 >= target 5 -> result " + word.get(ValueLayout.JAVA_INT, 0));

                word.set(ValueLayout.JAVA_INT, 0, -1);
                start.record(stream);
                wait.launch(stream, 1, 1, KernelArgs.begin().ptr(flag.pointer()).u64(6).u64(2_000_000L).ptr(result.devicePointer()));
                end.record(stream);
                stream.synchronize();
                float ms = CudaEvent.elapsedMillis(start, end);
                report(tag + "timed_flag_wait timeout", word.get(ValueLayout.JAVA_INT, 0) == 0 && ms >= 1.9f && ms < 1000f,
                        "flag 5 < target 6, 2 ms deadline -> result " + word.get(ValueLayout.JAVA_INT, 0) + " after " + ms + " ms");

                word.set(ValueLayout.JAVA_INT, 0, -1);
                long t0 = System.nanoTime();
                wait.launch(stream, 1, 1, KernelArgs.begin().ptr(flag.pointer()).u64(7).u64(10_000_000_000L).ptr(result.devicePointer()));
                sleep(20);
                signal.launch(other, 1, 1, KernelArgs.begin().ptr(flag.pointer()).u64(7));
                int seen;
                while ((seen = (int) INT_VOLATILE.getVolatile(word, 0L)) == -1 && System.nanoTime() - t0 < 15_000_000_000L) {
                    Thread.onSpinWait();
                }
                long hostMs = (System.nanoTime() - t0) / 1_000_000;
                stream.synchronize();
                report(tag + "timed_flag_wait signalled", seen == 1 && hostMs < 5000,
                        "signal_flag_u64 from another stream after 20 ms -> host saw result " + seen + " after " + hostMs
                                + " ms (polling pinned memory, no stream sync)");
            }
        }

        void bandwidth() {
            try (DeviceBuffer src = DeviceBuffer.allocate(device, BANDWIDTH_BYTES);
                 DeviceBuffer dst = DeviceBuffer.allocate(device, BANDWIDTH_BYTES)) {
                device.makeCurrent();
                CudaDriver.cuMemsetD32(src.pointer(), 0x01020304, BANDWIDTH_BYTES / 4);
                device.synchronize();
                CudaFunction copy = kernels.function("copy_bytes");
                float kernelMs = timed(device, stream, 10, () -> copy.launch(stream, blocks(device, BANDWIDTH_BYTES / 16), THREADS,
                        KernelArgs.begin().ptr(dst.pointer()).ptr(src.pointer()).u64(BANDWIDTH_BYTES)));
                float driverMs = timed(device, stream, 10, () -> stream.copyDeviceToDevice(src.pointer(), dst.pointer(), BANDWIDTH_BYTES));
                double kernelGbs = BANDWIDTH_BYTES / (kernelMs * 1e6);
                double driverGbs = BANDWIDTH_BYTES / (driverMs * 1e6);
                report(tag + "bandwidth", kernelGbs > 0, String.format(
                        "256 MiB device-to-device: copy_bytes %.1f GB/s copied (%.1f GB/s read+write), cuMemcpyDtoDAsync %.1f GB/s copied",
                        kernelGbs, 2 * kernelGbs, driverGbs));
            }
        }
    }

    /** Milliseconds per iteration of {@code work} on {@code stream}, measured with events after two warm-ups. */
    private static float timed(CudaDevice device, CudaStream stream, int iterations, Runnable work) {
        try (CudaEvent start = CudaEvent.create(device, true); CudaEvent end = CudaEvent.create(device, true)) {
            work.run();
            work.run();
            start.record(stream);
            for (int i = 0; i < iterations; i++) work.run();
            end.record(stream);
            end.synchronize();
            return CudaEvent.elapsedMillis(start, end) / iterations;
        }
    }

    /** With 2+ GPUs: each GPU's kernel writes a shareable buffer on the next GPU over NVLink. */
    private void peerChecks() {
        List<CudaDevice> devices = CudaDevice.all();
        for (CudaDevice d : devices) {
            CudaDevice next = devices.get((d.ordinal() + 1) % devices.size());
            String check = "peer cuda:" + d.ordinal() + "->cuda:" + next.ordinal();
            if (!d.canAccessPeer(next)) {
                skip(check, "cuDeviceCanAccessPeer says no");
                continue;
            }
            if (!next.supportsVirtualMemory()) {
                skip(check, next + " has no virtual memory management");
                continue;
            }
            guarded(check, () -> peerWrite(check, d, next));
        }
    }

    private void peerWrite(String check, CudaDevice writer, CudaDevice owner) {
        try (CudaModule kernels = CudaModule.loadKernels(writer); CudaStream stream = CudaStream.create(writer);
             DeviceBuffer target = DeviceBuffer.allocateShareable(owner, BANDWIDTH_BYTES);
             DeviceBuffer src = DeviceBuffer.allocate(writer, BANDWIDTH_BYTES); Arena arena = Arena.ofConfined()) {
            MemorySegment data = randomBytes(arena, BANDWIDTH_BYTES, writer.ordinal() * 7919L);
            upload(stream, data, src);
            poison(target);
            CudaFunction copy = kernels.function("copy_bytes");
            float ms = timed(writer, stream, 5, () -> copy.launch(stream, blocks(writer, BANDWIDTH_BYTES / 16), THREADS,
                    KernelArgs.begin().ptr(target.pointer()).ptr(src.pointer()).u64(BANDWIDTH_BYTES)));
            stream.synchronize();
            boolean equal = download(arena, stream, target).mismatch(data) == -1;
            report(check + " write", equal, String.format("%s buffer (%s) on %s written by a kernel on %s: %s, %.1f GB/s",
                    target.kind(), target.handleType(), owner, writer, equal ? "equal" : "DIFFERENT", BANDWIDTH_BYTES / (ms * 1e6)));

            ShareableHandle handle = target.exportHandle();
            ShareableHandle decoded = ShareableHandle.fromBytes(handle.toBytes());
            try (DeviceBuffer again = DeviceBuffer.importShareable(writer, decoded);
                 DeviceBuffer local = DeviceBuffer.allocate(writer, BANDWIDTH_BYTES)) {
                stream.copyDeviceToDevice(again.pointer(), local.pointer(), BANDWIDTH_BYTES);
                stream.synchronize();
                boolean same = download(arena, stream, local).mismatch(data) == -1;
                report(check + " export/import", same, "exported " + handle + ", imported on " + writer
                        + " at 0x" + Long.toHexString(again.pointer()) + ", read back " + (same ? "equal" : "DIFFERENT"));
            }
        }
    }

    // ---- multi-process (one process per GPU) --------------------------------------------------------

    private void ipc(Path dir, int rank, int world) {
        if (world < 2) {
            skip("rank " + rank + " ipc", "needs WORLD_SIZE >= 2");
            return;
        }
        CudaDevice device = CudaDevice.get(rank % CudaDevice.count());
        int next = (rank + 1) % world;
        int prev = (rank + world - 1) % world;
        long total = BANDWIDTH_BYTES + 4096;   // data, then the 8-byte flag the previous rank sets
        System.out.printf("rank %d/%d on %s, pid %d%n", rank, world, device, ProcessHandle.current().pid());
        try (CudaModule kernels = CudaModule.loadKernels(device); CudaStream stream = CudaStream.create(device);
             DeviceBuffer legacy = DeviceBuffer.allocate(device, total);
             DeviceBuffer shareable = DeviceBuffer.allocateShareable(device, total);
             DeviceBuffer src = DeviceBuffer.allocate(device, BANDWIDTH_BYTES);
             PinnedHostMemory result = PinnedHostMemory.allocate(device, 4); Arena arena = Arena.ofConfined()) {
            device.makeCurrent();
            CudaDriver.cuMemsetD8(legacy.pointer(), (byte) 0, total);
            CudaDriver.cuMemsetD8(shareable.pointer(), (byte) 0, total);
            device.synchronize();
            upload(stream, randomBytes(arena, BANDWIDTH_BYTES, 1000 + rank), src);
            MemorySegment expected = randomBytes(arena, BANDWIDTH_BYTES, 1000 + prev);
            Exchange exchange = new Exchange(rank, kernels, stream, src, result, arena, expected);

            long deadline = System.nanoTime() + 120_000_000_000L;
            publish(dir, "ipc-" + rank, legacy.ipcHandle().bytes());
            publish(dir, "vmm-" + rank, shareable.exportHandle().toBytes());
            IpcMemHandle peerIpc = IpcMemHandle.of(await(dir, "ipc-" + next, deadline));
            ShareableHandle peerVmm = ShareableHandle.fromBytes(await(dir, "vmm-" + next, deadline));

            try (DeviceBuffer peer = DeviceBuffer.openIpc(device, peerIpc, total)) {
                exchange.run("legacy IPC (cuMemAlloc + cuIpcOpenMemHandle)", peer, legacy, true);
            }

            DeviceBuffer peerShareable = null;
            try {
                peerShareable = DeviceBuffer.importShareable(device, peerVmm);
            } catch (PosixFds.ErrnoException e) {
                if (!e.notPermitted()) throw e;
                skip("rank " + rank + " cuMemCreate/" + peerVmm.type(), e.getMessage());
            }
            // The previous rank only writes into our shareable buffer when it could import it.
            publish(dir, "vmm-imported-" + rank, new byte[] {(byte) (peerShareable != null ? 1 : 0)});
            boolean prevWrites = await(dir, "vmm-imported-" + prev, deadline)[0] == 1;
            if (peerShareable != null || prevWrites) {
                try (DeviceBuffer peer = peerShareable) {
                    exchange.run("cuMemCreate/" + shareable.handleType() + " (import via "
                            + (peerVmm.type() == ShareableHandleType.FABRIC ? "fabric handle" : "pidfd_getfd") + ")",
                            peer, shareable, prevWrites);
                }
            }
            publish(dir, "done-" + rank, new byte[] {1});
            for (int r = 0; r < world; r++) await(dir, "done-" + r, deadline);
        } catch (RuntimeException e) {
            report("rank " + rank + " ipc", false, e.toString());
            e.printStackTrace(System.out);
        }
    }

    /** One rank's part of a ring exchange through mapped peer buffers. */
    private final class Exchange {
        private final int rank;
        private final CudaModule kernels;
        private final CudaStream stream;
        private final DeviceBuffer src;
        private final PinnedHostMemory result;
        private final Arena arena;
        private final MemorySegment expected;

        Exchange(int rank, CudaModule kernels, CudaStream stream, DeviceBuffer src, PinnedHostMemory result, Arena arena,
                 MemorySegment expected) {
            this.rank = rank;
            this.kernels = kernels;
            this.stream = stream;
            this.src = src;
            this.result = result;
            this.arena = arena;
            this.expected = expected;
        }

        /**
         * Writes {@code src} into {@code peer} (the next rank's buffer, when mapped) with a kernel over
         * NVLink and sets the flag behind the data there; then, when the previous rank writes to us,
         * waits on the GPU with a deadline for the flag in {@code own} and checks the data.
         */
        void run(String what, DeviceBuffer peer, DeviceBuffer own, boolean receive) {
            CudaDevice device = stream.device();
            long bytes = src.size();
            String check = "rank " + rank + " " + what;
            if (peer != null) {
                CudaFunction copy = kernels.function("copy_bytes");
                float ms = timed(device, stream, 5, () -> copy.launch(stream, blocks(device, bytes / 16), THREADS,
                        KernelArgs.begin().ptr(peer.pointer()).ptr(src.pointer()).u64(bytes)));
                kernels.function("signal_flag_u64").launch(stream, 1, 1, KernelArgs.begin().ptr(peer.pointer() + bytes).u64(1));
                stream.synchronize();
                System.out.printf("  %s: wrote %d MiB into the next rank's GPU at %.1f GB/s%n", check, bytes / MIB,
                        bytes / (ms * 1e6));
            }
            if (!receive) return;
            result.segment().set(ValueLayout.JAVA_INT, 0, -1);
            kernels.function("timed_flag_wait").launch(stream, 1, 1,
                    KernelArgs.begin().ptr(own.pointer() + bytes).u64(1).u64(60_000_000_000L).ptr(result.devicePointer()));
            stream.synchronize();
            boolean arrived = result.segment().get(ValueLayout.JAVA_INT, 0) == 1;
            boolean equal = arrived && download(arena, stream, own).asSlice(0, bytes).mismatch(expected) == -1;
            report(check, equal, "flag from the previous rank " + (arrived ? "arrived" : "DID NOT ARRIVE within 60 s")
                    + (arrived ? ", its " + bytes / MIB + " MiB " + (equal ? "equal" : "DIFFER") : ""));
        }
    }

    private static void publish(Path dir, String name, byte[] bytes) {
        try {
            Path tmp = dir.resolve(name + ".tmp");
            Files.write(tmp, bytes);
            Files.move(tmp, dir.resolve(name), StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot publish " + name + " in " + dir, e);
        }
    }

    private static byte[] await(Path dir, String name, long deadlineNanos) {
        Path p = dir.resolve(name);
        try {
            while (!Files.exists(p)) {
                if (System.nanoTime() > deadlineNanos) {
                    throw new IllegalStateException(p + " did not appear in time: did a peer process die?");
                }
                sleep(10);
            }
            return Files.readAllBytes(p);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + p, e);
        }
    }

    // ---- helpers ---------------------------------------------------------------------------------

    /** Owns the buffers of one check. */
    private static final class Buffers implements AutoCloseable {
        private final List<DeviceBuffer> buffers = new ArrayList<>();

        DeviceBuffer add(DeviceBuffer b) {
            buffers.add(b);
            return b;
        }

        @Override
        public void close() {
            for (DeviceBuffer b : buffers) b.close();
        }
    }

    private static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted", e);
        }
    }

    private static MemorySegment randomBytes(Arena arena, long bytes, long seed) {
        MemorySegment s = arena.allocate(bytes, 16);
        SplittableRandom r = new SplittableRandom(seed);
        long i = 0;
        for (; i + 8 <= bytes; i += 8) s.set(ValueLayout.JAVA_LONG_UNALIGNED, i, r.nextLong());
        for (; i < bytes; i++) s.set(ValueLayout.JAVA_BYTE, i, (byte) r.nextInt());
        return s;
    }

    /** Copies {@code host} to the start of {@code b} and waits for it. */
    private static void upload(CudaStream stream, MemorySegment host, DeviceBuffer b) {
        stream.copyHostToDevice(host, b.pointer(), host.byteSize());
        stream.synchronize();
    }

    /** All of {@code b}, copied to the host. */
    private static MemorySegment download(Arena arena, CudaStream stream, DeviceBuffer b) {
        MemorySegment host = arena.allocate(b.size(), 16);
        stream.copyDeviceToHost(b.pointer(), host, b.size());
        stream.synchronize();
        return host;
    }

    /** Fills {@code b} with 0xFF bytes, so that anything a kernel fails to write (or overwrites) shows. */
    private static void poison(DeviceBuffer b) {
        b.device().makeCurrent();
        CudaDriver.cuMemsetD8(b.pointer(), (byte) 0xFF, b.size());
        b.device().synchronize();
    }

    private static DeviceBuffer pointerTable(CudaStream stream, Arena arena, long[] pointers) {
        MemorySegment h = arena.allocate(ValueLayout.JAVA_LONG, pointers.length);
        MemorySegment.copy(pointers, 0, h, ValueLayout.JAVA_LONG, 0, pointers.length);
        DeviceBuffer table = DeviceBuffer.allocate(stream.device(), h.byteSize());
        upload(stream, h, table);
        return table;
    }

    private static boolean allBytes(MemorySegment s, byte value) {
        for (long i = 0; i < s.byteSize(); i++) if (s.get(ValueLayout.JAVA_BYTE, i) != value) return false;
        return true;
    }

    private static boolean allInts(MemorySegment s, int value) {
        for (long i = 0; i + 4 <= s.byteSize(); i += 4) if (s.get(ValueLayout.JAVA_INT_UNALIGNED, i) != value) return false;
        return true;
    }
}
