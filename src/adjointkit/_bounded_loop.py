"""A while loop that reverse mode can differentiate, at a cost that follows the
iterations actually run rather than the bound.

`lax.while_loop` cannot be transposed (its trip count is unknown). The plain
alternative, a `lax.scan` over all `max_iterations` iterations that skips by
`lax.cond` once done, can: but reverse mode then stores every iteration's
intermediate values, skipped or not, and the backward pass visits every one of
them, so memory and time grow with the bound however few iterations run.

`bounded_while_loop` runs the same iterations as a tree of nested scans instead.
The innermost level is a scan of `base` iterations, each `lax.cond(cond(carry),
body, identity)`; every level above it is a scan of `base` (the top level: as
many as needed) iterations, each `lax.cond(cond(carry), next level down,
identity)`. So

- once `cond` is false, a whole block of `base**k` iterations is skipped by one
  `cond`, and the forward pass costs the iterations run plus a few skips per
  level;
- every level above the innermost is wrapped in `jax.checkpoint`: reverse mode
  keeps only each level's `base` input carries and recomputes a block when the
  backward pass reaches it, so memory is O(`base` x levels) carries plus one
  innermost block's intermediate values (rather than `max_iterations` of them),
  at the price of running each executed iteration about once more per level;
  a skipped block is recomputed as a skip, for ~nothing.

The total number of iterations of the tree is rounded up from `max_iterations`,
so an iteration counter is carried along and `cond` is only consulted while it
is below `max_iterations`: the loop never runs `body` more than `max_iterations`
times, whatever the bound.

Under `jax.vmap` with a batched condition, `lax.cond` becomes a select that runs
both branches, so every iteration up to the bound is computed (as for any
batched while loop turned into a scan); the results are still per-example.

Carried buffers (say, of length `max_iterations`, written one entry per
iteration) are saved like any other carry only where reverse mode needs their
value; a write's transpose does not, so JAX leaves them out of the checkpoints.

Reference: the recursive-checkpointing idea is Griewank's (A. Griewank and A.
Walther, *Evaluating Derivatives*, 2nd ed., SIAM 2008, ch. 12); the same nested
scan is what Equinox's internal bounded while loop uses for Diffrax's
`DirectAdjoint`.
"""

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool


_Carry = TypeVar("_Carry")

# Iterations per scan level, chosen by measurement (DirectAdjoint value+grad,
# max_steps 4096, 2-core CPU; time, temp memory, compile time):
#
#   base                          4        8       16       32       64
#   Neural ODE, 4 steps         8.5 ms   9.3 ms  16.3 ms  49.6 ms   322 ms
#     (benchmarks/adaptive.py)  6.3 MiB  9.6 MiB 16.6 MiB 30.9 MiB 59.7 MiB
#   Lotka--Volterra, ~130 steps 0.65 ms  0.50 ms  0.52 ms  0.45 ms  0.54 ms
#     compile                   4.7-7 s  2.7-3.4 s 3.1-4.4 s 3.5 s  2.1-3 s
#   Lotka--Volterra rtol 1e-11   -      3.5 ms   3.1 ms   3.1 ms    -
#
# The innermost block's intermediate values (`base` steps' worth) dominate the
# memory of a large field, and its skipped iterations the time of a solve of few
# steps; more levels (a smaller base) mean one more recomputation of every step
# taken (about +13% on the many-step solve) and longer compiles. 8 is the best
# compromise measured.
DEFAULT_BASE = 8


def _levels(max_iterations: int, base: int) -> int:
    """The number of scan levels: the least `k >= 1` with `base**k >=
    max_iterations` (computed in integers, not with a rounding `log`)."""
    levels, capacity = 1, base
    while capacity < max_iterations:
        levels, capacity = levels + 1, capacity * base
    return levels


def bounded_while_loop(
    cond: Callable[[_Carry], Bool[Array, ""]],
    body: Callable[[_Carry], _Carry],
    init: _Carry,
    *,
    max_iterations: int,
    base: int = DEFAULT_BASE,
) -> _Carry:
    """`lax.while_loop(cond, body, init)`, stopped after at most `max_iterations`
    calls of `body`, and differentiable in reverse mode as well as forward mode.

    **Arguments:**

    - `cond`, `body`, `init`: as for `lax.while_loop`.
    - `max_iterations`: the most times `body` runs (a Python int >= 0); the loop
      ends there whether `cond` still holds or not.
    - `base`: iterations per level of the scan tree. A larger base means fewer
      levels (less recomputation on the backward pass, fewer nested loops to
      compile) but more carries kept per level and a coarser skip.

    **Returns:** the final carry, as `lax.while_loop`.
    """
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int):
        raise TypeError(f"`max_iterations` must be an int, got {max_iterations!r}.")
    if max_iterations < 0:
        raise ValueError(f"`max_iterations` must be >= 0, got {max_iterations}.")
    if base < 2:
        raise ValueError(f"`base` must be at least 2, got {base}.")
    if max_iterations == 0:
        return init

    levels = _levels(max_iterations, base)
    # The top level runs only as many blocks as cover `max_iterations`: with
    # max_iterations = 1000 and base 16, 4 blocks of 256 rather than 16.
    block = base ** (levels - 1)
    top_length = -(-max_iterations // block)

    def guarded_cond(carry):
        count, value = carry
        return (count < max_iterations) & cond(value)

    def step(carry):
        count, value = carry
        return count + 1, body(value)

    def level(depth: int, length: int) -> Callable:
        """A scan of `length` iterations of the level `depth` below the top (0:
        the innermost, whose iterations are calls of `body`)."""
        inner = step if depth == 0 else level(depth - 1, base)

        def iteration(carry, _):
            return lax.cond(guarded_cond(carry), inner, lambda c: c, carry), None

        if depth > 0:
            # Reverse mode keeps this iteration's input carry, not its insides.
            iteration = jax.checkpoint(iteration, prevent_cse=False)

        def run_level(carry):
            return lax.scan(iteration, carry, None, length=length)[0]

        return run_level

    count = jnp.asarray(0, jnp.int32)
    _, final = level(levels - 1, top_length)((count, init))
    return final
