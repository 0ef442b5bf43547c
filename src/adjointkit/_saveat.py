"""What a solve returns: which times to save at, and whether to keep dense output."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Real


class SaveAt(eqx.Module):
    """Which values `solve` returns in `Solution.ts` / `Solution.ys`.

    Saved values are concatenated along a leading axis in this order: `t0`, then
    each of `ts`, then every accepted step (`steps=True`), then `t1`.

    **Arguments:**

    - `t0`: save the initial value.
    - `t1`: save the final value (the default when nothing else is asked for).
    - `ts`: save at these times, which must lie in `[t0, t1]` and be ordered in the
      direction of integration. Values between steps come from the solver's own
      dense output, so saving does not change the steps taken.
    - `steps`: save at the end of every accepted step. For adaptive solves the
      output has `max_steps` rows, the unused ones filled with `inf`.
    - `dense`: keep the solver's dense output over the whole interval, so that
      `Solution.evaluate(t)` works. Costs memory in proportion to the number of
      steps.
    - `fn`: save `fn(t, y, args)` instead of `y` at every save time (`t0`, `ts`,
      `steps`, `t1`; not the dense output, which stays `y`), as Diffrax's
      `SaveAt(fn=...)`. Only `fn`'s values are stored during the solve, so a
      small `fn` (a norm, one component, a loss term) saves the memory of the
      whole state at every save time. Gradients flow through `fn`, including to
      the arrays it closes over, with every adjoint. (The continuous adjoints
      keep the state at `ts` for their backward pass in any case, and apply `fn`
      afterwards.) `fn` returns any pytree of arrays; it is called with the
      solve's `t` (in the user's time direction), `y` and `args`.
    """

    t0: bool = False
    t1: bool = False
    ts: Real[Array, " times"] | None = None
    steps: bool = False
    dense: bool = False
    fn: Callable | None = None

    def __init__(
        self,
        *,
        t0: bool = False,
        t1: bool = False,
        ts: ArrayLike | Sequence[float] | None = None,
        steps: bool = False,
        dense: bool = False,
        fn: Callable | None = None,
    ):
        if fn is not None and not callable(fn):
            raise TypeError(
                f"SaveAt(fn=...) must be a function `fn(t, y, args)`, got {fn!r}."
            )
        if ts is not None:
            if isinstance(ts, list | tuple):
                ts = np.asarray(ts)
            ts = jnp.asarray(ts)
            if ts.ndim != 1:
                raise ValueError(
                    f"SaveAt(ts=...) must be one-dimensional, got {ts.shape}."
                )
            if ts.shape[0] == 0:
                raise ValueError(
                    "SaveAt(ts=...) is empty: pass at least one time, or leave "
                    "`ts` out to save nothing in between."
                )
            if not jnp.issubdtype(ts.dtype, jnp.floating):
                ts = ts.astype(jnp.result_type(float))
        if not (t0 or t1 or ts is not None or steps or dense):
            t1 = True
        self.t0 = t0
        self.t1 = t1
        self.ts = ts
        self.steps = steps
        self.dense = dense
        self.fn = fn

    @property
    def saves_values(self) -> bool:
        """Whether `Solution.ys` will hold anything."""
        return self.t0 or self.t1 or self.ts is not None or self.steps
