package org.mooncake4j.transfer;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.URI;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.mooncake4j.core.Deadline;
import org.mooncake4j.core.internal.Waiter;
import org.mooncake4j.transfer.store.MetadataStore;
import org.mooncake4j.transfer.store.MetadataStores;

/**
 * One rank of {@link TransferEngineMultiProcessTest}: exchanges 64 MiB with the other rank through
 * the transport named by MOONCAKE_TRANSPORT, times one-way writes, then (rank 0) watches rank 1 be
 * killed. The test drives the phases through keys in the store (STORE_URI) and reads "RESULT k=v"
 * lines from stdout.
 */
public final class TransferPeerMain {
    static final long BYTES = 64L << 20;
    private static final long FLAG = BYTES;
    private static final long ACK = BYTES + 64;
    private static final int ROUNDS = 5;

    private TransferPeerMain() {}

    public static void main(String[] args) throws Exception {
        int rank = Integer.parseInt(System.getenv("RANK"));
        Deadline deadline = Deadline.afterMillis(60_000);
        try (MetadataStore store = MetadataStores.open(URI.create(System.getenv("STORE_URI")), Duration.ofSeconds(10));
             TransferEngine engine = TransferEngine.builder().store(store).name("rank" + rank).start();
             Arena arena = Arena.ofShared()) {
            LocalSegment mine = engine.registerSegment("seg" + rank, BYTES + 4096);
            RemoteSegment peer = engine.openSegment("seg" + (1 - rank), deadline);
            result("transport", peer.transport());
            MemorySegment src = arena.allocate(BYTES, 64);
            for (long i = 0; i < BYTES; i += 8) src.set(ValueLayout.JAVA_LONG, i, mix(rank, i));
            result("sent", Long.toHexString(checksum(src)));

            peer.write(0, src, 0, BYTES, deadline);
            peer.publish(FLAG, 1, deadline);
            if (!Waiter.awaitAtLeast(mine.memory(), FLAG, 1, deadline, null)) throw new IllegalStateException("no data from the peer");
            result("received", Long.toHexString(checksum(mine.memory().asSlice(0, BYTES))));

            if (rank == 0) {
                long best = Long.MAX_VALUE;
                for (int k = 1; k <= ROUNDS; k++) {
                    long t0 = System.nanoTime();
                    peer.write(0, src, 0, BYTES, deadline);
                    peer.publish(FLAG, 1 + k, deadline);
                    if (!Waiter.awaitAtLeast(mine.memory(), ACK, k, deadline, null)) throw new IllegalStateException("no ack " + k);
                    best = Math.min(best, System.nanoTime() - t0);
                }
                result("writeMBps", Long.toString(Math.round(BYTES / 1e6 / (best / 1e9))));
                watchPeerDie(engine, store, peer, arena, peer.transport().equals("tcp"));
            } else {
                for (int k = 1; k <= ROUNDS; k++) {
                    if (!Waiter.awaitAtLeast(mine.memory(), FLAG, 1 + k, deadline, null)) throw new IllegalStateException("no round " + k);
                    peer.publish(ACK, k, deadline);
                }
                store.set("rank1/idle", new byte[] {1});
                Thread.sleep(120_000);
            }
        }
    }

    /** Rank 0: a batch to the stopped peer times out (tcp); then the peer is killed and must be reported within the test's second. */
    private static void watchPeerDie(TransferEngine engine, MetadataStore store, RemoteSegment peer, Arena arena, boolean tcp) throws Exception {
        MemorySegment small = arena.allocate(4096);
        if (tcp) {
            store.set("rank0/ready-for-stop", new byte[] {1});
            store.waitFor(List.of("test/stopped"), Deadline.afterMillis(30_000));
            List<TransferStatus> st = engine.await(engine.submit(List.of(TransferRequest.write(small, 0, peer, 0, 4096))), Deadline.afterMillis(500));
            result("stoppedBatch", st.get(0).state().toString());
            store.set("rank0/batch-done", new byte[] {1});
            store.waitFor(List.of("test/continued"), Deadline.afterMillis(30_000));
            List<TransferStatus> again = engine.await(engine.submit(List.of(TransferRequest.write(small, 0, peer, 0, 4096))), Deadline.afterMillis(5000));
            result("resumedBatch", again.get(0).state().toString());
        }
        CountDownLatch failed = new CountDownLatch(1);
        engine.addPeerFailureListener((name, reason) -> {
            System.out.println("PEER_FAILED " + name + ": " + reason);
            failed.countDown();
        });
        store.set("rank0/watching", new byte[] {1});
        if (!failed.await(30, TimeUnit.SECONDS)) throw new IllegalStateException("peer failure not reported");
        result("aliveAfterKill", Boolean.toString(peer.alive()));
        try {
            peer.write(0, small, 0, 4096, Deadline.afterMillis(1000));
            result("writeAfterKill", "succeeded");
        } catch (TransferException e) {
            result("writeAfterKill", "failed");
        }
    }

    private static long mix(int rank, long i) {
        long z = (i + 1) * 0x9E3779B97F4A7C15L + rank;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        return z ^ (z >>> 31);
    }

    static long checksum(MemorySegment m) {
        long h = 0;
        for (long i = 0; i < m.byteSize(); i += 8) h = h * 31 + m.get(ValueLayout.JAVA_LONG, i);
        return h;
    }

    private static void result(String key, String value) {
        System.out.println("RESULT " + key + "=" + value);
    }
}
