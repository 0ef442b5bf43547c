"""The solver seam: what a one-step method provides to the integration loop."""

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int, PyTree, Real

from .._solution import RESULTS


if TYPE_CHECKING:  # for the annotations only: controllers/ imports solvers/
    from ..controllers import AbstractController


class SolverStep(eqx.Module):
    """What one attempted step of a solver returns.

    **Attributes:**

    - `y1`: the state at the step's end.
    - `y_error`: the embedded error estimate (a pytree like `y1`), or `None`.
    - `dense_info`: whatever the solver's own continuous extension needs.
    - `state`: the solver's carried state at the step's end (see `AbstractSolver`).
    - `result`: `RESULTS.successful`, or why the step could not be computed (e.g.
      `RESULTS.nonlinear_solve_failed`). The loop rejects such a step and, with
      an adaptive controller, retries it shorter; it never keeps it.
    - `num_f_evals`, `num_jac_evals`: evaluations of `f` and of its Jacobian the
      step made (for statistics).
    """

    y1: PyTree
    y_error: PyTree | None
    dense_info: PyTree
    state: PyTree
    result: RESULTS
    num_f_evals: Int[Array, ""]
    num_jac_evals: Int[Array, ""]


def explicit_step(y1, y_error, dense_info, state, num_f_evals: int) -> SolverStep:
    """A `SolverStep` of a method that cannot fail and evaluates no Jacobian."""
    return SolverStep(
        y1=y1,
        y_error=y_error,
        dense_info=dense_info,
        state=state,
        result=RESULTS.successful,
        num_f_evals=jnp.asarray(num_f_evals, jnp.int32),
        num_jac_evals=jnp.asarray(0, jnp.int32),
    )


class AbstractSolver(eqx.Module):
    """A one-step method for `dy/dt = f(t, y, args)`.

    An implementation provides:

    - `order`: the order of convergence of the method (class attribute);
    - `error_order`: the local order of its embedded error estimate, used as the
      exponent of step-size control; `None` when it has no estimate (then it can
      only be used with a constant step size);
    - `init(f, t0, y0, args) -> state`: the solver's state carried between steps,
      opaque to the loop. The loop reads `f(t, y)` at the current point from it
      with `func(state)` (interpolations and continuous adjoints need it);
    - `step(f, t0, t1, y0, args, state) -> SolverStep`: one step from `t0` to
      `t1` (see `SolverStep`). The state returned with a rejected step is
      discarded by the loop;
    - `interpolate(t0, t1, y0, dense_info, t) -> y(t)`: the solver's own dense
      output on `[t0, t1]`.

    and may override:

    - `func(state)`: `f(t, y)` from the carried state (default: the state *is*
      `f(t, y)`, as for every Runge--Kutta method here);
    - `with_controller(controller)`: the solver configured for the step-size
      controller it runs under (an implicit method takes its Newton tolerances
      from the controller's `rtol` and `atol`); default: unchanged;
    - `evaluates_jacobian`: whether it reports Jacobian evaluations (they are
      then part of `Solution.stats`).

    Solvers never decide step sizes (that is the controller's job) and never store
    anything across steps beyond `state` (that is the adjoint's job). A state is
    rebuilt from `(t, y)` with `init` when a checkpoint is restored, so `init` at
    a step's end must give the state that step returned (up to rounding) -- unless
    the state is an `AbstractAuxiliaryState`, which checkpoints keep whole.
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
    def evaluates_jacobian(self) -> bool:
        """Whether steps evaluate the Jacobian of `f` (reported in the stats)."""
        return False

    @abc.abstractmethod
    def init(
        self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree
    ) -> PyTree:
        """The state carried into the first step.

        **Arguments:** the vector field `f`, the start time `t0`, the initial state
        `y0` and `args`.

        **Returns:** the solver's state at `(t0, y0)`.
        """

    def func(self, state: PyTree) -> PyTree:
        """`f(t, y)` at the point the carried `state` belongs to."""
        return state

    def with_controller(self, controller: "AbstractController") -> "AbstractSolver":
        """This solver, configured for `controller` (default: unchanged)."""
        del controller
        return self

    @abc.abstractmethod
    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state,
    ) -> SolverStep:
        """One step from `t0` to `t1`.

        **Arguments:** the vector field `f`, the step's end points `t0`, `t1`,
        the state `y0` at `t0`, `args`, and the carried `state`.

        **Returns:** a `SolverStep`.
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


class AbstractAuxiliaryState(eqx.Module):
    """A solver's carried state that is not a function of `(t, y)` alone.

    Most solvers carry `f(t, y)`, which a restored checkpoint recomputes with
    `init`. A solver that carries a second solution alongside `y` (the reversible
    solvers' `z`) cannot be restarted from `(t, y)`: it makes its state a subclass
    of this class, and the loop's checkpoints then keep the state whole.

    An implementation provides the fields of the state; nothing else.
    """
