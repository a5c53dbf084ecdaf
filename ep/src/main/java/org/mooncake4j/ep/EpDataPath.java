package org.mooncake4j.ep;

import org.mooncake4j.core.Tensor;

/**
 * The data movement of dispatch and combine, split where DeepEP splits it: a send phase that writes
 * into the peers' segments and publishes a sequence word, and a receive phase that waits for the
 * peers' words and assembles the result. {@link EpBuffer} validates, sequences and schedules the
 * phases (inline, on its background thread, or in a hook); an implementation only moves bytes.
 * {@link HostEpPath} is the CPU path; a CUDA path implements the same four methods with kernels.
 *
 * <p>Threading: the phases of one buffer are called one at a time, except that a receive hook may run
 * on the caller's thread while the next operation's send runs; an implementation keeps the two
 * phases' scratch memory apart.
 */
interface EpDataPath {
    /** One dispatch call's inputs, validated. */
    record Dispatch(EpHandle handle, Tensor x, Tensor topkIdx, Tensor activeRanks, long timeoutUs) {}

    /** One combine call's inputs, validated. */
    record Combine(EpHandle handle, long seq, Tensor x, Tensor topkIdx, Tensor topkWeights, Tensor activeRanks, long timeoutUs,
                   Tensor out, boolean[] sentTo) {}

    void dispatchSend(Dispatch op);

    void dispatchReceive(Dispatch op);

    void combineSend(Combine op);

    void combineReceive(Combine op);
}
