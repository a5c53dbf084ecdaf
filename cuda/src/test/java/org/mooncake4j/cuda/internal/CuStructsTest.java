package org.mooncake4j.cuda.internal;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

/** The struct layouts match cuda.h on 64-bit Linux (checked against offsetof() of CUDA 13.0's header). */
class CuStructsTest {

    @Test
    void ipcAndFabricHandlesAreSixtyFourBytes() {
        assertThat(CuStructs.IPC_MEM_HANDLE.byteSize()).isEqualTo(64);
        assertThat(CuStructs.IPC_MEM_HANDLE.byteAlignment()).isEqualTo(1);
        assertThat(CuStructs.MEM_FABRIC_HANDLE.byteSize()).isEqualTo(64);
    }

    @Test
    void allocationPropHasTheHeadersOffsets() {
        var p = CuStructs.MEM_ALLOCATION_PROP;
        assertThat(p.byteSize()).isEqualTo(32);
        assertThat(p.byteOffset(groupElement("type"))).isZero();
        assertThat(p.byteOffset(groupElement("requestedHandleTypes"))).isEqualTo(4);
        assertThat(p.byteOffset(groupElement("location"), groupElement("type"))).isEqualTo(8);
        assertThat(p.byteOffset(groupElement("location"), groupElement("id"))).isEqualTo(12);
        assertThat(p.byteOffset(groupElement("win32HandleMetaData"))).isEqualTo(16);
        assertThat(p.byteOffset(groupElement("allocFlags"), groupElement("compressionType"))).isEqualTo(24);
        assertThat(p.byteOffset(groupElement("allocFlags"), groupElement("gpuDirectRDMACapable"))).isEqualTo(25);
        assertThat(p.byteOffset(groupElement("allocFlags"), groupElement("usage"))).isEqualTo(26);
        assertThat(p.byteOffset(groupElement("allocFlags"), groupElement("reserved"))).isEqualTo(28);
    }

    @Test
    void accessDescHasTheHeadersOffsets() {
        assertThat(CuStructs.MEM_ACCESS_DESC.byteSize()).isEqualTo(12);
        assertThat(CuStructs.MEM_ACCESS_DESC.byteOffset(groupElement("location"), groupElement("id"))).isEqualTo(4);
        assertThat(CuStructs.MEM_ACCESS_DESC.byteOffset(groupElement("flags"))).isEqualTo(8);
    }

    @Test
    void allocationPropAsksForPinnedMemoryOnTheDeviceWithTheHandleType() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment p = CuStructs.allocationProp(arena, 3, CudaDriver.CU_MEM_HANDLE_TYPE_FABRIC);
            assertThat(p.get(ValueLayout.JAVA_INT, 0)).isEqualTo(1);    // CU_MEM_ALLOCATION_TYPE_PINNED
            assertThat(p.get(ValueLayout.JAVA_INT, 4)).isEqualTo(8);    // CU_MEM_HANDLE_TYPE_FABRIC
            assertThat(p.get(ValueLayout.JAVA_INT, 8)).isEqualTo(1);    // CU_MEM_LOCATION_TYPE_DEVICE
            assertThat(p.get(ValueLayout.JAVA_INT, 12)).isEqualTo(3);
            assertThat(p.asSlice(16).toArray(ValueLayout.JAVA_BYTE)).containsOnly((byte) 0);
        }
    }

    @Test
    void accessDescriptorsGrantReadWritePerDevice() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment a = CuStructs.readWriteAccess(arena, new int[] {0, 2});
            assertThat(a.byteSize()).isEqualTo(24);
            assertThat(a.toArray(ValueLayout.JAVA_INT)).containsExactly(1, 0, 3, 1, 2, 3);
        }
    }
}
