package org.mooncake4j.transfer;

/** Names a batch submitted with {@link TransferEngine#submit}; valid until {@link TransferEngine#await} returns. */
public record BatchId(long value) {}
