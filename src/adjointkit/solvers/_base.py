"""The solver seam: what a one-step method provides to the integration loop."""

import abc
from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, PyTree, Real


class AbstractSolver(eqx.Module):
    """A one-step method for `dy/dt = f(t, y, args)`.

    An implementation provides:

    - `order`: the order of convergence of the method (class attribute);
    - `error_order`: the local order of its embedded error estimate, used as the
      exponent of step-size control; `None` when it has no estimate (then it can
      only be used with a constant step size);
    - `evals_per_step`: how many evaluations of `f` one step costs (for statistics);
    - `init(f, t0, y0, args) -> state`: the state carried between steps. It must
      be `f(t, y)` at the current point (a pytree like `y`): the methods here reuse
      it as the next step's first stage, and interpolations and adjoints read it;
    - `step(f, t0, t1, y0, args, state) -> (y1, y_error, dense_info, state)`: one
      step from `t0` to `t1`. `y_error` is the embedded error estimate (or `None`),
      `dense_info` whatever the solver's own continuous extension needs, and `state`
      the state at `t1`. The state returned with a rejected step is discarded by the
      loop.
    - `interpolate(t0, t1, y0, dense_info, t) -> y(t)`: the solver's own dense
      output on `[t0, t1]`.

    Solvers never decide step sizes (that is the controller's job) and never store
    anything across steps beyond `state` (that is the adjoint's job).
    """

    @property
    @abc.abstractmethod
    def order(self) -> int:
        """Order of convergence."""

    @property
    @abc.abstractmethod
    def error_order(self) -> int | None:
        """Local order of the embedded error estimate; `None` without one."""

    @property
    @abc.abstractmethod
    def evals_per_step(self) -> int:
        """Evaluations of `f` per attempted step (after `init`)."""

    @abc.abstractmethod
    def init(self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree):
        """The state carried into the first step.

        **Arguments:** the vector field `f`, the start time `t0`, the initial state
        `y0` and `args`.

        **Returns:** `f(t0, y0, args)` (see the class docstring).
        """

    @abc.abstractmethod
    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state,
    ):
        """One step from `t0` to `t1`.

        **Arguments:** the vector field `f`, the step's end points `t0`, `t1`,
        the state `y0` at `t0`, `args`, and the carried `state` (`f(t0, y0)`).

        **Returns:** `(y1, y_error, dense_info, state)`: the state at `t1`, the
        embedded error estimate (or `None`), what `interpolate` needs, and the
        carried state at `t1`.
        """

    @abc.abstractmethod
    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        """The solver's continuous extension of one step, evaluated at `t`.

        **Arguments:** the step's end points `t0`, `t1`, its initial state `y0`,
        the `dense_info` its `step` returned, and `t` in `[t0, t1]`.

        **Returns:** the approximation of `y(t)`, a pytree like `y0`.
        """
