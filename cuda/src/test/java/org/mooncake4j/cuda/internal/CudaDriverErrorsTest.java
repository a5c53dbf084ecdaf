package org.mooncake4j.cuda.internal;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatCode;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.mooncake4j.cuda.CuResult;
import org.mooncake4j.cuda.CudaException;

/** Every CUresult other than success becomes a CudaException naming the call, the code and the driver's words. */
class CudaDriverErrorsTest {

    @Test
    void failedCallNamesTheCallTheCodeItsNameAndDescription() {
        assertThatThrownBy(() -> CudaDriver.check(2, "cuMemAlloc_v2(%d bytes)", 1073741824L))
                .isInstanceOfSatisfying(CudaException.class, e -> {
                    assertThat(e).hasMessage("cuMemAlloc_v2(1073741824 bytes) failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory");
                    assertThat(e.code()).isEqualTo(2);
                    assertThat(e.errorName()).isEqualTo("CUDA_ERROR_OUT_OF_MEMORY");
                    assertThat(e.errorString()).isEqualTo("out of memory");
                    assertThat(e.call()).isEqualTo("cuMemAlloc_v2(1073741824 bytes)");
                    assertThat(e.is(CuResult.CUDA_ERROR_OUT_OF_MEMORY)).isTrue();
                });
    }

    @Test
    void successPassesTheChecker() {
        assertThatCode(() -> CudaDriver.check(0, "cuInit(0)")).doesNotThrowAnyException();
    }

    @Test
    void commonCodesHaveTheDriversNamesAndDescriptions() {
        assertThat(CudaDriver.errorName(1)).isEqualTo("CUDA_ERROR_INVALID_VALUE");
        assertThat(CudaDriver.errorString(1)).isEqualTo("invalid argument");
        assertThat(CudaDriver.errorName(100)).isEqualTo("CUDA_ERROR_NO_DEVICE");
        assertThat(CudaDriver.errorString(100)).isEqualTo("no CUDA-capable device is detected");
        assertThat(CudaDriver.errorName(209)).isEqualTo("CUDA_ERROR_NO_BINARY_FOR_GPU");
        assertThat(CudaDriver.errorName(700)).isEqualTo("CUDA_ERROR_ILLEGAL_ADDRESS");
        assertThat(CudaDriver.errorString(700)).isEqualTo("an illegal memory access was encountered");
        assertThat(CudaDriver.errorName(800)).isEqualTo("CUDA_ERROR_NOT_PERMITTED");
        assertThat(CudaDriver.errorString(800)).isEqualTo("operation not permitted");
        assertThat(CudaDriver.errorName(801)).isEqualTo("CUDA_ERROR_NOT_SUPPORTED");
        assertThat(CudaDriver.errorName(999)).isEqualTo("CUDA_ERROR_UNKNOWN");
    }

    @Test
    void theJavaTableHasEveryCodeOfTheCuda13HeaderOnce() {
        assertThat(CuResult.values()).hasSize(101);
        assertThat(Arrays.stream(CuResult.values()).mapToInt(CuResult::code).distinct().count()).isEqualTo(101);
        assertThat(CuResult.of(2)).isEqualTo(CuResult.CUDA_ERROR_OUT_OF_MEMORY);
        assertThat(CuResult.of(226)).isEqualTo(CuResult.CUDA_ERROR_CONTAINED);
        assertThat(CuResult.nameOf(217)).isEqualTo("CUDA_ERROR_PEER_ACCESS_UNSUPPORTED");
        assertThat(CuResult.descriptionOf(217)).isEqualTo("peer access is not supported between these two devices");
    }

    @Test
    void unknownCodesStillGiveAReadableMessage() {
        assertThat(CuResult.of(12345)).isNull();
        assertThatThrownBy(() -> CudaDriver.check(12345, "cuSomething()"))
                .isInstanceOf(CudaException.class)
                .hasMessageStartingWith("cuSomething() failed: ")
                .hasMessageContaining("(12345)");
        if (!CudaDriver.libraryPresent()) {
            assertThatThrownBy(() -> CudaDriver.check(12345, "cuSomething()"))
                    .hasMessage("cuSomething() failed: CUDA_ERROR_12345 (12345): unrecognized CUresult");
        }
    }
}
