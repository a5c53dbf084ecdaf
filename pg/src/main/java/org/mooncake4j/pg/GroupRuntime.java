package org.mooncake4j.pg;

import java.util.concurrent.atomic.AtomicInteger;
import org.mooncake4j.pg.collective.SharedMemory;
import org.mooncake4j.transfer.TransferEngine;
import org.mooncake4j.transfer.store.EmbeddedStoreServer;
import org.mooncake4j.transfer.store.MetadataStore;

/**
 * What the groups of one process share: the metadata store connection, the transfer engine, and the
 * embedded store server when this process hosts it. Reference-counted: the world group and each
 * subgroup hold a share; the last release closes what this process opened.
 */
final class GroupRuntime {
    private final MetadataStore store;
    private final boolean ownsStore;
    private final TransferEngine engine;
    private final EmbeddedStoreServer hostedStore;
    private final String nonce;
    private final AtomicInteger refs = new AtomicInteger(1);
    private final SharedMemory shared;

    GroupRuntime(MetadataStore store, boolean ownsStore, TransferEngine engine, EmbeddedStoreServer hostedStore, String nonce) {
        this.store = store;
        this.ownsStore = ownsStore;
        this.engine = engine;
        this.hostedStore = hostedStore;
        this.nonce = nonce;
        this.shared = new SharedMemory(engine);
    }

    /** This process's registered memory ({@code ProcessGroup.allocate}, all-reduce scratches). */
    SharedMemory shared() { return shared; }

    MetadataStore store() { return store; }

    TransferEngine engine() { return engine; }

    /** Distinguishes this process's segments from an earlier process's of the same rank. */
    String nonce() { return nonce; }

    GroupRuntime share() {
        refs.incrementAndGet();
        return this;
    }

    void release() {
        if (refs.decrementAndGet() != 0) return;
        shared.close();
        Mooncake.releaseEngine(engine);
        if (ownsStore) store.close();
        if (hostedStore != null) hostedStore.close();
    }
}
