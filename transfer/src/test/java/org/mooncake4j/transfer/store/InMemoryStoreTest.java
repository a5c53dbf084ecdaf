package org.mooncake4j.transfer.store;

/** The store contract for {@link InMemoryStore}. */
class InMemoryStoreTest extends MetadataStoreContract {
    @Override
    protected MetadataStore newStore() { return new InMemoryStore(); }
}
