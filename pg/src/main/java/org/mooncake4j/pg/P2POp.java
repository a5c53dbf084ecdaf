package org.mooncake4j.pg;

import org.mooncake4j.core.Tensor;

/** One point-to-point operation for {@link ProcessGroup#batchIsendIrecv}: {@code dist.P2POp(op, tensor, peer, tag)}. */
public record P2POp(Kind kind, Tensor tensor, int peer, int tag) {
    public enum Kind { ISEND, IRECV }

    public P2POp(Kind kind, Tensor tensor, int peer) { this(kind, tensor, peer, 0); }

    public static P2POp isend(Tensor tensor, int peer, int tag) { return new P2POp(Kind.ISEND, tensor, peer, tag); }

    public static P2POp irecv(Tensor tensor, int peer, int tag) { return new P2POp(Kind.IRECV, tensor, peer, tag); }
}
