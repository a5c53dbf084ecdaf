package org.mooncake4j.core;

/**
 * Element types. {@link #byteSize()} is the storage width; {@link #isFloatingPoint()} and
 * {@link #isInteger()} decide which reductions apply (bitwise reductions are integer-only).
 */
public enum DType {
    BOOL(1, false, false),
    UINT8(1, true, false),
    INT8(1, true, false),
    INT16(2, true, false),
    INT32(4, true, false),
    INT64(8, true, false),
    FLOAT16(2, false, true),
    BFLOAT16(2, false, true),
    FLOAT32(4, false, true),
    FLOAT64(8, false, true),
    FLOAT8_E4M3(1, false, true);

    private final int byteSize;
    private final boolean integer;
    private final boolean floatingPoint;

    DType(int byteSize, boolean integer, boolean floatingPoint) {
        this.byteSize = byteSize;
        this.integer = integer;
        this.floatingPoint = floatingPoint;
    }

    public int byteSize() { return byteSize; }

    /** True for the signed and unsigned integer types (not {@link #BOOL}). */
    public boolean isInteger() { return integer; }

    public boolean isFloatingPoint() { return floatingPoint; }

    /** The name users of torch know: {@code torch.bfloat16} is {@code bfloat16}. */
    public String torchName() {
        return switch (this) {
            case FLOAT8_E4M3 -> "float8_e4m3fn";
            default -> name().toLowerCase(java.util.Locale.ROOT);
        };
    }

    /** Parses {@code float32}, {@code FLOAT32}, {@code fp32}, {@code bf16}, {@code int}... */
    public static DType parse(String s) {
        String k = s.trim().toLowerCase(java.util.Locale.ROOT);
        return switch (k) {
            case "bool" -> BOOL;
            case "uint8", "u8" -> UINT8;
            case "int8", "i8" -> INT8;
            case "int16", "i16", "short" -> INT16;
            case "int32", "i32", "int" -> INT32;
            case "int64", "i64", "long" -> INT64;
            case "float16", "fp16", "half" -> FLOAT16;
            case "bfloat16", "bf16" -> BFLOAT16;
            case "float32", "fp32", "float" -> FLOAT32;
            case "float64", "fp64", "double" -> FLOAT64;
            case "float8_e4m3", "float8_e4m3fn", "fp8", "e4m3" -> FLOAT8_E4M3;
            default -> throw new IllegalArgumentException("Unknown dtype '" + s
                    + "'. Use one of: bool, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64, float8_e4m3.");
        };
    }
}
