package org.mooncake4j.pg;

/** Reduction operators; BAND/BOR/BXOR are for integer (and bool) dtypes only. AVG divides the sum by the number of contributing ranks. */
public enum ReduceOp { SUM, PRODUCT, MIN, MAX, AVG, BAND, BOR, BXOR }
