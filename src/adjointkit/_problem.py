"""A solve's inputs after validation, in the loop's ascending time."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Real

from .controllers import AbstractController
from .solvers import AbstractSolver


class Problem(eqx.Module):
    """Everything an adjoint needs to run a solve.

    Integration backward in time (`t1 < t0`) is run forward in reversed time
    `s = -t` with the vector field `-f(-s, y, args)`: `t0`, `t1`, `ts` and `dt0`
    here are in that loop time `s = direction * t`, so `t0 <= t1` always, and
    every other part of the library only ever sees ascending time.

    **Attributes:**

    - `f`: the user's vector field `f(t, y, args)` (an `eqx.Module` with parameters
      is a pytree here, and differentiable).
    - `direction`: `1` or `-1` (a Python int when known at trace time).
    - `num_steps`: the number of constant steps, when known at trace time.
    - `ts`: `SaveAt(ts=...)` in loop time, or `None`.
    - `throw`: whether a failure raises (else it is reported, and gradients that
      cannot be computed are NaN).
    - `save_fn`: `SaveAt(fn=...)` in loop time, `save_fn(s, y)`, closure-converted
      (its arrays, `args` among them, are leaves), or `None` to save `y` itself.
    - `progress_meter`: an `AbstractProgressMeter`, or `None` (no callbacks).
    """

    f: Callable
    solver: AbstractSolver
    controller: AbstractController
    t0: Real[Array, ""]
    t1: Real[Array, ""]
    y0: PyTree
    args: PyTree
    dt0: Real[Array, ""] | None
    ts: Real[Array, " times"] | None
    direction: PyTree
    save_t0: bool = eqx.field(static=True)
    save_t1: bool = eqx.field(static=True)
    save_steps: bool = eqx.field(static=True)
    dense: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    num_steps: int | None = eqx.field(static=True)
    throw: bool = eqx.field(static=True, default=True)
    save_fn: Callable | None = None
    progress_meter: object = eqx.field(static=True, default=None)

    def vector_field(self, s, y, args):
        """`f` in loop time: `direction * f(direction * s, y, args)`."""
        if isinstance(self.direction, int) and self.direction == 1:
            return self.f(s, y, args)
        d = jnp.asarray(self.direction, s.dtype)
        out = self.f(d * s, y, args)
        return _scale_tree(d, out)

    @property
    def capacity(self) -> int:
        """The most steps this solve can take: the buffer size of its records."""
        if self.num_steps is not None:
            return min(self.num_steps, self.max_steps)
        return self.max_steps


def _scale_tree(d, tree):
    import jax.tree_util as jtu

    return jtu.tree_map(lambda x: d.astype(x.dtype) * x, tree)
