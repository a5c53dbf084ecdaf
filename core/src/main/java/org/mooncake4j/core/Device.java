package org.mooncake4j.core;

/**
 * Where a tensor's memory lives: host memory ({@link #CPU}) or the memory of one CUDA device.
 *
 * @param type  {@code cpu} or {@code cuda}
 * @param index the CUDA ordinal; -1 for the CPU
 */
public record Device(Type type, int index) {
    public enum Type { CPU, CUDA }

    public static final Device CPU = new Device(Type.CPU, -1);

    public Device {
        if (type == Type.CPU && index != -1) throw new IllegalArgumentException("the CPU device has no index");
        if (type == Type.CUDA && index < 0) throw new IllegalArgumentException("CUDA device index must be >= 0, got " + index);
    }

    public static Device cuda(int index) { return new Device(Type.CUDA, index); }

    public boolean isCpu() { return type == Type.CPU; }

    public boolean isCuda() { return type == Type.CUDA; }

    /** Parses {@code cpu}, {@code cuda} (device 0) or {@code cuda:N}. */
    public static Device parse(String s) {
        String k = s.trim().toLowerCase(java.util.Locale.ROOT);
        if (k.equals("cpu")) return CPU;
        if (k.equals("cuda")) return cuda(0);
        if (k.startsWith("cuda:")) return cuda(Integer.parseInt(k.substring(5)));
        throw new IllegalArgumentException("Unknown device '" + s + "'. Use cpu, cuda or cuda:N.");
    }

    @Override
    public String toString() { return isCpu() ? "cpu" : "cuda:" + index; }
}
