package org.mooncake4j.core;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import org.mooncake4j.core.internal.FloatFormats;

/**
 * A dense, contiguous, row-major n-dimensional array: a view over host memory (a
 * {@link MemorySegment}) or over device memory (a CUDA pointer).
 *
 * <p>Ownership: a tensor made by a factory ({@link #empty}, {@link #zeros}, {@link #of}, {@link #to})
 * owns its memory and frees it on {@link #close()}; a tensor made by {@link #wrap},
 * {@link #wrapDevice}, {@link #view} or {@link #slice} borrows memory owned elsewhere and
 * {@link #close()} does nothing. Tensors are not thread-safe for concurrent writes; a collective
 * owns its tensors until it completes.
 */
public final class Tensor implements AutoCloseable {
    private static final ValueLayout.OfShort SHORT = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT_UNALIGNED;
    private static final ValueLayout.OfDouble DOUBLE = ValueLayout.JAVA_DOUBLE_UNALIGNED;

    private final DType dtype;
    private final Device device;
    private final long[] shape;
    private final long numel;
    private final MemorySegment host;   // CPU tensors
    private final long devicePointer;   // CUDA tensors
    private final Arena arena;          // non-null when this tensor owns host memory
    private boolean ownsDevice;
    /** Releases host memory this tensor was handed with {@link #wrap(MemorySegment, AutoCloseable, DType, long...)}. */
    private AutoCloseable owner;

    private Tensor(DType dtype, Device device, long[] shape, MemorySegment host, long devicePointer, Arena arena,
                   boolean ownsDevice) {
        this.dtype = dtype;
        this.device = device;
        this.shape = shape;
        this.numel = numel(shape);
        this.host = host;
        this.devicePointer = devicePointer;
        this.arena = arena;
        this.ownsDevice = ownsDevice;
    }

    private static long numel(long[] shape) {
        long n = 1;
        for (long d : shape) {
            if (d < 0) throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    /** Bytes of a contiguous {@code dtype} tensor of {@code shape}; rejects negative dimensions and overflow. */
    public static long bytesFor(DType dtype, long... shape) {
        return Math.multiplyExact(numel(shape), (long) dtype.byteSize());
    }

    // ---- factories -------------------------------------------------------------------------

    /** Uninitialized memory on {@code device} (host memory is zeroed by the allocator). */
    public static Tensor empty(DType dtype, Device device, long... shape) {
        long bytes = bytesFor(dtype, shape);
        if (device.isCpu()) {
            Arena a = Arena.ofShared();
            MemorySegment seg = a.allocate(Math.max(bytes, 1), 64).asSlice(0, bytes);
            return new Tensor(dtype, device, shape.clone(), seg, 0, a, false);
        }
        long p = DeviceMemory.find(device.type()).allocate(device, Math.max(bytes, 1));
        return new Tensor(dtype, device, shape.clone(), null, p, null, true);
    }

    public static Tensor zeros(DType dtype, Device device, long... shape) {
        Tensor t = empty(dtype, device, shape);
        if (device.isCpu()) t.host.fill((byte) 0);
        else t.copyFrom(Tensor.empty(dtype, Device.CPU, shape));
        return t;
    }

    public static Tensor ones(DType dtype, Device device, long... shape) {
        Tensor h = empty(dtype, Device.CPU, shape);
        for (long i = 0; i < h.numel; i++) h.setDouble(i, 1);
        if (device.isCpu()) return h;
        try (h) { return h.to(device); }
    }

    public static Tensor of(int... v) {
        Tensor t = empty(DType.INT32, Device.CPU, v.length);
        MemorySegment.copy(v, 0, t.host, INT, 0, v.length);
        return t;
    }

    public static Tensor of(long... v) {
        Tensor t = empty(DType.INT64, Device.CPU, v.length);
        MemorySegment.copy(v, 0, t.host, LONG, 0, v.length);
        return t;
    }

    public static Tensor of(float... v) {
        Tensor t = empty(DType.FLOAT32, Device.CPU, v.length);
        MemorySegment.copy(v, 0, t.host, FLOAT, 0, v.length);
        return t;
    }

    public static Tensor of(double... v) {
        Tensor t = empty(DType.FLOAT64, Device.CPU, v.length);
        MemorySegment.copy(v, 0, t.host, DOUBLE, 0, v.length);
        return t;
    }

    /** A tensor over host memory the caller owns and keeps alive; {@link #close()} leaves it alone. */
    public static Tensor wrap(MemorySegment hostMemory, DType dtype, long... shape) {
        long bytes = bytesFor(dtype, shape);
        if (hostMemory.byteSize() < bytes) {
            throw new IllegalArgumentException("memory of " + hostMemory.byteSize() + " bytes is too small for a "
                    + dtype.torchName() + " tensor of shape " + Arrays.toString(shape) + " (" + bytes + " bytes)");
        }
        return new Tensor(dtype, Device.CPU, shape.clone(), hostMemory.asSlice(0, bytes), 0, null, false);
    }

    /**
     * A tensor over host memory that {@code owner} releases when the tensor is closed (for example a
     * segment registered with a transfer engine, which peers on the host read in place).
     */
    public static Tensor wrap(MemorySegment hostMemory, AutoCloseable owner, DType dtype, long... shape) {
        Tensor t = wrap(hostMemory, dtype, shape);
        t.owner = java.util.Objects.requireNonNull(owner, "owner");
        return t;
    }

    /** A tensor over device memory the caller owns (e.g. from another library); never freed here. */
    public static Tensor wrapDevice(long devicePointer, int cudaDevice, DType dtype, long... shape) {
        if (devicePointer == 0) throw new IllegalArgumentException("device pointer is null");
        return new Tensor(dtype, Device.cuda(cudaDevice), shape.clone(), null, devicePointer, null, false);
    }

    // ---- accessors -------------------------------------------------------------------------

    public DType dtype() { return dtype; }

    public Device device() { return device; }

    public long[] shape() { return shape.clone(); }

    public int dim() { return shape.length; }

    public long size(int dim) { return shape[dim < 0 ? shape.length + dim : dim]; }

    public long numel() { return numel; }

    public long byteSize() { return numel * dtype.byteSize(); }

    /** Contiguous row-major strides, in elements. */
    public long[] strides() {
        long[] s = new long[shape.length];
        long acc = 1;
        for (int i = shape.length - 1; i >= 0; i--) { s[i] = acc; acc *= shape[i]; }
        return s;
    }

    /** The host memory of a CPU tensor, exactly {@link #byteSize()} long. */
    public MemorySegment segment() {
        if (host == null) throw new IllegalStateException("tensor is on " + device + ", not host memory; copy it with to(Device.CPU)");
        return host;
    }

    /** The device pointer of a CUDA tensor. */
    public long devicePointer() {
        if (host != null) throw new IllegalStateException("tensor is on the CPU; it has no device pointer");
        return devicePointer;
    }

    // ---- views -----------------------------------------------------------------------------

    /** The same memory with another shape of the same element count; -1 infers one dimension. */
    public Tensor view(long... newShape) {
        long[] s = newShape.clone();
        int infer = -1;
        long known = 1;
        for (int i = 0; i < s.length; i++) {
            if (s[i] == -1) {
                if (infer >= 0) throw new IllegalArgumentException("only one dimension can be -1 in " + Arrays.toString(newShape));
                infer = i;
            } else known = Math.multiplyExact(known, s[i]);
        }
        if (infer >= 0) s[infer] = known == 0 ? 0 : numel / known;
        if (numel(s) != numel) {
            throw new IllegalArgumentException("shape " + Arrays.toString(newShape) + " is invalid for a tensor of "
                    + numel + " elements (shape " + Arrays.toString(shape) + ")");
        }
        return new Tensor(dtype, device, s, host, devicePointer, null, false);
    }

    /**
     * Elements {@code [start, end)} along {@code dim}. The result must stay contiguous, so {@code dim}
     * must be 0 or every dimension before it must have size 1.
     */
    public Tensor slice(int dim, long start, long end) {
        int d = dim < 0 ? shape.length + dim : dim;
        if (d < 0 || d >= shape.length) throw new IllegalArgumentException("dim " + dim + " out of range for " + shape.length + "-d tensor");
        if (start < 0 || end > shape[d] || start > end) {
            throw new IllegalArgumentException("slice [" + start + ", " + end + ") out of range for dimension " + d + " of size " + shape[d]);
        }
        for (int i = 0; i < d; i++) {
            if (shape[i] != 1) throw new IllegalArgumentException("slice along dim " + d + " of shape " + Arrays.toString(shape)
                    + " would not be contiguous; slice along dim 0 or reshape first");
        }
        long inner = 1;
        for (int i = d + 1; i < shape.length; i++) inner *= shape[i];
        long[] s = shape.clone();
        s[d] = end - start;
        long off = start * inner * dtype.byteSize();
        long len = (end - start) * inner * dtype.byteSize();
        if (host != null) return new Tensor(dtype, device, s, host.asSlice(off, len), 0, null, false);
        return new Tensor(dtype, device, s, null, devicePointer + off, null, false);
    }

    // ---- copies ----------------------------------------------------------------------------

    /** Copies {@code src} (same dtype and element count, any device) into this tensor. */
    public void copyFrom(Tensor src) {
        if (src.dtype != dtype || src.numel != numel) {
            throw new IllegalArgumentException("copyFrom needs the same dtype and element count: got " + src.dtype.torchName()
                    + "[" + src.numel + "] into " + dtype.torchName() + "[" + numel + "]");
        }
        long bytes = byteSize();
        if (bytes == 0) return;
        if (host != null && src.host != null) MemorySegment.copy(src.host, 0, host, 0, bytes);
        else if (host != null) DeviceMemory.find(src.device.type()).copyToHost(src.device, src.devicePointer, host, bytes);
        else if (src.host != null) DeviceMemory.find(device.type()).copyFromHost(device, src.host, devicePointer, bytes);
        else DeviceMemory.find(device.type()).copyOnDevice(device, src.devicePointer, devicePointer, bytes);
    }

    /** A copy on {@code d} (always a new tensor, even on the same device). */
    public Tensor to(Device d) {
        Tensor t = empty(dtype, d, shape);
        t.copyFrom(this);
        return t;
    }

    /** A converted copy on the CPU-or-same device: floats round to nearest even, fp8 saturates. */
    public Tensor to(DType target) {
        Tensor src = host != null ? this : to(Device.CPU);
        try {
            Tensor out = empty(target, Device.CPU, shape);
            boolean exactLong = !dtype.isFloatingPoint() && !target.isFloatingPoint();
            for (long i = 0; i < numel; i++) {
                if (exactLong) out.setLong(i, src.getLong(i));
                else out.setDouble(i, src.getDouble(i));
            }
            if (host != null) return out;
            try (out) { return out.to(device); }
        } finally {
            if (src != this) src.close();
        }
    }

    // ---- element access (host tensors; not for hot paths) ----------------------------------

    /** Element {@code i} (flat index) as a double, from any dtype. */
    public double getDouble(long i) {
        MemorySegment s = segment();
        long o = i * dtype.byteSize();
        return switch (dtype) {
            case BOOL -> s.get(ValueLayout.JAVA_BYTE, o) != 0 ? 1 : 0;
            case UINT8 -> s.get(ValueLayout.JAVA_BYTE, o) & 0xff;
            case INT8 -> s.get(ValueLayout.JAVA_BYTE, o);
            case INT16 -> s.get(SHORT, o);
            case INT32 -> s.get(INT, o);
            case INT64 -> s.get(LONG, o);
            case FLOAT16 -> FloatFormats.fp16ToFloat(s.get(SHORT, o));
            case BFLOAT16 -> FloatFormats.bf16ToFloat(s.get(SHORT, o));
            case FLOAT32 -> s.get(FLOAT, o);
            case FLOAT64 -> s.get(DOUBLE, o);
            case FLOAT8_E4M3 -> FloatFormats.e4m3ToFloat(s.get(ValueLayout.JAVA_BYTE, o));
        };
    }

    /** Stores {@code v} at flat index {@code i}, converting (integers truncate toward zero). */
    public void setDouble(long i, double v) {
        MemorySegment s = segment();
        long o = i * dtype.byteSize();
        switch (dtype) {
            case BOOL -> s.set(ValueLayout.JAVA_BYTE, o, (byte) (v != 0 ? 1 : 0));
            case UINT8, INT8 -> s.set(ValueLayout.JAVA_BYTE, o, (byte) (long) v);
            case INT16 -> s.set(SHORT, o, (short) (long) v);
            case INT32 -> s.set(INT, o, (int) (long) v);
            case INT64 -> s.set(LONG, o, (long) v);
            case FLOAT16 -> s.set(SHORT, o, FloatFormats.floatToFp16((float) v));
            case BFLOAT16 -> s.set(SHORT, o, FloatFormats.floatToBf16((float) v));
            case FLOAT32 -> s.set(FLOAT, o, (float) v);
            case FLOAT64 -> s.set(DOUBLE, o, v);
            case FLOAT8_E4M3 -> s.set(ValueLayout.JAVA_BYTE, o, FloatFormats.floatToE4m3((float) v));
        }
    }

    /** Element {@code i} as a long: exact for integer types, truncated for floats. */
    public long getLong(long i) {
        MemorySegment s = segment();
        long o = i * dtype.byteSize();
        return switch (dtype) {
            case BOOL -> s.get(ValueLayout.JAVA_BYTE, o) != 0 ? 1 : 0;
            case UINT8 -> s.get(ValueLayout.JAVA_BYTE, o) & 0xff;
            case INT8 -> s.get(ValueLayout.JAVA_BYTE, o);
            case INT16 -> s.get(SHORT, o);
            case INT32 -> s.get(INT, o);
            case INT64 -> s.get(LONG, o);
            default -> (long) getDouble(i);
        };
    }

    /** Stores {@code v} at flat index {@code i}: exact (wrapping) for integer types. */
    public void setLong(long i, long v) {
        MemorySegment s = segment();
        long o = i * dtype.byteSize();
        switch (dtype) {
            case BOOL -> s.set(ValueLayout.JAVA_BYTE, o, (byte) (v != 0 ? 1 : 0));
            case UINT8, INT8 -> s.set(ValueLayout.JAVA_BYTE, o, (byte) v);
            case INT16 -> s.set(SHORT, o, (short) v);
            case INT32 -> s.set(INT, o, (int) v);
            case INT64 -> s.set(LONG, o, v);
            default -> setDouble(i, v);
        }
    }

    // ---- to Java arrays (any dtype, any device) ---------------------------------------------

    public int[] toIntArray() {
        Tensor h = host != null ? this : to(Device.CPU);
        try {
            int[] a = new int[Math.toIntExact(numel)];
            if (dtype == DType.INT32) MemorySegment.copy(h.host, INT, 0, a, 0, a.length);
            else for (int i = 0; i < a.length; i++) a[i] = (int) h.getLong(i);
            return a;
        } finally { if (h != this) h.close(); }
    }

    public long[] toLongArray() {
        Tensor h = host != null ? this : to(Device.CPU);
        try {
            long[] a = new long[Math.toIntExact(numel)];
            if (dtype == DType.INT64) MemorySegment.copy(h.host, LONG, 0, a, 0, a.length);
            else for (int i = 0; i < a.length; i++) a[i] = h.getLong(i);
            return a;
        } finally { if (h != this) h.close(); }
    }

    public float[] toFloatArray() {
        Tensor h = host != null ? this : to(Device.CPU);
        try {
            float[] a = new float[Math.toIntExact(numel)];
            if (dtype == DType.FLOAT32) MemorySegment.copy(h.host, FLOAT, 0, a, 0, a.length);
            else for (int i = 0; i < a.length; i++) a[i] = (float) h.getDouble(i);
            return a;
        } finally { if (h != this) h.close(); }
    }

    public double[] toDoubleArray() {
        Tensor h = host != null ? this : to(Device.CPU);
        try {
            double[] a = new double[Math.toIntExact(numel)];
            if (dtype == DType.FLOAT64) MemorySegment.copy(h.host, DOUBLE, 0, a, 0, a.length);
            else for (int i = 0; i < a.length; i++) a[i] = h.getDouble(i);
            return a;
        } finally { if (h != this) h.close(); }
    }

    @Override
    public void close() {
        if (arena != null && arena.scope().isAlive()) arena.close();
        AutoCloseable o = owner;
        if (o != null) {
            owner = null;
            try {
                o.close();
            } catch (RuntimeException e) {
                throw e;
            } catch (Exception e) {
                throw new IllegalStateException("releasing the memory of " + this + " failed: " + e.getMessage(), e);
            }
        }
        if (ownsDevice) {
            ownsDevice = false;
            DeviceMemory.find(device.type()).free(device, devicePointer);
        }
    }

    @Override
    public String toString() {
        return "Tensor(" + dtype.torchName() + ", " + device + ", shape=" + Arrays.toString(shape) + ")";
    }
}
