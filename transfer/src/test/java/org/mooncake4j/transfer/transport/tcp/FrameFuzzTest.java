package org.mooncake4j.transfer.transport.tcp;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.BufferPoolMXBean;
import java.lang.management.ManagementFactory;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.LocalSegment;
import org.mooncake4j.transfer.LogCapture;
import org.mooncake4j.transfer.RemoteSegment;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.TransportChoice;
import org.mooncake4j.transfer.auth.GroupToken;
import org.mooncake4j.transfer.store.InMemoryStore;

/**
 * Seeded fuzzing of the engine's frame decoder through real connections: after an authenticated
 * handshake, random headers (any opcode, segment id, offset and length, negative and huge ones
 * included), random payload lengths, truncated frames and bit-flipped valid frames; before it,
 * mutated handshakes followed by a WRITE. A model of the protocol predicts each frame's effect, and
 * after every case the test checks: the target segment holds exactly what the model says (it only
 * changes inside valid ranges), the guard segments registered around it are untouched, a bad frame
 * closed its connection with a logged error, no reader thread died of an unexpected exception, no
 * case allocated a huge buffer, and, every few hundred cases and at the end, an honest peer on its
 * own connection still writes, publishes and reads.
 *
 * <p>Every case has its own seed, printed on failure; rerun one run with
 * {@code -Dmooncake4j.fuzz.seed=<base seed>} ({@code mooncake4j.fuzz.cases} sets the count).
 */
class FrameFuzzTest {
    private static final String TOKEN = "fuzz-group-token";
    private static final long BASE_SEED = Long.getLong("mooncake4j.fuzz.seed", 0x5EEDF00DL);
    private static final int CASES = Integer.getInteger("mooncake4j.fuzz.cases", 3000);
    private static final int HANDSHAKE_CASES = Integer.getInteger("mooncake4j.fuzz.handshakeCases", 800);
    private static final int TARGET_BYTES = 8192;
    private static final int GUARD_BYTES = 4096;
    /** Payloads longer than this are not sent in full: such a frame becomes a truncated one. */
    private static final long MAX_SEND = 16 * 1024;
    /** More than this allocated during one case means a buffer was sized from a length field. */
    private static final long HUGE = 64L << 20;
    private static final long SYNC_REQUEST = 0x5C5C5C5CL;

    private final InMemoryStore store = new InMemoryStore();
    private final Arena arena = Arena.ofShared();
    private final List<Throwable> uncaught = new CopyOnWriteArrayList<>();
    private Thread.UncaughtExceptionHandler previousHandler;
    private TransferEngine engine;
    private TransferEngine honest;
    private RemoteSegment honestView;
    private Seg target;
    private Seg guardBefore;
    private Seg guardAfter;

    /** A registered segment with its id and the bytes it must hold. */
    private record Seg(LocalSegment local, int id, byte[] shadow) {
        long size() { return shadow.length; }

        boolean matches() { return local.memory().mismatch(MemorySegment.ofArray(shadow)) == -1; }
    }

    @BeforeEach
    void setUp() {
        previousHandler = Thread.getDefaultUncaughtExceptionHandler();
        Thread.setDefaultUncaughtExceptionHandler((t, e) -> uncaught.add(new AssertionError("thread " + t.getName() + " died", e)));
        engine = TransferEngine.builder().store(store).name("fuzz-engine").transport(TransportChoice.TCP).token(TOKEN).start();
        guardBefore = register("fuzz-guard-before", GUARD_BYTES, 1);
        target = register("fuzz-target", TARGET_BYTES, 2);
        guardAfter = register("fuzz-guard-after", GUARD_BYTES, 3);
        honest = TransferEngine.builder().store(store).name("fuzz-honest").transport(TransportChoice.TCP).token(TOKEN).start();
        honestView = honest.openSegment("fuzz-target", Deadline.afterMillis(5000));
    }

    @AfterEach
    void tearDown() {
        honest.close();
        engine.close();
        arena.close();
        Thread.setDefaultUncaughtExceptionHandler(previousHandler);
    }

    private Seg register(String name, int bytes, long seed) {
        LocalSegment s = engine.registerSegment(name, bytes);
        byte[] fill = new byte[bytes];
        new Random(seed).nextBytes(fill);
        MemorySegment.copy(MemorySegment.ofArray(fill), 0, s.memory(), 0, bytes);
        String d = new String(store.get(TransferEngine.SEGMENT_KEY_PREFIX + name).orElseThrow(), StandardCharsets.UTF_8);
        int id = Integer.parseInt(d.lines().filter(l -> l.startsWith("segmentId=")).findFirst().orElseThrow().substring(10));
        return new Seg(s, id, fill);
    }

    // ------------------------------------------------------------------ the model

    /** What the engine does with one frame. */
    private enum Effect { APPLY, ACK_APPLY, READ, PUBLISH, DROP, GOODBYE, ERROR }

    /** The model's prediction: the effect, the segment it touches, and how many payload bytes the engine reads. */
    private record Prediction(Effect effect, Seg seg, long consumes) {
        boolean alive() { return effect != Effect.ERROR && effect != Effect.GOODBYE; }

        boolean changesGuard(Seg target) {
            return seg != null && seg != target && (effect == Effect.APPLY || effect == Effect.ACK_APPLY || effect == Effect.PUBLISH);
        }
    }

    private Seg segment(int id) {
        if (id == target.id) return target;
        if (id == guardBefore.id) return guardBefore;
        if (id == guardAfter.id) return guardAfter;
        return null;
    }

    private static boolean outside(long size, long off, long len) {
        return !(off >= 0 && len >= 0 && off <= size && len <= size - off);
    }

    /** The protocol as documented: what the engine must do with a frame that has this header. */
    private Prediction predict(int word, int id, long off, long len) {
        int op = (word & 0xFFFFFF00) == 0x4D344A00 ? word & 0xFF : -1;
        Seg s = segment(id);
        return switch (op) {
            case Frame.WRITE -> s == null ? (len < 0 ? error() : new Prediction(Effect.DROP, null, len))
                    : outside(s.size(), off, len) ? error() : new Prediction(Effect.APPLY, s, len);
            case Frame.WRITE_ACKED -> s == null || outside(s.size(), off, len) ? error() : new Prediction(Effect.ACK_APPLY, s, len);
            case Frame.READ -> s == null || outside(s.size(), off, len) ? error() : new Prediction(Effect.READ, s, 0);
            case Frame.PUBLISH -> s == null ? new Prediction(Effect.DROP, null, 0)
                    : outside(s.size(), off, Waiter.WORD_BYTES) || (off & 7) != 0 ? error() : new Prediction(Effect.PUBLISH, s, 0);
            case Frame.GOODBYE -> new Prediction(Effect.GOODBYE, null, 0);
            default -> error();
        };
    }

    private static Prediction error() { return new Prediction(Effect.ERROR, null, 0); }

    /** An answer the engine owes, in order. */
    private record Owed(int op, long request, long length, byte[] data) {}

    /** Updates the shadow for the first {@code applied} payload bytes of a frame the engine accepted, and notes its answer. */
    private static void account(Prediction p, long off, long len, long request, byte[] payload, long applied, List<Owed> owed) {
        switch (p.effect()) {
            case APPLY, ACK_APPLY -> {
                System.arraycopy(payload, 0, p.seg().shadow(), (int) off, (int) applied);
                if (p.effect() == Effect.ACK_APPLY && applied == len) owed.add(new Owed(Frame.ACK, request, len, null));
            }
            case READ -> owed.add(new Owed(Frame.READ_DATA, request, len, Arrays.copyOfRange(p.seg().shadow(), (int) off, (int) (off + len))));
            case PUBLISH -> ByteBuffer.wrap(p.seg().shadow()).order(ByteOrder.nativeOrder()).putLong((int) off, len);
            default -> { }
        }
    }

    // ------------------------------------------------------------------ frame fuzzing

    @Test
    void framesNeverTouchMemoryOutsideValidRangesNorKillTheEngine() throws Exception {
        long start = System.nanoTime();
        int errors = 0;
        try (LogCapture log = LogCapture.start(false)) {
            for (int i = 0; i < CASES; i++) {
                long seed = BASE_SEED + i;
                int mark = log.mark();
                try {
                    if (frameCase(seed, log)) errors++;
                    if (i % 500 == 499) honestPeerWorks(new Random(seed));
                } catch (Throwable t) {
                    throw new AssertionError("fuzz case " + i + " with seed " + seed + " failed (rerun with -Dmooncake4j.fuzz.seed=" + BASE_SEED
                            + "): " + t.getMessage() + "\nengine log of the case:\n" + tail(log.since(mark)), t);
                }
            }
            honestPeerWorks(new Random(BASE_SEED));
            assertThat(log.text()).as("a frame made a reader thread fail with an unexpected exception").doesNotContain("applying a frame from");
        }
        assertThat(uncaught).as("threads that died").isEmpty();
        assertThat(honestView.alive()).as("the honest peer's connection survived every bad one").isTrue();
        System.out.printf("frame fuzz: %d cases (base seed %d), %d closed with a logged error, %d ms%n", CASES, BASE_SEED, errors,
                (System.nanoTime() - start) / 1_000_000);
        assertThat(errors).as("the fuzz reached the error paths").isGreaterThan(CASES / 4);
    }

    private static String tail(String log) { return log.length() <= 4000 ? log : "..." + log.substring(log.length() - 4000); }

    /** One connection: a few valid frames, then a fuzzed one. Returns whether it was an error case. */
    private boolean frameCase(long seed, LogCapture log) throws IOException {
        Random r = new Random(seed);
        long heap = allocatedBytes();
        long direct = directBytes();
        int mark = log.mark();
        List<Owed> owed = new ArrayList<>();
        boolean error;
        try (RawPeer p = RawPeer.authenticated(engine, TOKEN, new EngineIdentity("fuzz-peer", "case-" + seed))) {
            String from = "engine fuzz-peer at " + address(p);
            for (int k = r.nextInt(3); k > 0; k--) sendValid(p, r, owed);
            Effect outcome = switch (r.nextInt(10)) {
                case 0, 1, 2, 3 -> randomHeader(p, r, owed);
                case 4, 5, 6 -> flippedFrame(p, r, owed);
                default -> truncatedFrame(p, r);
            };
            error = outcome == Effect.ERROR;
            if (outcome == Effect.ERROR || outcome == Effect.GOODBYE) {
                assertThat(p.closedByServer()).as("the engine closed the connection after a %s", outcome).isTrue();
                String logged = log.since(mark);
                if (error) {
                    assertThat(logged).as("a logged error for the bad frame").contains("closing the connection from " + from);
                } else {
                    assertThat(logged).as("no error for a goodbye").doesNotContain("closing the connection from " + from);
                }
            } else {
                p.send(ByteBuffer.wrap(RawPeer.headerBytes(RawPeer.magic(Frame.READ), target.id, 0, 8, SYNC_REQUEST)));
                owed.add(new Owed(Frame.READ_DATA, SYNC_REQUEST, 8, Arrays.copyOf(target.shadow, 8)));
                for (Owed o : owed) {
                    RawPeer.Answer a = p.readFrame();
                    assertThat(Frame.name(a.op())).as("answer kind").isEqualTo(Frame.name(o.op()));
                    assertThat(a.request()).as("answer request id").isEqualTo(o.request());
                    assertThat(a.length()).as("answer length").isEqualTo(o.length());
                    if (o.data() != null) assertThat(a.payload()).as("READ_DATA bytes").isEqualTo(o.data());
                }
            }
        }
        assertThat(log.since(mark)).as("unexpected exception in a reader thread").doesNotContain("applying a frame from");
        assertMemory();
        assertThat(allocatedBytes() - heap).as("heap bytes allocated by one case").isLessThan(HUGE);
        assertThat(directBytes() - direct).as("direct bytes allocated by one case").isLessThan(HUGE);
        return error;
    }

    private static String address(RawPeer p) throws IOException {
        InetSocketAddress a = (InetSocketAddress) p.socket.getLocalAddress();
        return a.getAddress().getHostAddress() + ":" + a.getPort();
    }

    private void assertMemory() {
        assertThat(guardBefore.matches()).as("the guard segment before the target is untouched").isTrue();
        assertThat(guardAfter.matches()).as("the guard segment after the target is untouched").isTrue();
        if (!target.matches()) {
            long at = target.local().memory().mismatch(MemorySegment.ofArray(target.shadow));
            throw new AssertionError("the target segment differs from the model at byte " + at + ": the engine wrote outside what valid frames allow");
        }
    }

    /** A valid frame on the target; the shadow and the owed answers follow it. */
    private void sendValid(RawPeer p, Random r, List<Owed> owed) throws IOException {
        byte op = switch (r.nextInt(4)) {
            case 0 -> Frame.WRITE;
            case 1 -> Frame.WRITE_ACKED;
            case 2 -> Frame.READ;
            default -> Frame.PUBLISH;
        };
        long len = op == Frame.PUBLISH ? r.nextLong() : r.nextInt(513);
        long off = op == Frame.PUBLISH ? 8L * r.nextInt((TARGET_BYTES - Waiter.WORD_BYTES) / 8 + 1) : r.nextInt((int) (TARGET_BYTES - len) + 1);
        long req = r.nextLong();
        Prediction pr = predict(RawPeer.magic(op), target.id, off, len);
        byte[] payload = pr.consumes() > 0 ? random(r, (int) pr.consumes()) : new byte[0];
        p.send(ByteBuffer.wrap(RawPeer.headerBytes(RawPeer.magic(op), target.id, off, len, req)), ByteBuffer.wrap(payload));
        account(pr, off, len, req, payload, payload.length, owed);
    }

    private static byte[] random(Random r, int n) {
        byte[] b = new byte[n];
        r.nextBytes(b);
        return b;
    }

    private static final long[] SPECIAL = {0, 1, 7, 8, 15, 16, -1, -8, -16, Long.MIN_VALUE, Long.MAX_VALUE, Long.MAX_VALUE - 7,
            Integer.MAX_VALUE, Integer.MAX_VALUE + 1L, 0xFFFF_FFFFL, 1L << 32, 1L << 40, 1L << 62};

    private long randomOffset(Random r, long size) {
        return switch (r.nextInt(8)) {
            case 0 -> SPECIAL[r.nextInt(SPECIAL.length)];
            case 1 -> size - r.nextInt(24);
            case 2 -> size + r.nextInt(24);
            case 3 -> r.nextLong();
            case 4 -> -r.nextInt(4096);
            default -> r.nextInt((int) size + 1);
        };
    }

    private long randomLength(Random r, long size, long off) {
        return switch (r.nextInt(9)) {
            case 0 -> SPECIAL[r.nextInt(SPECIAL.length)];
            case 1 -> size - off + r.nextInt(3) - 1;
            case 2 -> r.nextLong();
            case 3 -> -1 - r.nextInt(1 << 20);
            case 4 -> size + r.nextInt(1 << 16);
            case 5 -> r.nextInt(17);
            default -> r.nextInt((int) size + 1);
        };
    }

    private int randomSegmentId(Random r) {
        return switch (r.nextInt(10)) {
            case 0 -> guardBefore.id;
            case 1 -> guardAfter.id;
            case 2 -> target.id + (1 << 16); // a stale generation of the target's slot
            case 3 -> r.nextInt();
            case 4 -> (int) SPECIAL[r.nextInt(SPECIAL.length)];
            default -> target.id;
        };
    }

    private static int randomWord(Random r) {
        int k = r.nextInt(20);
        if (k == 0) return r.nextInt();
        if (k == 1) return RawPeer.magic(r.nextInt(256));
        if (k == 2) return RawPeer.magic(Frame.GOODBYE);
        if (k == 3) return RawPeer.magic(new int[] {Frame.HELLO, Frame.PROBE, Frame.ACK, Frame.READ_DATA, Frame.CHALLENGE, Frame.REFUSED, 0}[r.nextInt(7)]);
        return RawPeer.magic(new byte[] {Frame.WRITE, Frame.WRITE_ACKED, Frame.READ, Frame.PUBLISH}[r.nextInt(4)]);
    }

    /** A header of random fields. */
    private Effect randomHeader(RawPeer p, Random r, List<Owed> owed) throws IOException {
        for (int attempt = 0; ; attempt++) {
            int word = randomWord(r);
            int id = randomSegmentId(r);
            Seg s = segment(id);
            long size = s == null ? TARGET_BYTES : s.size();
            long off = randomOffset(r, size);
            long len = randomLength(r, size, off);
            Prediction pr = predict(word, id, off, len);
            if (pr.changesGuard(target) && attempt < 20) continue; // the guards must stay untouched: only reads may name them
            if (pr.changesGuard(target)) return sendAndFollow(p, r, owed, RawPeer.magic(Frame.READ), guardBefore.id, 0, 16, r.nextLong());
            return sendAndFollow(p, r, owed, word, id, off, len, r.nextLong());
        }
    }

    /** A valid frame on the target with one to three bits of its header flipped. */
    private Effect flippedFrame(RawPeer p, Random r, List<Owed> owed) throws IOException {
        byte op = new byte[] {Frame.WRITE, Frame.WRITE_ACKED, Frame.READ, Frame.PUBLISH}[r.nextInt(4)];
        long len = op == Frame.PUBLISH ? r.nextLong() : r.nextInt(1025);
        long off = op == Frame.PUBLISH ? 8L * r.nextInt((TARGET_BYTES - Waiter.WORD_BYTES) / 8 + 1) : r.nextInt((int) (TARGET_BYTES - len) + 1);
        for (int attempt = 0; ; attempt++) {
            ByteBuffer h = ByteBuffer.wrap(RawPeer.headerBytes(RawPeer.magic(op), target.id, off, len, r.nextLong())).order(ByteOrder.LITTLE_ENDIAN);
            for (int f = 1 + r.nextInt(3); f > 0; f--) {
                int bit = r.nextInt(Frame.HEADER_BYTES * 8);
                h.put(bit / 8, (byte) (h.get(bit / 8) ^ (1 << (bit % 8))));
            }
            int word = h.getInt(0), id = h.getInt(4);
            long o = h.getLong(8), l = h.getLong(16), req = h.getLong(24);
            if (predict(word, id, o, l).changesGuard(target) && attempt < 20) continue;
            if (predict(word, id, o, l).changesGuard(target)) return sendAndFollow(p, r, owed, RawPeer.magic(Frame.READ), target.id, 0, 0, req);
            return sendAndFollow(p, r, owed, word, id, o, l, req);
        }
    }

    /**
     * Sends a header and what follows it: the payload the engine will read (all of it, or, at
     * random, less or more and then the end of the stream, which truncates a frame). Returns the
     * outcome the connection must have.
     */
    private Effect sendAndFollow(RawPeer p, Random r, List<Owed> owed, int word, int id, long off, long len, long req) throws IOException {
        Prediction pr = predict(word, id, off, len);
        ByteBuffer header = ByteBuffer.wrap(RawPeer.headerBytes(word, id, off, len, req));
        if (!pr.alive()) {
            sendQuietly(p, header, ByteBuffer.wrap(random(r, r.nextInt(65))));
            return pr.effect();
        }
        long need = pr.consumes();
        int shape = r.nextInt(4);
        if (need > MAX_SEND || (shape == 0 && need > 0)) {
            // less than the length field promises, then the end of the stream: a truncated payload
            int sent = (int) Math.min(need - 1, r.nextInt(1025));
            byte[] payload = random(r, sent);
            sendQuietly(p, header, ByteBuffer.wrap(payload));
            p.shutdownOutput();
            account(pr, off, len, req, payload, sent, owed);
            return Effect.ERROR;
        }
        byte[] payload = random(r, (int) need);
        if (shape == 1) {
            // more than the length field says: the extra bytes start a header the stream then cuts short
            sendQuietly(p, header, ByteBuffer.wrap(payload), ByteBuffer.wrap(random(r, 1 + r.nextInt(Frame.HEADER_BYTES - 1))));
            p.shutdownOutput();
            account(pr, off, len, req, payload, payload.length, owed);
            return Effect.ERROR;
        }
        p.send(header, ByteBuffer.wrap(payload));
        account(pr, off, len, req, payload, payload.length, owed);
        return pr.effect();
    }

    /** A valid frame cut short by the end of the stream, inside its header or its payload. */
    private Effect truncatedFrame(RawPeer p, Random r) throws IOException {
        byte op = new byte[] {Frame.WRITE, Frame.WRITE_ACKED, Frame.READ, Frame.PUBLISH}[r.nextInt(4)];
        long len = op == Frame.PUBLISH ? r.nextLong() : r.nextInt(2049);
        long off = op == Frame.PUBLISH ? 8L * r.nextInt((TARGET_BYTES - Waiter.WORD_BYTES) / 8 + 1) : r.nextInt((int) (TARGET_BYTES - len) + 1);
        Prediction pr = predict(RawPeer.magic(op), target.id, off, len);
        byte[] payload = random(r, (int) pr.consumes());
        int total = Frame.HEADER_BYTES + payload.length;
        int cut = 1 + r.nextInt(total - 1);
        ByteBuffer frame = ByteBuffer.allocate(total).put(RawPeer.headerBytes(RawPeer.magic(op), target.id, off, len, 1)).put(payload).flip();
        sendQuietly(p, frame.limit(cut));
        p.shutdownOutput();
        if (cut > Frame.HEADER_BYTES) System.arraycopy(payload, 0, target.shadow, (int) off, cut - Frame.HEADER_BYTES);
        return Effect.ERROR;
    }

    /** Sends what may meet a connection the engine already closed (it stops reading at the first bad header). */
    private static void sendQuietly(RawPeer p, ByteBuffer... parts) {
        try {
            p.send(parts);
        } catch (IOException e) {
            // the engine closed first: exactly what a bad frame earns
        }
    }

    /** An honest engine, on its own long-lived connection, still writes, publishes and reads the target. */
    private void honestPeerWorks(Random r) {
        assertThat(honestView.alive()).as("the honest peer's connection is still up").isTrue();
        MemorySegment data = arena.allocate(256);
        byte[] bytes = random(r, 256);
        MemorySegment.copy(MemorySegment.ofArray(bytes), 0, data, 0, 256);
        int off = 64 + r.nextInt(TARGET_BYTES - 256 - 64 + 1);
        honestView.write(off, data, 0, 256, Deadline.afterMillis(5000));
        long value = r.nextLong();
        honestView.publish(0, value, Deadline.afterMillis(5000));
        System.arraycopy(bytes, 0, target.shadow, off, 256);
        ByteBuffer.wrap(target.shadow).order(ByteOrder.nativeOrder()).putLong(0, value);
        MemorySegment back = arena.allocate(TARGET_BYTES);
        honestView.read(0, back, 0, TARGET_BYTES, Deadline.afterMillis(5000));
        assertThat(back.mismatch(MemorySegment.ofArray(target.shadow))).as("what the honest peer reads back").isEqualTo(-1);
        assertThat(target.local().memory().get(ValueLayout.JAVA_LONG, 0)).isEqualTo(value);
        assertMemory();
    }

    // ------------------------------------------------------------------ handshake fuzzing

    @Test
    void mutatedHandshakesNeverLetAFrameThrough() throws Exception {
        int accepted = 0;
        try (LogCapture log = LogCapture.start(false)) {
            for (int i = 0; i < HANDSHAKE_CASES; i++) {
                long seed = (BASE_SEED ^ 0xABCDEFL) + i;
                int mark = log.mark();
                try {
                    if (handshakeCase(seed)) accepted++;
                } catch (Throwable t) {
                    throw new AssertionError("handshake fuzz case " + i + " with seed " + seed + " failed (rerun with -Dmooncake4j.fuzz.seed="
                            + BASE_SEED + "): " + t.getMessage() + "\nengine log of the case:\n" + tail(log.since(mark)), t);
                }
            }
            honestPeerWorks(new Random(BASE_SEED));
            assertThat(log.text()).doesNotContain("applying a frame from");
        }
        assertThat(uncaught).as("threads that died").isEmpty();
        assertThat(accepted).as("control cases that were accepted").isPositive().isLessThan(HANDSHAKE_CASES / 2);
    }

    /**
     * A HELLO (right token, wrong token or none), mutated at random, then a WRITE, then the end of
     * the stream. The WRITE lands only when the HELLO still is a valid one with the right token: a
     * flip in the ignored request field is the only harmless mutation. Returns whether it landed.
     */
    private boolean handshakeCase(long seed) throws IOException {
        Random r = new Random(seed);
        long heap = allocatedBytes();
        long direct = directBytes();
        try (RawPeer p = RawPeer.open(engine)) {
            p.readChallenge();
            assertThat(p.serverFlags).as("the engine announces that it has a token").isEqualTo(Frame.FLAG_TOKEN);
            int tokenKind = r.nextInt(5);
            String token = tokenKind == 0 ? null : tokenKind == 1 ? "not-" + TOKEN : TOKEN;
            byte[] hello = toArray(p.hello(Frame.HELLO, token, GroupToken.nonce(), new EngineIdentity("shake-peer", "case-" + seed)));
            boolean valid = TOKEN.equals(token);
            switch (r.nextInt(4)) {
                case 0 -> {
                    byte[] original = hello.clone();
                    for (int f = 1 + r.nextInt(4); f > 0; f--) {
                        int bit = r.nextInt(hello.length * 8);
                        hello[bit / 8] ^= (byte) (1 << (bit % 8));
                    }
                    for (int b = 0; b < hello.length; b++) {
                        if (hello[b] != original[b] && (b < 24 || b >= 32)) valid = false; // only the request field (bytes 24..31) is ignored
                    }
                }
                case 1 -> {
                    long len = r.nextBoolean() ? SPECIAL[r.nextInt(SPECIAL.length)] : r.nextInt(2048);
                    byte[] h = RawPeer.headerBytes(randomWord(r), r.nextBoolean() ? Frame.VERSION : r.nextInt(), r.nextInt(4), len, r.nextLong());
                    hello = ByteBuffer.allocate(h.length + hello.length).put(h).put(random(r, hello.length)).array();
                    valid = false;
                }
                case 2 -> {
                    hello = Arrays.copyOf(hello, 1 + r.nextInt(hello.length - 1));
                    valid = false;
                }
                default -> { }
            }
            int off = 64 * r.nextInt(TARGET_BYTES / 64);
            byte[] payload = random(r, 64);
            byte[] write = RawPeer.headerBytes(RawPeer.magic(Frame.WRITE), target.id, off, payload.length, 0);
            sendQuietly(p, ByteBuffer.wrap(hello), ByteBuffer.wrap(write), ByteBuffer.wrap(payload));
            p.shutdownOutput();
            assertThat(p.closedByServer()).as("the engine ends the connection").isTrue();
            if (valid) System.arraycopy(payload, 0, target.shadow, off, payload.length);
            assertMemory();
            assertThat(allocatedBytes() - heap).as("heap bytes allocated by one handshake").isLessThan(HUGE);
            assertThat(directBytes() - direct).as("direct bytes allocated by one handshake").isLessThan(HUGE);
            return valid;
        }
    }

    private static byte[] toArray(ByteBuffer b) {
        byte[] a = new byte[b.remaining()];
        b.get(a);
        return a;
    }

    // ------------------------------------------------------------------ allocation meters

    private static long allocatedBytes() {
        var threads = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        return threads.getTotalThreadAllocatedBytes();
    }

    private static long directBytes() {
        for (BufferPoolMXBean b : ManagementFactory.getPlatformMXBeans(BufferPoolMXBean.class)) {
            if (b.getName().equals("direct")) return b.getTotalCapacity();
        }
        return 0;
    }
}
