package org.mooncake4j.cuda;

/**
 * A CUDA driver call returned an error. Carries the numeric {@code CUresult}, its C name and the
 * driver's description, and the call that failed with its arguments, e.g.
 * {@code cuMemAlloc_v2(1073741824 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory}.
 */
public class CudaException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final int code;
    private final String errorName;
    private final String errorString;
    private final String call;

    public CudaException(String call, int code, String errorName, String errorString) {
        super(call + " failed: " + errorName + " (" + code + "): " + errorString);
        this.code = code;
        this.errorName = errorName;
        this.errorString = errorString;
        this.call = call;
    }

    /** The {@code CUresult} the driver returned. */
    public int code() { return code; }

    /** The C name of the code, e.g. {@code CUDA_ERROR_OUT_OF_MEMORY}. */
    public String errorName() { return errorName; }

    /** The driver's description of the code, e.g. {@code out of memory}. */
    public String errorString() { return errorString; }

    /** The call that failed, with its arguments, e.g. {@code cuMemAlloc_v2(1073741824 bytes)}. */
    public String call() { return call; }

    /** True when the driver returned {@code result}. */
    public boolean is(CuResult result) { return code == result.code(); }
}
