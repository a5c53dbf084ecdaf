package org.mooncake4j.cuda;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/** The handles processes exchange to map each other's device memory. */
class HandlesTest {

    @Test
    void ipcHandleIsTheSixtyFourDriverBytes() {
        byte[] raw = new byte[64];
        new SplittableRandom(1).nextBytes(raw);
        IpcMemHandle h = IpcMemHandle.of(raw);
        assertThat(h.bytes()).isEqualTo(raw).isNotSameAs(raw);
        assertThat(h).isEqualTo(IpcMemHandle.of(raw.clone())).hasSameHashCodeAs(IpcMemHandle.of(raw.clone()));
        assertThatThrownBy(() -> IpcMemHandle.of(new byte[63])).isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("64 bytes");
    }

    @Test
    void posixFdHandleSurvivesItsByteForm() {
        ShareableHandle h = ShareableHandle.posixFd(1000, 2 << 20, 4242, 37);
        byte[] bytes = h.toBytes();
        assertThat(bytes).hasSize(ShareableHandle.BYTES);
        ShareableHandle back = ShareableHandle.fromBytes(bytes);
        assertThat(back).isEqualTo(h);
        assertThat(back.type()).isEqualTo(ShareableHandleType.POSIX_FILE_DESCRIPTOR);
        assertThat(back.size()).isEqualTo(1000);
        assertThat(back.mappedSize()).isEqualTo(2 << 20);
        assertThat(back.ownerPid()).isEqualTo(4242);
        assertThat(back.fd()).isEqualTo(37);
    }

    @Test
    void fabricHandleSurvivesItsByteForm() {
        byte[] fabric = new byte[64];
        new SplittableRandom(2).nextBytes(fabric);
        ShareableHandle h = ShareableHandle.fabric(3 << 20, 4 << 20, 77, fabric);
        ShareableHandle back = ShareableHandle.fromBytes(h.toBytes());
        assertThat(back).isEqualTo(h);
        assertThat(back.type()).isEqualTo(ShareableHandleType.FABRIC);
        assertThat(back.fabricHandle()).isEqualTo(fabric);
        assertThat(back.fd()).isEqualTo(-1);
    }

    @Test
    void foreignBytesAreRefused() {
        assertThatThrownBy(() -> ShareableHandle.fromBytes(new byte[ShareableHandle.BYTES]))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("bad magic");
        assertThatThrownBy(() -> ShareableHandle.fromBytes(new byte[10]))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining(ShareableHandle.BYTES + " bytes");
    }

    @Test
    void handleTypesAreTheDriverValues() {
        assertThat(ShareableHandleType.POSIX_FILE_DESCRIPTOR.cuValue()).isEqualTo(0x1);
        assertThat(ShareableHandleType.FABRIC.cuValue()).isEqualTo(0x8);
    }
}
