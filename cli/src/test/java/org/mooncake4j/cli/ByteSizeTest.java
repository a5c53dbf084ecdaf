package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.Test;

class ByteSizeTest {
    @ParameterizedTest
    @CsvSource({"8,8", "1K,1024", "1k,1024", "64M,67108864", "64MB,67108864", "2G,2147483648", "8B,8", " 16 ,16", "0,0"})
    void parsesNcclTestsSizes(String text, long bytes) {
        assertThat(ByteSize.parse(text)).isEqualTo(bytes);
    }

    @ParameterizedTest
    @ValueSource(strings = {"", "K", "12X", "1.5M", "-8", "abc", "99999999999T"})
    void rejectsWhatIsNotASizeWithAMessageSayingTheFormat(String text) {
        assertThatThrownBy(() -> ByteSize.parse(text)).isInstanceOf(IllegalArgumentException.class).hasMessageContaining(text.trim().isEmpty() ? "Empty" : text);
    }

    @Test
    void formatsWithTheLargestExactSuffix() {
        assertThat(ByteSize.format(8)).isEqualTo("8");
        assertThat(ByteSize.format(1024)).isEqualTo("1K");
        assertThat(ByteSize.format(1536)).isEqualTo("1536");
        assertThat(ByteSize.format(64L << 20)).isEqualTo("64M");
        assertThat(ByteSize.format(1L << 30)).isEqualTo("1G");
    }

    @Test
    void sweepMultipliesByTheFactorUpToTheMaximum() {
        assertThat(ByteSize.sweep(8, 64L << 20, 4)).hasSize(12).startsWith(8L, 32L, 128L).endsWith(8L << 20, 32L << 20);
        assertThat(ByteSize.sweep(8, 8, 2)).containsExactly(8L);
        assertThat(ByteSize.sweep(1, Long.MAX_VALUE, 2)).hasSize(63);
        assertThatThrownBy(() -> ByteSize.sweep(64, 8, 2)).hasMessageContaining("below the minimum");
        assertThatThrownBy(() -> ByteSize.sweep(8, 64, 1)).hasMessageContaining("step factor");
    }
}
