package org.mooncake4j.pg.membership;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * A group's membership as stored under {@code <prefix>state}: the epoch, whether a recovery is in
 * progress, the slot count (max world size), the world size (rank ids in use), the active mask, and
 * for an epoch that began with a failure the decision about the operation in flight: its sequence
 * number within the old epoch and whether it stands as computed over the old mask ({@code commit}) or
 * is run again over the new mask ({@code redo}).
 *
 * <p>Immutable. Encoded as text so a person can read it in the store.
 */
public record GroupState(long epoch, boolean recovering, int slots, int worldSize, boolean[] mask,
                         long decidedOp, Outcome outcome) {
    public enum Outcome { NONE, COMMIT, REDO }

    public GroupState {
        mask = mask.clone();
    }

    public static GroupState initial(int slots, int worldSize, boolean[] mask) {
        return new GroupState(0, false, slots, worldSize, mask, -1, Outcome.NONE);
    }

    public boolean isActive(int rank) { return rank >= 0 && rank < mask.length && mask[rank]; }

    /** The active ranks in rank order (a new array each call). */
    public int[] members() {
        int n = 0;
        for (boolean b : mask) if (b) n++;
        int[] m = new int[n];
        for (int r = 0, i = 0; r < mask.length; r++) if (mask[r]) m[i++] = r;
        return m;
    }

    /**
     * Whether this state comes after {@code o} in the group's history. A group's state only moves
     * forward: within an epoch from normal to recovering, then to the next epoch.
     */
    public boolean isAfter(GroupState o) {
        return epoch > o.epoch || epoch == o.epoch && recovering && !o.recovering;
    }

    public GroupState beginRecovery() {
        return new GroupState(epoch, true, slots, worldSize, mask, decidedOp, outcome);
    }

    /** The same epoch and mask with another world size (reserved slots extended). */
    public GroupState withWorldSize(int w) {
        return new GroupState(epoch, recovering, slots, w, mask, decidedOp, outcome);
    }

    /** The next epoch with {@code newMask}; {@code op}/{@code o} decide the operation in flight. */
    public GroupState next(boolean[] newMask, int newWorld, long op, Outcome o) {
        return new GroupState(epoch + 1, false, slots, newWorld, newMask, op, o);
    }

    public byte[] encode() {
        StringBuilder m = new StringBuilder();
        for (boolean b : mask) m.append(b ? '1' : '0');
        return ("epoch=" + epoch + " status=" + (recovering ? "recovering" : "normal") + " slots=" + slots + " world=" + worldSize
                + " mask=" + m + " op=" + decidedOp + " outcome=" + outcome.name().toLowerCase(java.util.Locale.ROOT))
                .getBytes(StandardCharsets.UTF_8);
    }

    public static GroupState decode(byte[] bytes) {
        long epoch = 0, op = -1;
        boolean rec = false;
        int slots = 0, world = 0;
        boolean[] mask = new boolean[0];
        Outcome o = Outcome.NONE;
        for (String part : new String(bytes, StandardCharsets.UTF_8).trim().split(" ")) {
            int eq = part.indexOf('=');
            if (eq < 0) continue;
            String k = part.substring(0, eq), v = part.substring(eq + 1);
            switch (k) {
                case "epoch" -> epoch = Long.parseLong(v);
                case "status" -> rec = v.equals("recovering");
                case "slots" -> slots = Integer.parseInt(v);
                case "world" -> world = Integer.parseInt(v);
                case "mask" -> {
                    mask = new boolean[v.length()];
                    for (int i = 0; i < v.length(); i++) mask[i] = v.charAt(i) == '1';
                }
                case "op" -> op = Long.parseLong(v);
                case "outcome" -> o = Outcome.valueOf(v.toUpperCase(java.util.Locale.ROOT));
                default -> { }
            }
        }
        return new GroupState(epoch, rec, slots, world, mask, op, o);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof GroupState g && Arrays.equals(encode(), g.encode());
    }

    @Override
    public int hashCode() { return Arrays.hashCode(encode()); }

    @Override
    public String toString() { return new String(encode(), StandardCharsets.UTF_8); }
}
