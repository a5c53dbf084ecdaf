package org.mooncake4j.pg;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;
import org.mooncake4j.core.DType;
import org.mooncake4j.core.Device;
import org.mooncake4j.core.Tensor;

/** The seeds' option validation, word for word, checked before anything connects. */
class MooncakeBackendOptionsTest {

    private static int validate(String backend, MooncakeBackendOptions o, int world) {
        return ProcessGroupBuilder.validate(backend, o, world);
    }

    @Test
    void activeRanksMustBeInt32() {
        for (DType dt : new DType[] {DType.BOOL, DType.INT64, DType.FLOAT32, DType.INT8}) {
            assertThatThrownBy(() -> validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(dt, Device.CPU, 2)), 2))
                    .isInstanceOf(IllegalArgumentException.class).hasMessage("activeRanks must be int.");
        }
    }

    @Test
    void cpuBackendNeedsAHostMask() {
        Tensor onGpu = Tensor.wrapDevice(0x1000, 0, DType.INT32, 2); // never dereferenced: validation looks at the device only
        assertThatThrownBy(() -> validate("mooncake-cpu", new MooncakeBackendOptions(onGpu), 2)).hasMessage("activeRanks must be on CPU.");
    }

    @Test
    void cudaBackendNeedsADeviceMask() {
        assertThatThrownBy(() -> validate("mooncake", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 2)), 2))
                .hasMessage("activeRanks must be on GPU.");
    }

    @Test
    void maskIsSizedToMaxWorldSizeWhenSet() {
        assertThatThrownBy(() -> validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 2), false, 3), 2))
                .hasMessage("activeRanks must be sized to max_world_size when max_world_size is set");
        assertThat(validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 3), false, 3), 2)).isEqualTo(3);
        assertThat(validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 4)), 4)).isEqualTo(4);
    }

    @Test
    void otherMistakesAreNamed() {
        assertThatThrownBy(() -> validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 3)), 2))
                .hasMessageContaining("activeRanks has 3 entries but world_size is 2");
        assertThatThrownBy(() -> validate("mooncake-cpu", new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 2), false, 2), 3))
                .hasMessageContaining("max_world_size 2 is smaller than world_size 3");
        assertThatThrownBy(() -> ProcessGroup.builder().backend("nccl").rank(0).worldSize(1).init())
                .hasMessageContaining("Unknown backend 'nccl'");
        assertThatThrownBy(() -> new MooncakeBackendOptions(Tensor.ones(DType.INT32, Device.CPU, 2), false, -1))
                .hasMessageContaining("max_world_size must be >= 0");
    }
}
