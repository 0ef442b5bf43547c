"""Binomial checkpointing arithmetic (Griewank's revolve), shared by the schedules.

Reversing `l` steps while holding at most `s` states (the range's start state
included) costs at least

    t(l, s) = r l - β(s + 1, r - 1)   forward steps,  β(s, r) = C(s + r, s),

where `r` is the number of repetitions, the least integer with `l <= β(s, r)`
(A. Griewank, "Achieving logarithmic growth of temporal and spatial complexity in
reverse automatic differentiation", Optim. Methods Softw. 1, 1992; A. Griewank and
A. Walther, "Algorithm 799: Revolve", ACM TOMS 26, 2000). The bound is reached by
advancing `m` steps from the start, storing that state, reversing the `l - m`
steps after it with `s - 1` states, then the first `m` with `s`: the recursion
`t(l, s) = min_m m + t(l - m, s - 1) + t(m, s)`. An optimal `m` is

    m = max(1, β(s, r - 2), l - β(s - 1, r)),

checked against that recursion for all l <= 200, s <= 8 in the tests.

This module has two versions of the arithmetic: plain Python integers (at trace
time, and the reference the tests check) and `jax.numpy` (inside the backward
loop, where lengths are only known at run time).
"""

from math import comb

import jax.numpy as jnp
import numpy as np


def beta(s: int, r: int) -> int:
    """β(s, r) = C(s + r, s): the most steps `s` states can reverse with `r`
    repetitions; 0 for r < 0."""
    return comb(s + r, s) if r >= 0 else 0


def repetitions(length: int, slots: int) -> int:
    """The least `r` with `length <= β(slots, r)`."""
    if slots < 1:
        raise ValueError("binomial checkpointing needs at least one slot.")
    r = 0
    while beta(slots, r) < length:
        r += 1
    return r


def min_forward_steps(length: int, slots: int) -> int:
    """Griewank's bound t(l, s): forward steps re-run to reverse `length` steps from
    a stored start state holding at most `slots` states (its start included)."""
    if length <= 1:
        return 0
    r = repetitions(length, slots)
    return r * length - beta(slots + 1, r - 1)


def split(length: int, slots: int) -> int:
    """How far to advance before storing the next state: the optimal `m`."""
    if slots == 1:
        return length - 1
    r = repetitions(length, slots)
    return max(1, beta(slots, r - 2), length - beta(slots - 1, r))


# --- the same arithmetic on traced int32 scalars -------------------------------

# The traced version reads β from a table built here, for 0..MAX_REPETITIONS
# repetitions. Optimal schedules need more only with very few slots: 30
# repetitions with 3 slots already reverse C(33, 3) = 5456 steps, with 4 slots
# 46376, with 8 slots about 10**8. Beyond that the split is clipped into
# [1, length - 1], which still reverses correctly, only with more recomputation
# than the bound.
MAX_REPETITIONS = 30
_CAP = 2**30


def beta_table(max_slots: int) -> np.ndarray:
    """`table[s, r] = min(β(s, r), 2**30)` for s <= max_slots, r <= MAX_REPETITIONS
    (int32: the cap keeps it exact wherever it is compared with a step count)."""
    table = np.array(
        [
            [min(beta(s, r), _CAP) for r in range(MAX_REPETITIONS + 1)]
            for s in range(max_slots + 1)
        ],
        dtype=np.int64,
    )
    return table.astype(np.int32)


def split_jnp(length, slots, table):
    """`split` for traced int32 `length >= 2` and `1 <= slots < len(table)`, with
    `table = beta_table(...)`."""
    length = jnp.asarray(length, jnp.int32)
    slots = jnp.asarray(slots, jnp.int32)
    table = jnp.asarray(table)
    s = jnp.clip(slots, 2, table.shape[0] - 1)
    row = table[s]
    r = jnp.minimum(jnp.sum(row < length), MAX_REPETITIONS).astype(jnp.int32)
    below = jnp.where(r >= 2, row[jnp.maximum(r - 2, 0)], 0)
    m = jnp.maximum(jnp.maximum(1, below), length - table[s - 1, r])
    m = jnp.clip(m, 1, length - 1)
    return jnp.where(slots <= 1, length - 1, m).astype(jnp.int32)
