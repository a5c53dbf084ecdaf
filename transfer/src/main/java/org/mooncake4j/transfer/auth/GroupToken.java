package org.mooncake4j.transfer.auth;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The group token: a secret every process of a group shares, with which each TCP connection of the
 * transfer engine and of the embedded metadata store is authenticated by challenge-response. The
 * secret itself never crosses the wire: each side proves it holds it with an HMAC-SHA256 over a
 * role label, both sides' fresh random nonces and its identity, so an answer recorded on one
 * connection is worthless on any other, and a server's answer cannot be replayed as a client's.
 *
 * <p>Where a process takes its token: what the code passes ({@code TransferEngine.builder().token},
 * {@code ProcessGroup.builder().token}, {@code EmbeddedStoreServer.start(host, port, token)},
 * {@code EmbeddedStore.connect(host, port, timeout, token)}), else the environment variable
 * {@value #ENV}. No token (null, or the variable unset or blank) turns authentication off; a
 * connection where only one side has a token is refused, so a process that forgot it fails at once
 * instead of running unprotected.
 *
 * <p>Immutable and thread-safe. {@link #toString()} never shows the secret.
 */
public final class GroupToken {
    /** The environment variable a process takes its token from when the code passes none. */
    public static final String ENV = "MOONCAKE_TOKEN";
    /** Bytes of a challenge nonce. */
    public static final int NONCE_BYTES = 32;
    /** Bytes of an HMAC-SHA256 proof. */
    public static final int MAC_BYTES = 32;
    /** What every refusal tells the user to fix. */
    public static final String ADVICE = "Every process of the group must use the same group token (" + ENV
            + " or ProcessGroup.builder().token(...)).";

    private static final String ALGORITHM = "HmacSHA256";
    private static final SecureRandom RANDOM = new SecureRandom();

    private final SecretKeySpec key;

    private GroupToken(byte[] secret) { this.key = new SecretKeySpec(secret, ALGORITHM); }

    /**
     * The token for {@code secret}; null (authentication off) when {@code secret} is null. A blank
     * secret is refused: it is a configuration mistake, not a secret.
     */
    public static GroupToken of(String secret) {
        if (secret == null) return null;
        if (secret.isBlank()) {
            throw new IllegalArgumentException("the group token must not be blank: pass a secret shared by every process of the group,"
                    + " or null to turn authentication off");
        }
        return new GroupToken(secret.getBytes(StandardCharsets.UTF_8));
    }

    /** The token in {@value #ENV}; null (authentication off) when it is unset or blank. */
    public static GroupToken fromEnvironment() {
        String v = System.getenv(ENV);
        return v == null || v.isBlank() ? null : new GroupToken(v.getBytes(StandardCharsets.UTF_8));
    }

    /** {@code secret}'s token when {@code explicit}, else the environment's (see {@link #of} and {@link #fromEnvironment}). */
    public static GroupToken resolve(boolean explicit, String secret) {
        return explicit ? of(secret) : fromEnvironment();
    }

    /** A fresh random challenge. */
    public static byte[] nonce() {
        byte[] n = new byte[NONCE_BYTES];
        RANDOM.nextBytes(n);
        return n;
    }

    /** HMAC-SHA256 under this token of {@code label} followed by {@code parts}, in order. */
    public byte[] mac(String label, byte[]... parts) {
        try {
            Mac m = Mac.getInstance(ALGORITHM);
            m.init(key);
            m.update(label.getBytes(StandardCharsets.UTF_8));
            for (byte[] p : parts) m.update(p);
            return m.doFinal();
        } catch (GeneralSecurityException e) {
            // every Java SE runtime must provide HmacSHA256; reaching this means a broken JDK
            throw new IllegalStateException("HmacSHA256 is not available in this Java runtime: " + e, e);
        }
    }

    /** Whether {@code proof} is this token's {@link #mac} of the same input; constant-time in the proof's bytes. */
    public boolean verify(byte[] proof, String label, byte[]... parts) {
        return MessageDigest.isEqual(mac(label, parts), proof);
    }

    /** Whether {@code secret} is this token's secret (constant-time; null never is). */
    public boolean matches(String secret) {
        return secret != null && MessageDigest.isEqual(key.getEncoded(), secret.getBytes(StandardCharsets.UTF_8));
    }

    @Override
    public String toString() { return "GroupToken[secret hidden]"; }
}
