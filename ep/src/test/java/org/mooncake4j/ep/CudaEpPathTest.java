package org.mooncake4j.ep;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.net.URI;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.cuda.CudaModule;
import org.mooncake4j.cuda.CudaUnavailableException;
import org.mooncake4j.pg.MooncakeBackendOptions;
import org.mooncake4j.pg.ProcessGroup;

/** What of the CUDA path can be checked without a GPU: argument checks, offsets, and a clear refusal without a driver or kernels. */
class CudaEpPathTest {
    private static final Device GPU = Device.cuda(0);

    private static Tensor onGpu(DType dtype, long... shape) { return Tensor.wrapDevice(1 << 20, 0, dtype, shape); }

    @Test
    void cudaDispatchArgumentsMustAllBeOnTheBuffersDevice() {
        Tensor x = onGpu(DType.BFLOAT16, 4, 256), topk = onGpu(DType.INT64, 4, 2), active = onGpu(DType.INT32, 2);
        assertThat(EpArguments.dispatch(x, topk, active, 8, 6, 2, -1, true, GPU)).containsExactly(4, 2);
        Tensor cpuTopk = Tensor.zeros(DType.INT64, Device.CPU, 4, 2);
        assertThatThrownBy(() -> EpArguments.dispatch(x, cpuTopk, active, 8, 6, 2, -1, false, GPU))
                .hasMessageContaining("topkIdx is on cpu, but this EpBuffer runs the CUDA path on cuda:0")
                .hasMessageContaining("topkIdx.to(Device.cuda(0))");
        Tensor other = Tensor.wrapDevice(1 << 20, 1, DType.BFLOAT16, 4, 256);
        assertThatThrownBy(() -> EpArguments.dispatch(other, topk, active, 8, 6, 2, -1, false, GPU)).hasMessageContaining("x is on cuda:1");
        assertThatThrownBy(() -> EpArguments.dispatch(x, topk, Tensor.ones(DType.INT32, Device.CPU, 2), 8, 6, 2, -1, false, GPU))
                .hasMessageContaining("activeRanks must be on cuda:0.");
        assertThatThrownBy(() -> EpArguments.dispatch(x, topk, onGpu(DType.INT64, 2), 8, 6, 2, -1, false, GPU))
                .hasMessageContaining("activeRanks must be int.");
        assertThatThrownBy(() -> EpArguments.dispatch(x, topk, active, 3, 6, 2, -1, false, GPU)).hasMessageContaining("x has 4 tokens");
        assertThatThrownBy(() -> EpArguments.dispatch(onGpu(DType.BFLOAT16, 4, 100), topk, active, 8, 6, 2, -1, true, GPU))
                .hasMessageContaining("useFp8 needs hidden to be a multiple of 128");
        // a CPU buffer given device tensors says how to get the CUDA path
        assertThatThrownBy(() -> EpArguments.dispatch(x, topk, active, 8, 6, 2, -1, false, Device.CPU))
                .hasMessageContaining("x is on cuda:0, but this EpBuffer runs the CPU path")
                .hasMessageContaining("new EpBuffer(group, bytes, Device.cuda(n))");
        assertThatThrownBy(() -> EpArguments.tensor("combine", "out", Tensor.zeros(DType.BFLOAT16, Device.CPU, 4, 256), DType.BFLOAT16, "[numTokens, hidden]",
                GPU, 4, 256)).hasMessageContaining("out is on cpu, but this EpBuffer runs the CUDA path on cuda:0");
    }

    @Test
    void waitBoundsStatusSlotsAndScratchOffsets() {
        assertThat(CudaEpPath.waitNanos(1_000_000, Duration.ofSeconds(30))).isEqualTo(1_000_000_000L);
        assertThat(CudaEpPath.waitNanos(-1, Duration.ofSeconds(30))).isEqualTo(30_000_000_000L);
        assertThat(CudaEpPath.waitNanos(0, Duration.ofSeconds(30))).isZero();
        assertThat(CudaEpPath.statusOffset(0, 1)).isEqualTo(64 + 16);
        assertThat(CudaEpPath.statusOffset(1, 1)).isEqualTo(64 + 16L * (CudaEpPath.STATUS_SLOTS + 1));
        assertThat(CudaEpPath.statusOffset(0, CudaEpPath.STATUS_SLOTS + 3)).isEqualTo(CudaEpPath.statusOffset(0, 3));
        assertThat(CudaEpPath.ranksOf(0b1010)).containsExactly(1, 3);
        long message = EpLayout.of(128, 7168, 8, 288).messageBytes();
        CudaEpPath.Scratch s = CudaEpPath.Scratch.of(8, 288, 128, message, 8);
        long[] starts = {s.counters(), s.decisions(), s.sendCount(), s.sentTo(), s.used(), s.rowSrcToken(), s.slotRows(), s.messages(), s.bytes()};
        long[] sizes = {36, 16, 4L * 288, 2 * 4L * 8, 4L * 288, 4L * 288 * 128, 8L * 8 * 128 * 8, message * 128};
        assertThat(s.late()).as("the late-source word after the four block counters").isEqualTo(s.counters() + 32);
        assertThat(CudaEpPath.statusOffset(2, 1) + 16).as("three kinds of status slots")
                .isLessThanOrEqualTo(64 + 16L * CudaEpPath.STATUS_KINDS * CudaEpPath.STATUS_SLOTS);
        for (int i = 0; i < sizes.length; i++) {
            assertThat(starts[i] % 64).as("region %d aligned", i).isZero();
            assertThat(starts[i + 1] - starts[i]).as("region %d size", i).isGreaterThanOrEqualTo(sizes[i]);
        }
    }

    /**
     * The reduced combine keeps every source's {expert, weight} table (M * topK entries of 8 bytes) in
     * combineRecv behind the R * M partial rows; it is used where that fits, with aligned expert outputs,
     * hidden a multiple of 8 and top-k up to 32, and the partial rows and tables stay inside combineRecv.
     */
    @Test
    void theReducedCombineIsUsedWhereItsTablesFitBehindThePartialRows() {
        EpLayout lay = EpLayout.of(128, 7168, 4, 288);
        assertThat(CudaEpPath.reducedCombine(lay, 8, 1L << 20)).isTrue();
        assertThat(CudaEpPath.reducedCombine(lay, 8, (1L << 20) + 8)).as("x not 16-byte aligned").isFalse();
        assertThat(CudaEpPath.reducedCombine(lay, 33, 1L << 20)).as("top-33").isFalse();
        assertThat(CudaEpPath.reducedCombine(EpLayout.of(128, 7168, 4, 4), 8, 1L << 20)).as("one expert per rank: no room for the tables").isFalse();
        assertThat(CudaEpPath.reducedCombine(EpLayout.of(8, 100, 2, 8), 2, 1L << 20)).as("hidden 100").isFalse();
        long tables = CudaEpPath.reducedTable(lay);
        assertThat(tables - lay.combineRecv()).isEqualTo(2L * 4 * 128 * 7168);
        assertThat(tables + 4L * 128 * 8 * 8).isLessThanOrEqualTo(lay.totalBytes());
        // about one (source, token, part) task per warp: 132 SMs x 2 blocks x 16 warps
        assertThat(CudaEpPath.reducedParts(4224, 4, 128)).isEqualTo(8);
        assertThat(CudaEpPath.reducedParts(4224, 2, 128)).isEqualTo(16);
        assertThat(CudaEpPath.reducedParts(4224, 8, 1024)).isEqualTo(1);
        assertThat(CudaEpPath.reducedParts(4224, 1, 8)).as("at most 16").isEqualTo(16);
        // the room exactly filled: R (2H + 8K) = 2 E H with R = 2, E = 4, H = 64 at K = 16
        EpLayout tight = EpLayout.of(4, 64, 2, 4);
        assertThat(CudaEpPath.reducedCombine(tight, 16, 0)).isTrue();
        assertThat(CudaEpPath.reducedCombine(tight, 17, 0)).isFalse();
        assertThat(CudaEpPath.reducedTable(tight) + 8L * 2 * 4 * 16).isEqualTo(tight.combineRecv() + 2L * 4 * 4 * 64);
    }

    /** The receive kernels' row table fits a block's shared memory up to about 10000 experts, and larger counts are refused. */
    @Test
    void theRowTableOfTheReceiveKernelsFitsSharedMemoryOrIsRefused() {
        assertThat(CudaEpPath.rowTableBytes(EpLayout.of(128, 7168, 4, 288))).isEqualTo(4 * (288 + 72 + 1));
        assertThat(CudaEpPath.rowTableBytes(EpLayout.of(8, 128, 8, 8192))).isLessThanOrEqualTo(CudaEpPath.MAX_SHARED_BYTES);
        assertThatThrownBy(() -> CudaEpPath.rowTableBytes(EpLayout.of(8, 128, 2, 16384)))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("numExperts 16384 is too many for the CUDA path");
    }

    /**
     * The deduplicated dispatch keeps its header table (16 bytes per local expert and token) in block
     * (0, s) of a source's staging rows and its payload slots in block (L - 1, s): it needs two local
     * experts and a table that fits M messages; otherwise every row carries its own message.
     */
    @Test
    void theDeduplicatedDispatchIsUsedWhereItsTablesFitTheSourcesStagingRows() {
        assertThat(CudaEpPath.dedup(EpLayout.of(128, 7168, 4, 288))).isTrue();
        assertThat(CudaEpPath.dedup(EpLayout.of(128, 7168, 8, 288))).isTrue();
        assertThat(CudaEpPath.dedup(EpLayout.of(128, 7168, 4, 4))).as("one local expert").isFalse();
        EpLayout narrow = EpLayout.of(8, 128, 2, 64); // message 16 + 256 = 272 bytes: 17 local experts at most
        assertThat(narrow.messageBytes()).isEqualTo(272);
        assertThat(CudaEpPath.dedup(narrow)).as("32 local experts need 512-byte table rows").isFalse();
        assertThat(CudaEpPath.dedup(EpLayout.of(8, 128, 2, 34))).as("17 local experts").isTrue();
        // the two blocks of source s and the rows of every other source are disjoint
        EpLayout lay = EpLayout.of(128, 7168, 4, 288);
        long block = lay.maxTokens() * lay.messageBytes();
        long headers = 16L * lay.localExperts() * lay.maxTokens();
        assertThat(headers).isLessThanOrEqualTo(block);
        assertThat(lay.stagingRow(lay.localExperts() - 1, 1, 0) - lay.stagingRow(0, 1, 0)).isGreaterThanOrEqualTo(block);
    }

    /**
     * The dispatch send kernel keeps the top-k table (int16 expert ids), the message it builds and the
     * per-expert counts in shared memory when they fit the 48 KiB a block may use and the ids fit int16;
     * otherwise it reads the table from global memory (0 bytes).
     */
    @Test
    void theDispatchSendKeepsItsTopkTableInSharedMemoryWhereItFits() {
        EpLayout lay = EpLayout.of(128, 7168, 4, 288);
        long message = (lay.messageBytes() + 15) / 16 * 16;
        assertThat(CudaEpPath.sendTableBytes(128, 8, lay)).isEqualTo(2 * 128 * 8 + message + 4 * 288);
        assertThat(CudaEpPath.sendTableBytes(3, 3, lay)).as("the table is padded to 16 bytes").isEqualTo(32 + message + 4 * 288);
        EpLayout big = EpLayout.of(2048, 7168, 4, 288);
        assertThat(CudaEpPath.sendTableBytes(2048, 8, big)).as("2048 tokens x top-8 = 32 KiB of ids plus a 7.4 KiB message and counts")
                .isEqualTo(2 * 2048 * 8 + message + 4 * 288);
        assertThat(CudaEpPath.sendTableBytes(2048, 16, big)).as("64 KiB of ids do not fit").isZero();
        assertThat(CudaEpPath.sendTableBytes(8, 2, EpLayout.of(8, 128, 2, 40000))).as("expert ids past int16").isZero();
    }

    /**
     * A receive kernel starts early (programmatic dependent launch) only right after its own phase's
     * send kernel: not after the other phase's kernels, not after a mark (a hook's receive), and not
     * while profiling puts events between the kernels.
     */
    @Test
    void kernelsQueuedRightAfterTheKernelOfTheStepBeforeAreLaunchedAsDependents() {
        int send = CudaEpPath.K_DISPATCH_SEND, recv = CudaEpPath.K_DISPATCH_RECEIVE;
        int csend = CudaEpPath.K_COMBINE_SEND, crecv = CudaEpPath.K_COMBINE_RECEIVE;
        assertThat(CudaEpPath.dependentLaunch(send, recv, false)).isTrue();
        assertThat(CudaEpPath.dependentLaunch(csend, crecv, false)).isTrue();
        assertThat(CudaEpPath.dependentLaunch(send, recv, true)).as("profiling").isFalse();
        assertThat(CudaEpPath.dependentLaunch(-1, recv, false)).as("after a mark (hook)").isFalse();
        assertThat(CudaEpPath.dependentLaunch(csend, recv, false)).isFalse();
        assertThat(CudaEpPath.dependentLaunch(send, crecv, false)).isFalse();
        // a send after the other phase's receive is queued as a dependent too (its blocks wait for that
        // receive to finish before anything else: wait_prerequisites in ep.cu)
        assertThat(CudaEpPath.dependentLaunch(recv, csend, false)).isTrue();
        assertThat(CudaEpPath.dependentLaunch(crecv, send, false)).isTrue();
        assertThat(CudaEpPath.dependentLaunch(crecv, send, true)).as("profiling").isFalse();
        assertThat(CudaEpPath.dependentLaunch(-1, send, false)).as("after anything else").isFalse();
        assertThat(CudaEpPath.dependentLaunch(send, csend, false)).isFalse();
    }

    /** The kernels' layout assumptions: message rows, fp8 data and scales on 16-byte boundaries for hidden % 128 == 0. */
    @Test
    void theEpLayoutKeepsTheKernelsVectorAccessesAligned() {
        EpLayout lay = EpLayout.of(128, 7168, 8, 288);
        assertThat(lay.messageBytes() % 16).isZero();
        assertThat(lay.staging() % 64).isZero();
        assertThat((EpLayout.HEADER_BYTES + 7168) % 16).isZero();
        assertThat(lay.recvRow(3, 5, false) % 16).isZero();
        assertThat(lay.recvRow(3, 5, true) % 16).isZero();
        assertThat(lay.combineRecvRow(200, 17) % 16).isZero();
        assertThat(lay.combineSendRow(2, 9) % 16).isZero();
        assertThat(EpLayout.dispatchSignal(3)).isEqualTo(3 * 64);
        assertThat(EpLayout.combineSignal(8, 3)).isEqualTo(11 * 64);
    }

    /** Without an NVIDIA driver (CI) or without built kernels a CUDA EpBuffer fails at once, saying why, and frees the group for another buffer. */
    @Test
    void aCudaBufferRefusesClearlyWithoutADriverOrKernels() throws Exception {
        int port;
        try (java.net.ServerSocket free = new java.net.ServerSocket(0)) {
            port = free.getLocalPort();
        }
        {
            // rank 0 hosts the embedded store at the rendezvous address
            ProcessGroup pg = ProcessGroup.builder().backend("mooncake-cpu").rank(0).worldSize(1).rendezvous(URI.create("tcp://127.0.0.1:" + port))
                    .timeout(Duration.ofSeconds(10)).options(new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 1))).init();
            try {
                boolean available;
                try {
                    available = org.mooncake4j.cuda.CudaDevice.count() > 0 && !CudaModule.kernelArchitectures().isEmpty();
                } catch (RuntimeException | LinkageError e) {
                    available = false;
                }
                if (!available) {
                    assertThatThrownBy(() -> new EpBuffer(pg, EpBuffer.sizeHint(8, 256, 1, 4), Device.cuda(0)))
                            .isInstanceOfAny(CudaUnavailableException.class, IllegalArgumentException.class, IllegalStateException.class)
                            .satisfies(e -> assertThat(e.getMessage()).isNotBlank());
                }
                try (EpBuffer cpu = new EpBuffer(pg, EpBuffer.sizeHint(8, 256, 1, 4))) {
                    assertThat(cpu.device()).isEqualTo(Device.CPU);
                    assertThat(cpu.cudaStream()).isNull();
                }
            } finally {
                pg.close();
            }
        }
    }

    @Test
    void kernelsNotBuiltMessageSaysWhatToDo() {
        assertThat(CudaModule.KERNELS_NOT_BUILT_MESSAGE).contains("nvcc");
    }
}
