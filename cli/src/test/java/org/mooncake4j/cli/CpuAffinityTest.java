package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.internal.CpuAffinity;

/** The affinity calls pgbench's --cpu-bind uses, against the real kernel (Linux). */
class CpuAffinityTest {
    @Test
    void bindingTakesTheCallingThreadOnly() throws Exception {
        assumeTrue(CpuAffinity.available(), "sched_setaffinity is a Linux call");
        List<Integer> before = CpuAffinity.current();
        assertThat(before).isNotEmpty();
        int last = before.getLast();
        AtomicReference<Object> inThread = new AtomicReference<>();
        Thread t = new Thread(() -> {
            boolean bound = CpuAffinity.bindCurrentThread(last);
            List<Object> seen = new ArrayList<>(CpuAffinity.current());
            seen.addFirst(bound);
            seen.add(CpuAffinity.processCpus());
            inThread.set(seen);
        });
        t.start();
        t.join(10_000);
        assertThat(inThread.get()).as("bound, the thread's mask, and the process's CPU count seen from the bound thread")
                .isEqualTo(List.of(true, last, before.size()));
        assertThat(CpuAffinity.current()).as("the test thread's own mask").isEqualTo(before);
    }

    @Test
    void aCpuOutsideTheMaskIsRefusedAndChangesNothing() {
        assumeTrue(CpuAffinity.available(), "sched_setaffinity is a Linux call");
        List<Integer> before = CpuAffinity.current();
        assertThat(CpuAffinity.bindCurrentThread(8191)).isFalse();
        assertThat(CpuAffinity.current()).isEqualTo(before);
        assertThatThrownBy(() -> CpuAffinity.bindCurrentThread(-1)).isInstanceOf(IllegalArgumentException.class).hasMessageContaining("CPU -1");
    }
}
