package org.mooncake4j.cuda.internal;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Taking over another process's descriptor, as importing a POSIX-fd cuMemCreate handle does. */
class PosixFdsTest {

    @BeforeEach
    void linuxOnly() {
        assumeTrue(System.getProperty("os.name").toLowerCase(java.util.Locale.ROOT).contains("linux"), "Linux only");
    }

    @Test
    void aDescriptorOfAProcessBecomesANewDescriptorHere() {
        int copy = PosixFds.takeFromProcess(ProcessHandle.current().pid(), 1);
        try {
            assertThat(copy).isGreaterThan(2);
        } finally {
            PosixFds.close(copy);
        }
    }

    @Test
    void aProcessThatDoesNotExistIsReportedWithErrno() {
        assertThatThrownBy(() -> PosixFds.takeFromProcess(Integer.MAX_VALUE, 1))
                .isInstanceOfSatisfying(PosixFds.ErrnoException.class, e -> {
                    assertThat(e.errno()).isEqualTo(3); // ESRCH
                    assertThat(e.notPermitted()).isFalse();
                    assertThat(e).hasMessageStartingWith("pidfd_open(pid 2147483647) failed: ").hasMessageEndingWith("(errno 3)");
                });
    }

    @Test
    void aDescriptorThatDoesNotExistIsReportedWithTheCallAndAHint() {
        assertThatThrownBy(() -> PosixFds.takeFromProcess(ProcessHandle.current().pid(), 1_000_000))
                .isInstanceOfSatisfying(PosixFds.ErrnoException.class, e -> {
                    assertThat(e.errno()).isEqualTo(9); // EBADF
                    assertThat(e).hasMessageContaining("pidfd_getfd(pid " + ProcessHandle.current().pid() + ", fd 1000000)")
                            .hasMessageContaining("ptrace permission");
                });
    }

    @Test
    void closingAClosedDescriptorFails() {
        int copy = PosixFds.takeFromProcess(ProcessHandle.current().pid(), 1);
        PosixFds.close(copy);
        assertThatThrownBy(() -> PosixFds.close(copy)).isInstanceOf(PosixFds.ErrnoException.class)
                .hasMessageContaining("close(" + copy + ") failed");
    }
}
