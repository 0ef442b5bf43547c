"""A whole solve's interpolation data, and evaluation anywhere in it."""

import math

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Int, PyTree, Real

from ._base import AbstractInterpolation


class Trajectory(eqx.Module):
    """Interpolation data for every accepted step of a solve.

    Buffers have room for `capacity` steps; the first `count` are filled. Times are
    in the loop's (ascending) time.

    **Attributes:**

    - `times`: `(capacity + 1,)` grid points; unused entries are `inf`.
    - `points`: point data per grid point (leading axis `capacity + 1`).
    - `steps`: step data per step (leading axis `capacity`), or `None`.
    - `count`: the number of recorded steps.
    """

    times: Real[Array, " capacity_plus_one"]
    points: PyTree
    steps: PyTree
    count: Int[Array, ""]
    interpolation: AbstractInterpolation
    solver: eqx.Module

    def evaluate(self, t: Real[Array, "*shape"]) -> PyTree:
        """`y(t)`, vectorised over the shape of `t`. A `t` on a grid point is read
        from the step that ends there (and `t0` from the first step)."""
        return self._vectorised(self._evaluate_one, t)

    def derivative(self, t: Real[Array, "*shape"]) -> PyTree:
        """d/dt of `evaluate` (the interpolant's own derivative), vectorised over
        the shape of `t`. At a grid point, that of the step that ends there (and
        at `t0`, of the first step); zero for a solve that took no step."""
        return self._vectorised(self._derivative_one, t)

    def _vectorised(self, one, t):
        """`one` (of a scalar time) over every entry of `t`, shaped like `t`."""
        t = jnp.asarray(t, self.times.dtype)
        out = jax.vmap(one)(jnp.reshape(t, (-1,)))
        return jtu.tree_map(lambda x: jnp.reshape(x, t.shape + x.shape[1:]), out)

    def _on_step(self, read, t):
        """`(read(solver, t_a, t_b, y_a, y_b, step, t), empty)`: `read` (the
        interpolation's `evaluate` or `derivative`) on the recorded step that holds
        `t`, and whether the solve took no step at all."""
        # First step whose end is >= t; unused entries are inf so never chosen
        # before a real one, and clipping keeps t beyond t1 (by rounding) in range.
        ends = self.times[1:]
        j = _count_below(ends, t)
        j = jnp.clip(j, 0, jnp.maximum(self.count - 1, 0))
        # With no steps (t0 == t1), read a step of unit length from the start.
        # Neither branch may divide by a zero or infinite step length, even
        # unselected: its NaN would reach the gradient through `where`.
        empty = self.count == 0
        t_start = self.times[0]
        value = read(
            self.solver,
            jnp.where(empty, t_start, self.times[j]),
            jnp.where(empty, t_start + 1, self.times[j + 1]),
            _take(self.points, j),
            _take(self.points, j + 1),
            _take(self.steps, j),
            jnp.where(empty, t_start, t),
        )
        return value, empty

    def _derivative_one(self, t):
        dy, empty = self._on_step(self.interpolation.derivative, t)
        return jtu.tree_map(lambda d: jnp.where(empty, jnp.zeros_like(d), d), dy)

    def _evaluate_one(self, t):
        # With no steps the solution is the initial point everywhere: the start
        # of a step.
        y, empty = self._on_step(self.interpolation.evaluate, t)
        t_start = self.times[0]
        y0 = self.interpolation.evaluate(
            self.solver,
            t_start,
            t_start + 1,
            _take(self.points, 0),
            _take(self.points, 0),
            _take(self.steps, 0),
            t_start,
        )
        return jtu.tree_map(lambda a, b: jnp.where(empty, b, a), y, y0)


def _take(tree: PyTree, i) -> PyTree:
    """Entry `i` of every leaf's leading axis."""
    return jtu.tree_map(lambda x: x[i], tree)


def _count_below(
    sorted_values: Real[Array, " n"], t: Real[Array, ""]
) -> Int[Array, ""]:
    """The number of entries below `t` (`searchsorted(..., side="left")`), in two
    vectorised comparisons of about sqrt(n) entries each: first against the last
    entry of every block of sqrt(n), then within the one block that holds `t`.
    A binary search is a loop of about log2(n) dependent steps, which inside a
    backward solve (one search per stage) costs more than these few fused ops."""
    n = sorted_values.shape[0]
    if n == 0:
        return jnp.asarray(0, jnp.int32)
    width = max(1, math.isqrt(n))
    num_blocks = -(-n // width)
    padded = jnp.concatenate(
        [
            sorted_values,
            jnp.full((num_blocks * width - n,), jnp.inf, sorted_values.dtype),
        ]
    )
    blocks = padded.reshape(num_blocks, width)
    k = jnp.minimum(jnp.sum(blocks[:, -1] < t), num_blocks - 1)
    block = lax.dynamic_index_in_dim(blocks, k, 0, keepdims=False)
    return (k * width + jnp.sum(block < t)).astype(jnp.int32)
