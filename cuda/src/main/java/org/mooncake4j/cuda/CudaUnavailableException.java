package org.mooncake4j.cuda;

/**
 * The CUDA backend cannot run in this process at all: the NVIDIA driver library is missing, the
 * kernels were not built into this jar, or they do not cover the GPU. The message says what to do.
 */
public class CudaUnavailableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public CudaUnavailableException(String message) { super(message); }

    public CudaUnavailableException(String message, Throwable cause) { super(message, cause); }
}
