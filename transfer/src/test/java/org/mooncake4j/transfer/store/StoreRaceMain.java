package org.mooncake4j.transfer.store;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;
import org.mooncake4j.core.Deadline;

/**
 * One process of {@link EmbeddedStoreTest#fourProcessesAddAndRaceExactly}: meets the others at a
 * store barrier, then does {@value #ADDS} adds, {@value #CAS_INCREMENTS} compare-and-set increments
 * of a shared counter, and {@value #RACES} create races, and prints what it saw as {@code RESULT}
 * lines. Reads RANK, WORLD_SIZE and STORE_URI from the environment; single-threaded.
 */
public final class StoreRaceMain {
    static final int ADDS = 200;
    static final int CAS_INCREMENTS = 50;
    static final int RACES = 50;

    private StoreRaceMain() {}

    public static void main(String[] args) {
        int rank = Integer.parseInt(System.getenv("RANK"));
        int world = Integer.parseInt(System.getenv("WORLD_SIZE"));
        try (MetadataStore store = MetadataStores.open(URI.create(System.getenv("STORE_URI")), Duration.ofSeconds(20))) {
            if (store.add("arrived", 1) == world) store.set("go", bytes("1"));
            store.waitFor(List.of("go"), Deadline.after(Duration.ofSeconds(30)));

            List<Long> adds = new ArrayList<>();
            for (int i = 0; i < ADDS; i++) {
                long v = store.add("counter", 1);
                if (!adds.isEmpty() && v <= adds.getLast()) throw new IllegalStateException("add went from " + adds.getLast() + " to " + v);
                adds.add(v);
            }
            System.out.println("RESULT adds=" + adds.stream().map(String::valueOf).collect(Collectors.joining(",")));

            int retries = 0;
            for (int i = 0; i < CAS_INCREMENTS; i++) {
                while (true) {
                    byte[] cur = store.get("cas-counter").orElse(null);
                    long next = (cur == null ? 0 : Long.parseLong(new String(cur, StandardCharsets.UTF_8))) + 1;
                    if (store.compareAndSet("cas-counter", cur, bytes(Long.toString(next)))) break;
                    retries++;
                }
            }
            System.out.println("RESULT casRetries=" + retries);

            List<Integer> wins = new ArrayList<>();
            for (int r = 0; r < RACES; r++) {
                if (store.compareAndSet("race/" + r, null, bytes(Integer.toString(rank)))) wins.add(r);
            }
            System.out.println("RESULT wins=" + wins.stream().map(String::valueOf).collect(Collectors.joining(",")));
        }
    }

    private static byte[] bytes(String s) { return s.getBytes(StandardCharsets.UTF_8); }
}
