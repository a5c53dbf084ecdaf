package org.mooncake4j.cuda.internal;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;

/**
 * Memory layouts of the CUDA driver structs that cross the FFM boundary (x86-64 and aarch64 Linux,
 * CUDA 12/13 {@code cuda.h}), and writers that fill them. Stateless and thread-safe.
 */
public final class CuStructs {
    /** {@code CU_IPC_HANDLE_SIZE}: the size of {@code CUipcMemHandle} and {@code CUmemFabricHandle}. */
    public static final int HANDLE_SIZE = 64;

    /** {@code CUipcMemHandle { char reserved[64]; }}: passed by value to {@code cuIpcOpenMemHandle_v2}. */
    public static final StructLayout IPC_MEM_HANDLE = MemoryLayout.structLayout(
            MemoryLayout.sequenceLayout(HANDLE_SIZE, JAVA_BYTE).withName("reserved")).withName("CUipcMemHandle");

    /** {@code CUmemFabricHandle { unsigned char data[64]; }}: the handle of {@code CU_MEM_HANDLE_TYPE_FABRIC}. */
    public static final StructLayout MEM_FABRIC_HANDLE = MemoryLayout.structLayout(
            MemoryLayout.sequenceLayout(HANDLE_SIZE, JAVA_BYTE).withName("data")).withName("CUmemFabricHandle");

    /** {@code CUmemLocation { CUmemLocationType type; int id; }}. */
    public static final StructLayout MEM_LOCATION = MemoryLayout.structLayout(
            JAVA_INT.withName("type"), JAVA_INT.withName("id")).withName("CUmemLocation");

    /**
     * {@code CUmemAllocationProp { CUmemAllocationType type; CUmemAllocationHandleType requestedHandleTypes;
     * CUmemLocation location; void *win32HandleMetaData; struct { unsigned char compressionType;
     * unsigned char gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags; }}.
     */
    public static final StructLayout MEM_ALLOCATION_PROP = MemoryLayout.structLayout(
            JAVA_INT.withName("type"),
            JAVA_INT.withName("requestedHandleTypes"),
            MEM_LOCATION.withName("location"),
            ADDRESS.withName("win32HandleMetaData"),
            MemoryLayout.structLayout(
                    JAVA_BYTE.withName("compressionType"),
                    JAVA_BYTE.withName("gpuDirectRDMACapable"),
                    JAVA_SHORT.withName("usage"),
                    MemoryLayout.sequenceLayout(4, JAVA_BYTE).withName("reserved")).withName("allocFlags"))
            .withName("CUmemAllocationProp");

    /** {@code CUmemAccessDesc { CUmemLocation location; CUmemAccess_flags flags; }}. */
    public static final StructLayout MEM_ACCESS_DESC = MemoryLayout.structLayout(
            MEM_LOCATION.withName("location"), JAVA_INT.withName("flags")).withName("CUmemAccessDesc");

    public static final int CU_MEM_ALLOCATION_TYPE_PINNED = 0x1;
    public static final int CU_MEM_LOCATION_TYPE_DEVICE = 0x1;
    public static final int CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3;

    private static final long PROP_TYPE = MEM_ALLOCATION_PROP.byteOffset(groupElement("type"));
    private static final long PROP_HANDLE_TYPES = MEM_ALLOCATION_PROP.byteOffset(groupElement("requestedHandleTypes"));
    private static final long PROP_LOCATION_TYPE =
            MEM_ALLOCATION_PROP.byteOffset(groupElement("location"), groupElement("type"));
    private static final long PROP_LOCATION_ID =
            MEM_ALLOCATION_PROP.byteOffset(groupElement("location"), groupElement("id"));
    private static final long ACCESS_LOCATION_TYPE =
            MEM_ACCESS_DESC.byteOffset(groupElement("location"), groupElement("type"));
    private static final long ACCESS_LOCATION_ID =
            MEM_ACCESS_DESC.byteOffset(groupElement("location"), groupElement("id"));
    private static final long ACCESS_FLAGS = MEM_ACCESS_DESC.byteOffset(groupElement("flags"));

    private CuStructs() {}

    /**
     * A zeroed {@code CUmemAllocationProp} for pinned device memory on {@code device} (a {@code CUdevice})
     * that can be exported as {@code handleTypes} (a {@code CUmemAllocationHandleType} bit set).
     */
    public static MemorySegment allocationProp(Arena arena, int device, int handleTypes) {
        MemorySegment p = arena.allocate(MEM_ALLOCATION_PROP);
        p.set(JAVA_INT, PROP_TYPE, CU_MEM_ALLOCATION_TYPE_PINNED);
        p.set(JAVA_INT, PROP_HANDLE_TYPES, handleTypes);
        p.set(JAVA_INT, PROP_LOCATION_TYPE, CU_MEM_LOCATION_TYPE_DEVICE);
        p.set(JAVA_INT, PROP_LOCATION_ID, device);
        return p;
    }

    /** An array of {@code CUmemAccessDesc} granting read-write access to each of {@code devices}. */
    public static MemorySegment readWriteAccess(Arena arena, int[] devices) {
        MemorySegment a = arena.allocate(MEM_ACCESS_DESC, devices.length);
        for (int i = 0; i < devices.length; i++) {
            long base = i * MEM_ACCESS_DESC.byteSize();
            a.set(JAVA_INT, base + ACCESS_LOCATION_TYPE, CU_MEM_LOCATION_TYPE_DEVICE);
            a.set(JAVA_INT, base + ACCESS_LOCATION_ID, devices[i]);
            a.set(JAVA_INT, base + ACCESS_FLAGS, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
        }
        return a;
    }
}
