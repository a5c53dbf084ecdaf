package org.mooncake4j.pg;

import org.mooncake4j.core.Tensor;

/**
 * {@code pg.MooncakeBackendOptions(active_ranks[, is_extension[, max_world_size]])}.
 *
 * @param activeRanks  int32 rank-health mask, on the CPU for {@code mooncake-cpu} and on the GPU for
 *                     {@code mooncake}; sized to {@code maxWorldSize} when that is set. The backend
 *                     updates it in place when ranks are dropped or recovered.
 * @param isExtension  true for a replacement or joining process that enters a running group through
 *                     {@link ProcessGroup#joinGroup()}
 * @param maxWorldSize reserved rank slots; 0 when not set (then it equals the world size)
 */
public record MooncakeBackendOptions(Tensor activeRanks, boolean isExtension, int maxWorldSize) {
    public MooncakeBackendOptions(Tensor activeRanks) { this(activeRanks, false, 0); }

    public MooncakeBackendOptions(Tensor activeRanks, boolean isExtension) { this(activeRanks, isExtension, 0); }

    public MooncakeBackendOptions {
        if (maxWorldSize < 0) throw new IllegalArgumentException("max_world_size must be >= 0, got " + maxWorldSize);
    }

    public boolean hasMaxWorldSize() { return maxWorldSize > 0; }
}
