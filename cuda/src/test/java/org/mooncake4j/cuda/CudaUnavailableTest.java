package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import org.junit.jupiter.api.Test;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.DeviceMemory;
import org.mooncake4j.core.Tensor;
import org.mooncake4j.cuda.internal.CudaDriver;

/** What a host without the NVIDIA driver (CI) sees: one clear message, never a link error or NPE. */
class CudaUnavailableTest {
    private static final String MESSAGE = "The NVIDIA driver library libcuda.so.1 was not found: this host has no"
            + " NVIDIA driver, so the 'mooncake' (CUDA) backend cannot run here; use backend 'mooncake-cpu' or run"
            + " on a GPU host.";

    @Test
    void messageNamesTheLibraryAndTheAlternatives() {
        assertThat(CudaDriver.MISSING_LIBRARY_MESSAGE).isEqualTo(MESSAGE);
    }

    /** More local ranks than GPUs share them round robin (8 ranks on 4 GPUs: 4-7 on 0-3); without a driver the rank is kept. */
    @Test
    void localRanksBeyondTheVisibleDevicesShareThemRoundRobin() {
        assertThat(CudaDevice.ordinalFor(2, 4)).isEqualTo(2);
        assertThat(CudaDevice.ordinalFor(5, 4)).isEqualTo(1);
        assertThat(CudaDevice.ordinalFor(7, 4)).isEqualTo(3);
        assertThat(CudaDevice.ordinalFor(3, 0)).isEqualTo(3);
        assumeFalse(CudaDriver.libraryPresent(), "this host has libcuda.so.1");
        assertThat(CudaDevice.ordinalForLocalRank(6)).isEqualTo(6);
    }

    @Test
    void deviceQueriesFailWithTheMissingDriverMessage() {
        assumeFalse(CudaDriver.libraryPresent(), "this host has libcuda.so.1");
        assertThatThrownBy(CudaDevice::count).isExactlyInstanceOf(CudaUnavailableException.class).hasMessage(MESSAGE);
        assertThatThrownBy(() -> CudaDevice.get(0)).isExactlyInstanceOf(CudaUnavailableException.class).hasMessage(MESSAGE);
        assertThatThrownBy(() -> CudaDriver.cuMemAlloc(1024)).isExactlyInstanceOf(CudaUnavailableException.class)
                .hasMessage(MESSAGE);
    }

    @Test
    void cudaTensorFailsWithTheMissingDriverMessage() {
        assumeFalse(CudaDriver.libraryPresent(), "this host has libcuda.so.1");
        assertThatThrownBy(() -> Tensor.empty(DType.FLOAT32, Device.cuda(0), 16))
                .isExactlyInstanceOf(CudaUnavailableException.class).hasMessage(MESSAGE);
        try (Tensor host = Tensor.of(1f, 2f, 3f)) {
            assertThatThrownBy(() -> host.to(Device.cuda(0))).isExactlyInstanceOf(CudaUnavailableException.class)
                    .hasMessage(MESSAGE);
        }
    }

    @Test
    void theCudaProviderIsRegisteredForCoreTensors() {
        assertThat(DeviceMemory.find(Device.Type.CUDA)).isInstanceOf(CudaDeviceMemory.class);
    }
}
