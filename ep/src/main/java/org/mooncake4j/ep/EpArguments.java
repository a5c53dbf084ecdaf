package org.mooncake4j.ep;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/** Checks of dispatch and combine arguments; each failure says what, what was expected, what came and what to do. */
final class EpArguments {
    private EpArguments() {}

    /** Checks that {@code t} is on {@code device}, the device of the buffer's data path. */
    static void onDevice(String op, String name, Tensor t, Device device) {
        if (t == null) throw new IllegalArgumentException(op + ": " + name + " must not be null.");
        if (t.device().equals(device)) return;
        if (device.isCpu()) {
            throw new IllegalArgumentException(op + ": " + name + " is on " + t.device() + ", but this EpBuffer runs the CPU path"
                    + " (created without a device). Pass CPU tensors (" + name + ".to(Device.CPU)), or create the EpBuffer for the GPU"
                    + " with new EpBuffer(group, bytes, Device.cuda(n)) and pass every tensor on that device.");
        }
        throw new IllegalArgumentException(op + ": " + name + " is on " + t.device() + ", but this EpBuffer runs the CUDA path on "
                + device + ": every tensor of a call (x, topkIdx, topkWeights, activeRanks, out) must be on " + device
                + ". Move it with " + name + ".to(Device.cuda(" + device.index() + ")).");
    }

    static void tensor(String op, String name, Tensor t, DType dtype, String shapeDoc, Device device, long... shape) {
        onDevice(op, name, t, device);
        if (t.dtype() != dtype || !Arrays.equals(t.shape(), shape)) {
            throw new IllegalArgumentException(op + ": " + name + " must be " + dtype.torchName() + " " + shapeDoc + " = "
                    + Arrays.toString(shape) + ", got " + t.dtype().torchName() + " " + Arrays.toString(t.shape()) + "."
                    + (t.dtype() != dtype ? " Convert it with " + name + ".to(DType." + dtype + ")." : ""));
        }
    }

    /** The troubleshooting guide's messages: {@code activeRanks must be int.}, {@code activeRanks must be on CPU.} */
    static void activeRanks(String op, Tensor t, int numRanks, Device device) {
        if (t == null) throw new IllegalArgumentException(op + ": activeRanks must not be null: pass Tensor.ones(DType.INT32, Device.CPU, " + numRanks + ").");
        if (t.dtype() != DType.INT32) {
            throw new IllegalArgumentException("activeRanks must be int. " + op + " needs an int32 tensor of shape [numRanks] = [" + numRanks
                    + "], got " + t.dtype().torchName() + " " + Arrays.toString(t.shape()) + ". Create it with Tensor.ones(DType.INT32, Device.CPU, "
                    + numRanks + ").");
        }
        if (device.isCpu() && !t.device().isCpu()) {
            throw new IllegalArgumentException("activeRanks must be on CPU. " + op + " runs the CPU path (the EpBuffer was created without"
                    + " a device), got a tensor on " + t.device() + ". Create it with Tensor.ones(DType.INT32, Device.CPU, " + numRanks + ").");
        }
        if (!device.isCpu() && !t.device().equals(device)) {
            throw new IllegalArgumentException("activeRanks must be on " + device + ". " + op + " runs the CUDA path on " + device
                    + ", got a tensor on " + t.device() + ". Create it with Tensor.ones(DType.INT32, Device.cuda(" + device.index() + "), "
                    + numRanks + ").");
        }
        if (t.dim() != 1 || t.numel() != numRanks) {
            throw new IllegalArgumentException(op + ": activeRanks must have shape [numRanks] = [" + numRanks + "] (the group's world size),"
                    + " got " + Arrays.toString(t.shape()) + ".");
        }
    }

    static void timeout(String op, long timeoutUs) {
        if (timeoutUs < -1) {
            throw new IllegalArgumentException(op + ": timeoutUs must be -1 (no timeout detection) or >= 0 microseconds, got " + timeoutUs + ".");
        }
    }

    static void shapeParameters(String op, int maxTokensPerRank, int hidden, int numRanks, int numExperts) {
        if (maxTokensPerRank <= 0) throw new IllegalArgumentException(op + ": maxTokensPerRank must be positive, got " + maxTokensPerRank + ".");
        if (hidden <= 0) throw new IllegalArgumentException(op + ": hidden must be positive, got " + hidden + ".");
        if (numRanks <= 0) throw new IllegalArgumentException(op + ": numRanks must be positive, got " + numRanks + ".");
        if (numExperts <= 0 || numExperts % numRanks != 0) {
            throw new IllegalArgumentException(op + ": numExperts (" + numExperts + ") must be a positive multiple of numRanks (" + numRanks
                    + "): expert e lives on rank e / (numExperts / numRanks). Choose numExperts divisible by " + numRanks + ".");
        }
    }

    /** Checks every dispatch argument except the buffer size; returns {numTokens, topK}. */
    static int[] dispatch(Tensor x, Tensor topkIdx, Tensor activeRanks, int maxTokensPerRank, int numExperts, int numRanks, long timeoutUs,
                          boolean useFp8, Device device) {
        String op = "dispatch";
        onDevice(op, "x", x, device);
        if (x.dtype() != DType.BFLOAT16 || x.dim() != 2) {
            throw new IllegalArgumentException(op + ": x must be bfloat16 [numTokens, hidden], got " + x.dtype().torchName() + " "
                    + Arrays.toString(x.shape()) + "." + (x.dtype() != DType.BFLOAT16 ? " Convert it with x.to(DType.BFLOAT16)." : ""));
        }
        long numTokens = x.size(0), hidden = x.size(1);
        onDevice(op, "topkIdx", topkIdx, device);
        if (topkIdx.dtype() != DType.INT64 || topkIdx.dim() != 2 || topkIdx.size(0) != numTokens || topkIdx.size(1) <= 0) {
            throw new IllegalArgumentException(op + ": topkIdx must be int64 [numTokens, topK] with numTokens = " + numTokens
                    + " (x's first dimension) and topK >= 1, got " + topkIdx.dtype().torchName() + " " + Arrays.toString(topkIdx.shape()) + ".");
        }
        activeRanks(op, activeRanks, numRanks, device);
        timeout(op, timeoutUs);
        shapeParameters(op, maxTokensPerRank, (int) Math.min(hidden, Integer.MAX_VALUE), numRanks, numExperts);
        if (numTokens > maxTokensPerRank) {
            throw new IllegalArgumentException(op + ": x has " + numTokens + " tokens but maxTokensPerRank is " + maxTokensPerRank
                    + ". maxTokensPerRank must be at least the largest number of tokens any rank dispatches: raise it (and size the buffer"
                    + " with EpBuffer.sizeHint for it) or dispatch fewer tokens per call.");
        }
        if (useFp8 && hidden % EpLayout.SCALE_CHANNELS != 0) {
            throw new IllegalArgumentException(op + ": useFp8 needs hidden to be a multiple of 128 (one scale per 128 channels), got hidden = "
                    + hidden + ". Pad hidden to a multiple of 128 or pass useFp8 = false.");
        }
        int topK = (int) topkIdx.size(1);
        // Device tensors are not read back for this check: the CUDA kernels skip ids outside [0, numExperts) like -1.
        if (!device.isCpu()) return new int[] {(int) numTokens, topK};
        MemorySegment idx = topkIdx.segment();
        for (long q = 0, n = numTokens * topK; q < n; q++) {
            long e = idx.get(ValueLayout.JAVA_LONG_UNALIGNED, q * 8);
            if (e < -1 || e >= numExperts) {
                throw new IllegalArgumentException(op + ": topkIdx[" + q / topK + "][" + q % topK + "] = " + e + " is outside [0, " + numExperts
                        + ") (numExperts = " + numExperts + "). Use an expert id in [0, " + numExperts + "), or -1 to mask a selection.");
            }
        }
        return new int[] {(int) numTokens, topK};
    }
}
