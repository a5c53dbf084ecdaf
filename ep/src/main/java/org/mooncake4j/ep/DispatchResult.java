package org.mooncake4j.ep;

import org.mooncake4j.core.Tensor;

/**
 * What {@link EpBuffer#dispatch} returns. The tensors are views into the buffer's segment, valid until
 * the next dispatch on the buffer.
 *
 * @param recvX      {@code [numLocalExperts, numRanks * maxTokensPerRank, hidden]}, bfloat16, or
 *                   float8_e4m3 with {@code useFp8}: the tokens each local expert received, packed (see
 *                   {@link EpBuffer#dispatch})
 * @param recvScales float32 {@code [numLocalExperts, numRanks * maxTokensPerRank, hidden / 128]} with
 *                   {@code useFp8}, else null
 * @param recvCount  int32 {@code [numLocalExperts]}: valid rows at the front of each expert's block
 * @param handle     what {@link EpBuffer#combine} and {@link EpBuffer#nextCombineBuffer} need; one combine
 * @param event      completion of the work not left to the hook
 * @param hook       with {@code returnRecvHook}: runs the receive; else null
 */
public record DispatchResult(Tensor recvX, Tensor recvScales, Tensor recvCount, EpHandle handle, EpEvent event, Runnable hook) {}
