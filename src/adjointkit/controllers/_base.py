"""The step-size seam: who decides where the next step ends."""

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
from jaxtyping import Array, Bool, PyTree, Real


if TYPE_CHECKING:  # for the annotations only: solvers/ imports controllers/
    from ..solvers import AbstractSolver


class AbstractController(eqx.Module):
    """Decides step sizes, and whether an attempted step is accepted.

    The loop works in ascending time (a solve backward in time is run in reversed
    time), so step sizes here are positive. An implementation provides:

    - `adaptive` (class attribute): whether it needs the solver's error estimate.
    - `init(f, solver, t0, t1, y0, args, dt0, f0) -> (tnext, state)`: the end of
      the first attempted step, and the controller's state.
    - `adapt(t0, tnext, y0, y1, y_error, error_order, state)
      -> (accept, next_t0, next_tnext, state, failed)`: after an attempted step
      from `t0` to `tnext`, whether to keep it, where the next attempt starts and
      ends, and whether the controller cannot go on (e.g. the step size fell below
      `dtmin`). The loop clips `next_tnext` to the end of the interval.
      `next_t0` must be `tnext` when the step is accepted and `t0` when not: a
      checkpointed replay of an adaptive controller's steps assumes so, reusing
      the recorded `accept` and `next_tnext` rather than calling `adapt` again.

    Step sizes are not differentiated through: controllers see only
    `lax.stop_gradient`-ed values, except that a constant step size's grid
    depends (differentiably) on `t0` and `t1`.
    """

    @property
    @abc.abstractmethod
    def adaptive(self) -> bool:
        """Whether the controller uses the error estimate (and may reject steps)."""

    @abc.abstractmethod
    def init(
        self,
        f: Callable,
        solver: "AbstractSolver",
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        dt0: Real[Array, ""] | None,
        f0: PyTree,
    ) -> tuple[Real[Array, ""], PyTree]:
        """The end of the first attempted step, and the initial state.

        **Arguments:** the vector field `f`, the `solver`, the interval `t0`, `t1`
        (ascending), the initial state `y0`, `args`, the user's `dt0` (or
        `None`) and `f0 = f(t0, y0, args)`.

        **Returns:** `(tnext, state)`.
        """

    @abc.abstractmethod
    def adapt(
        self,
        t0: Real[Array, ""],
        tnext: Real[Array, ""],
        y0: PyTree,
        y1: PyTree,
        y_error: PyTree | None,
        error_order: int | None,
        state: PyTree,
    ) -> tuple[
        Bool[Array, ""], Real[Array, ""], Real[Array, ""], PyTree, Bool[Array, ""]
    ]:
        """Accept or reject the step just attempted, and propose the next one.

        **Arguments:** the attempted step's start `t0` and end `tnext`, the states
        `y0` before it and `y1` after it, the solver's error estimate `y_error`
        (or `None`) and its local order `error_order`, and the controller's
        `state`.

        **Returns:** `(accept, next_t0, next_tnext, state, failed)`.
        """
