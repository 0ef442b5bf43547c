"""The interpolation seam: what to keep per step, and how to read y(t) back."""

import abc
from typing import TYPE_CHECKING

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Real


if TYPE_CHECKING:  # for the annotations only
    from ..solvers import AbstractSolver


def step_fraction(
    t0: Real[Array, ""], t1: Real[Array, ""], t: Real[Array, ""]
) -> Real[Array, ""]:
    """Where `t` lies in the step `[t0, t1]`, as `(t - t0) / (t1 - t0)`; 0 on a
    step of zero length. Neither branch divides by zero, so no NaN from the
    unselected one reaches a gradient through `where`."""
    h = t1 - t0
    return jnp.where(h == 0, 0.0, (t - t0) / jnp.where(h == 0, 1.0, h))


def step_rate(t0: Real[Array, ""], t1: Real[Array, ""]) -> Real[Array, ""]:
    """`1 / (t1 - t0)`, the derivative of `step_fraction` in `t`; 0 on a step of
    zero length, again without dividing by zero in either branch."""
    h = t1 - t0
    return jnp.where(h == 0, 0.0, 1 / jnp.where(h == 0, 1.0, h))


class AbstractInterpolation(eqx.Module):
    """A way of reconstructing `y(t)` between steps from data kept during a solve.

    Data are kept at the grid points (shared by the two steps that meet there) and
    per step. An implementation provides:

    - `point_data(y, f)`: what to keep at a grid point, given the state and the
      vector field there;
    - `step_data(dense_info)`: what to keep for a step beyond its two end points
      (`None` for nothing), given the solver's `dense_info`;
    - `evaluate(solver, t0, t1, left, right, step, t)`: `y(t)` for `t` in
      `[t0, t1]`, from the data of that step's two end points and its own;
    - `derivative(solver, t0, t1, left, right, step, t)`: the derivative in `t`
      of that same interpolant (`Solution.derivative`).

    `interpolation.Trajectory` stores these for a whole solve and finds the step
    that contains `t`. Used by `SaveAt(dense=True)` and (by the continuous
    adjoints) to read the forward solution on the way back.
    """

    @abc.abstractmethod
    def point_data(self, y: PyTree, f: PyTree) -> PyTree:
        """Data kept at a grid point.

        **Arguments:** the state `y` and the vector field `f` there.

        **Returns:** a pytree (e.g. `y`, or `(y, f)`).
        """

    @abc.abstractmethod
    def step_data(self, dense_info: PyTree) -> PyTree:
        """Data kept per step, beyond its end points (or `None`).

        **Arguments:** the solver's `dense_info` for the step.

        **Returns:** a pytree, or `None` to keep nothing per step.
        """

    @abc.abstractmethod
    def evaluate(
        self,
        solver: "AbstractSolver",
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        left: PyTree,
        right: PyTree,
        step: PyTree,
        t: Real[Array, ""],
    ) -> PyTree:
        """`y(t)` on the step `[t0, t1]`.

        **Arguments:** the `solver` (for its own `interpolate`), the step's end
        points `t0`, `t1`, the `point_data` of its two ends (`left`, `right`), its
        `step_data` (`step`), and `t` in `[t0, t1]`.

        **Returns:** the interpolated state, a pytree like `y`.
        """

    @abc.abstractmethod
    def derivative(
        self,
        solver,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        left: PyTree,
        right: PyTree,
        step: PyTree,
        t: Real[Array, ""],
    ) -> PyTree:
        """d/dt of `evaluate(solver, t0, t1, left, right, step, t)`: the derivative
        of the interpolating polynomial itself (not `f(t, y(t))`).

        **Arguments:** as `evaluate`.

        **Returns:** a pytree like `y`.
        """
