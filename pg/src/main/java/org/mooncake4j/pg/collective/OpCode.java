package org.mooncake4j.pg.collective;

/** Operation kinds, carried in chunk headers so ranks that disagree on the operation are told so. */
public enum OpCode {
    ALL_REDUCE("all_reduce"), BROADCAST("broadcast"), ALL_GATHER("all_gather"), REDUCE_SCATTER("reduce_scatter"),
    ALL_TO_ALL("all_to_all"), BARRIER("barrier"), REDUCE("reduce"), GATHER("gather"), SCATTER("scatter"),
    MEMBERSHIP("membership");

    private final String torchName;

    OpCode(String torchName) { this.torchName = torchName; }

    public String torchName() { return torchName; }
}
