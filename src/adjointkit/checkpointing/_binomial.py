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

# The traced version looks for r among 0..MAX_REPETITIONS, in straight-line code (a
# loop on the device would cost a kernel launch per iteration). Optimal schedules
# need more repetitions only with very few slots: 30 repetitions with 3 slots
# already reverse C(33, 3) = 5456 steps, with 4 slots 46376, with 8 slots about
# 10**8. Beyond that the split is clipped into [1, length - 1], which still reverses
# correctly, only with more recomputation than the bound.
MAX_REPETITIONS = 30
_CAP = 2**30


def _times(value, numerator, denominator):
    """`value * numerator // denominator` for int32 scalars, saturating at 2**30."""
    big = value > _CAP // jnp.maximum(numerator, 1)
    return jnp.where(big, _CAP, (value * numerator) // denominator)


def split_jnp(length, slots):
    """`split` for traced int32 `length >= 2` and `slots >= 1`."""
    length = jnp.asarray(length, jnp.int32)
    slots = jnp.asarray(slots, jnp.int32)
    s = jnp.maximum(slots, 2)
    # beta_s[r] = β(s, r) and beta_sm1[r] = β(s - 1, r), built up in r:
    # β(s, r) = β(s, r - 1) (s + r) / r.
    beta_s = [jnp.int32(1)]
    beta_sm1 = [jnp.int32(1)]
    for r in range(1, MAX_REPETITIONS + 1):
        beta_s.append(_times(beta_s[-1], s + r, r))
        beta_sm1.append(_times(beta_sm1[-1], s - 1 + r, r))
    beta_s = jnp.stack(beta_s)
    beta_sm1 = jnp.stack(beta_sm1)
    r = jnp.sum(beta_s < length).astype(jnp.int32)  # least r with β(s, r) >= length
    r = jnp.minimum(r, MAX_REPETITIONS)
    below = jnp.where(r >= 2, beta_s[jnp.maximum(r - 2, 0)], 0)
    m = jnp.maximum(jnp.maximum(1, below), length - beta_sm1[r])
    m = jnp.clip(m, 1, length - 1)
    return jnp.where(slots <= 1, length - 1, m).astype(jnp.int32)
