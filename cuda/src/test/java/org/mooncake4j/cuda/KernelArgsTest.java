package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import org.junit.jupiter.api.Test;

/** The void*[] that cuLaunchKernel reads: entry i points at argument i's value. */
class KernelArgsTest {

    private static MemorySegment argument(MemorySegment pointers, int i) {
        return pointers.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(8);
    }

    @Test
    void eachEntryPointsAtItsValueInTheCTypesWidth() {
        KernelArgs a = KernelArgs.begin().ptr(0x7f00_1234_5678L).u32(0xCAFEBABE).u64(-2L).f32(1.5f).f64(-0.25).i32(-7);
        assertThat(a.count()).isEqualTo(6);
        MemorySegment p = a.pointersForLaunch();
        assertThat(argument(p, 0).get(ValueLayout.JAVA_LONG, 0)).isEqualTo(0x7f00_1234_5678L);
        assertThat(argument(p, 1).get(ValueLayout.JAVA_INT, 0)).isEqualTo(0xCAFEBABE);
        assertThat(argument(p, 2).get(ValueLayout.JAVA_LONG, 0)).isEqualTo(-2L);
        assertThat(argument(p, 3).get(ValueLayout.JAVA_FLOAT, 0)).isEqualTo(1.5f);
        assertThat(argument(p, 4).get(ValueLayout.JAVA_DOUBLE, 0)).isEqualTo(-0.25);
        assertThat(argument(p, 5).get(ValueLayout.JAVA_INT, 0)).isEqualTo(-7);
    }

    @Test
    void beginReusesTheThreadsListWithoutAllocatingANewOne() {
        KernelArgs first = KernelArgs.begin().u64(1).u64(2);
        KernelArgs second = KernelArgs.begin();
        assertThat(second).isSameAs(first);
        assertThat(second.count()).isZero();
        second.u64(9);
        assertThat(argument(second.pointersForLaunch(), 0).get(ValueLayout.JAVA_LONG, 0)).isEqualTo(9);
    }

    @Test
    void argumentsBeyondTheLimitAreRefused() {
        KernelArgs a = KernelArgs.begin();
        for (int i = 0; i < KernelArgs.MAX_ARGS; i++) a.u64(i);
        assertThatThrownBy(() -> a.u32(1)).isInstanceOf(IllegalStateException.class).hasMessageContaining("at most 32");
    }

    @Test
    void anotherThreadsListCannotBeLaunched() throws ExecutionException, InterruptedException {
        KernelArgs mine = KernelArgs.begin().u64(1);
        Throwable t = CompletableFuture.supplyAsync(() -> {
            try {
                mine.pointersForLaunch();
                return null;
            } catch (IllegalStateException e) {
                return e;
            }
        }).get();
        assertThat(t).isInstanceOf(IllegalStateException.class).hasMessageContaining("KernelArgs.begin() on the launching thread");
    }
}
