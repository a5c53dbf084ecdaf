package org.mooncake4j.pg.membership;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.time.Duration;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.internal.Waiter;

class SuspectGraceTest {
    @AfterEach
    void clear() { System.clearProperty("mooncake4j.suspectGraceMs"); }

    @Test
    void defaultDependsOnWhetherEveryLocalRankHasSpareCores() {
        long g = FailureAgreement.suspectGraceNanos(Duration.ofMillis(1000));
        if (Waiter.spareCores()) {
            assertThat(g).isEqualTo(50_000_000L);
            assertThat(FailureAgreement.suspectGraceNanos(Duration.ofMillis(100))).isEqualTo(25_000_000L); // never past a quarter of the timeout
        } else {
            assertThat(g).isEqualTo(250_000_000L);
            assertThat(FailureAgreement.suspectGraceNanos(Duration.ofMillis(2000))).isEqualTo(500_000_000L);
            assertThat(FailureAgreement.suspectGraceNanos(Duration.ofSeconds(60))).isEqualTo(2_000_000_000L);
        }
    }

    @Test
    void theSettingOverridesTheDefault() {
        System.setProperty("mooncake4j.suspectGraceMs", "120");
        assertThat(FailureAgreement.suspectGraceNanos(Duration.ofMillis(1000))).isEqualTo(120_000_000L);
        System.setProperty("mooncake4j.suspectGraceMs", "0");
        assertThat(FailureAgreement.suspectGraceNanos(Duration.ofMillis(1000))).isZero();
    }

    @Test
    void aBadSettingSaysWhatIsExpected() {
        System.setProperty("mooncake4j.suspectGraceMs", "fast");
        assertThatThrownBy(() -> FailureAgreement.suspectGraceNanos(Duration.ofMillis(1000)))
                .isInstanceOf(IllegalArgumentException.class)
                .hasMessageContaining("MOONCAKE_SUSPECT_GRACE_MS must be a whole number of milliseconds >= 0, got 'fast'");
        System.setProperty("mooncake4j.suspectGraceMs", "-5");
        assertThatThrownBy(() -> FailureAgreement.suspectGraceNanos(Duration.ofMillis(1000))).hasMessageContaining("got '-5'");
    }
}
