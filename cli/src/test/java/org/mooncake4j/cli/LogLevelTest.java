package org.mooncake4j.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import org.junit.jupiter.api.Test;

class LogLevelTest {
    @Test
    void mooncakeLogNamesAnSlf4jLevel() {
        assertThat(Main.logLevel("DEBUG")).isEqualTo("debug");
        assertThat(Main.logLevel(" info ")).isEqualTo("info");
        assertThat(Main.logLevel("off")).isEqualTo("off");
        assertThatThrownBy(() -> Main.logLevel("verbose")).isInstanceOf(IllegalArgumentException.class)
                .hasMessage("MOONCAKE_LOG must be one of trace, debug, info, warn, error, off; got 'verbose'");
    }
}
