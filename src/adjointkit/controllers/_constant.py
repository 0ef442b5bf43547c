"""Constant step size."""

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, PyTree, Real

from ._base import AbstractController


INT32_MAX = 2**31 - 1


def grid_time(t0, t1, n, num_steps):
    """The end of step `n` (1-based) of `num_steps` equal steps over `[t0, t1]`.

    Times are computed as a fraction of `t1 - t0`, not by adding `dt` repeatedly,
    so rounding does not accumulate, and the last step ends exactly at `t1`.
    """
    frac = jnp.asarray(n, t0.dtype) / jnp.asarray(num_steps, t0.dtype)
    return jnp.where(n >= num_steps, t1, t0 + (t1 - t0) * frac)


def num_constant_steps(t0, t1, dt0, xp=jnp):
    """How many equal steps cover `[t0, t1]` with steps no longer than `dt0`.

    `ceil((t1 - t0) / dt0)`, less 100 units in the last place so that a `dt0` that
    divides the interval up to rounding (say 1/0.1) does not add a sliver step.
    """
    ratio = (t1 - t0) / dt0
    eps = xp.finfo(xp.asarray(ratio).dtype).eps
    steps = xp.maximum(xp.ceil(ratio * (1 - 100 * eps)), 0)
    # Past the int32 range the count would wrap round to a small or negative
    # number: saturate instead (no `max_steps` is that large, so such a solve
    # ends with `max_steps_reached`).
    return xp.minimum(steps, INT32_MAX).astype(xp.int32)


class ConstantStepSize(AbstractController):
    """Equal steps of (at most) `dt0`, which `solve` then requires.

    The interval is split into `N = ceil((t1 - t0) / dt0)` equal steps, so the last
    step ends exactly at `t1`. When `t0`, `t1` and `dt0` are known at trace time, the
    solve runs as a `lax.scan` of exactly `N` steps (fast, and reverse-mode
    differentiable without bounds); otherwise as a loop bounded by `max_steps`.

    **Arguments:** none; the step size is `solve`'s `dt0`.
    """

    @property
    def adaptive(self) -> bool:
        return False

    def init(
        self,
        f: Callable,
        solver,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        dt0: Real[Array, ""] | None,
        f0: PyTree,
    ):
        del f, solver, y0, args, f0
        if dt0 is None:
            raise ValueError(
                "ConstantStepSize needs a step size: pass `dt0` to `solve` (or use "
                "PIDController for automatic step sizes)."
            )
        num_steps = jnp.maximum(num_constant_steps(t0, t1, dt0), 1)
        step = jnp.asarray(1, jnp.int32)
        return grid_time(t0, t1, step, num_steps), (step, num_steps, t0, t1)

    def adapt(self, t0, tnext, y0, y1, y_error, error_order, state):
        del t0, y0, y1, y_error, error_order
        step, num_steps, grid_t0, grid_t1 = state
        step = step + 1
        next_tnext = grid_time(grid_t0, grid_t1, step, num_steps)
        state = (step, num_steps, grid_t0, grid_t1)
        return jnp.array(True), tnext, next_tnext, state, jnp.array(False)
