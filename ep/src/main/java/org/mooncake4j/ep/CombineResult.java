package org.mooncake4j.ep;

import org.mooncake4j.core.Tensor;

/**
 * What {@link EpBuffer#combine} returns.
 *
 * @param combinedX bfloat16 {@code [numTokens, hidden]}: per token the weighted sum of its experts' outputs
 * @param event     completion of the work not left to the hook
 * @param hook      with {@code returnRecvHook}: runs the receive (the weighted sum); else null
 */
public record CombineResult(Tensor combinedX, EpEvent event, Runnable hook) {}
