"""The result of a solve."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Int, PyTree, Real


class RESULTS(eqx.Enumeration):
    """How a solve ended. `sol.result == RESULTS.successful` is a traced bool.

    **Values:**

    - `successful`: the solve reached `t1`.
    - `max_steps_reached`: `max_steps` steps were attempted before `t1`.
    - `nonfinite_state`: the state became NaN or infinite.
    - `step_size_too_small`: the controller could not meet its tolerance with a
      step above `dtmin` (or the floating-point limit).
    - `nonlinear_solve_failed`: an implicit solver's Newton iteration did not
      converge (a step that fails is rejected and retried shorter; this is the
      outcome when that cannot help: with constant steps, at once).

    With `solve(..., throw=True)` (the default) any value but `successful` raises
    an error carrying its message; with `throw=False` it is returned in
    `Solution.result`, with the solution up to the point where the solve
    stopped (what would have been saved after it is `inf`; see `Solution`).
    """

    successful = "The solve reached `t1`."
    max_steps_reached = (
        "The maximum number of steps was reached (`max_steps`): the solve did not get "
        "to `t1`. Increase `max_steps`, loosen the tolerances, or check the problem "
        "for stiffness."
    )
    nonfinite_state = (
        "The state became NaN or infinite during the solve. Check the vector field "
        "(division by zero, log of a negative number, overflow) and the step size."
    )
    step_size_too_small = (
        "The step size fell below `dtmin` or the floating-point limit: the error "
        "tolerance could not be met. The problem may be stiff or singular."
    )
    nonlinear_solve_failed = (
        "The implicit solver's Newton iteration did not converge, even on steps "
        "shrunk by the controller (with constant steps: on a step of the given size). "
        "Use a smaller `dt0`, looser Newton tolerances, or check `f` for "
        "discontinuities or a singular Jacobian."
    )


# Shown as `adjointkit.RESULTS<message>`, the name users import it by.
RESULTS.__module__ = "adjointkit"


class Solution(eqx.Module):
    """What `solve` returns.

    **Attributes:**

    - `ts`: the saved times (per `SaveAt`), or `None` if nothing was saved.
    - `ys`: the saved values, a pytree like `y0` with a leading save axis.
      After a failure (`throw=False`) the solve stopped at the last point it
      reached: the times and values it would have saved after that point are
      `inf`, and `SaveAt(t1=True)`'s entry is that point (its time and state),
      as in Diffrax.
    - `stats`: a dict of integer counters: `num_steps` (attempted),
      `num_accepted_steps`, `num_rejected_steps`, `num_f_evals`. Adjoints that run
      a backward solve may add their own (e.g. `backward_num_steps`).
    - `result`: a `RESULTS` value.
    - `t0`, `t1`: the interval, as passed.
    - `dense`: with `SaveAt(dense=True)`, the solver's dense output over the whole
      interval (read it with `evaluate` and `derivative`); else `None`.
    - `direction`: 1 for a solve forward in time, -1 for one backward
      (`t1 < t0`), used by `evaluate` to map times to the loop's ascending time.
    """

    t0: Real[Array, ""]
    t1: Real[Array, ""]
    ts: Real[Array, " saves"] | None
    ys: PyTree | None
    stats: dict[str, Int[Array, ""]]
    result: RESULTS
    dense: PyTree | None = None  # an interpolation.Trajectory, if SaveAt(dense=True)
    direction: PyTree = 1

    def evaluate(
        self, t0: Real[Array, "*shape"], t1: Real[Array, "*shape"] | None = None
    ) -> PyTree:
        """The dense output at time(s) `t0` in `[t0, t1]` of the solve; or, with
        `t1`, the increment `y(t1) - y(t0)` (as Diffrax's `Solution.evaluate`).
        Needs `SaveAt(dense=True)`.

        Vectorised over a leading shape of the times. Differentiable with respect
        to the times and to everything the solve depends on.

        **Arguments:**

        - `t0`: a time, or an array of times, in the interval of the solve.
        - `t1`: optional; a time or times (broadcast against `t0`). If given, the
          increment `y(t1) - y(t0)` is returned.

        **Returns:** `y(t0)` (or `y(t1) - y(t0)`), a pytree like `y0` whose leaves
        have the shape of the times in front of their own.
        """
        dense = self._dense_or_error("evaluate")
        t0 = jnp.asarray(t0)
        if t1 is None:
            return dense.evaluate(self.direction * t0)
        t0, t1 = jnp.broadcast_arrays(t0, jnp.asarray(t1))
        y0 = dense.evaluate(self.direction * t0)
        y1 = dense.evaluate(self.direction * t1)
        return jtu.tree_map(jnp.subtract, y1, y0)

    def derivative(self, t: Real[Array, "*shape"]) -> PyTree:
        """dy/dt of the dense output at time(s) `t`; needs `SaveAt(dense=True)`.

        This is the derivative of the solver's interpolating polynomial on the step
        that holds `t` (the step that ends at `t`, on a grid point): close to
        `f(t, y(t), args)` but usually less accurate, since dense output is built
        to match `y`, not its derivative (as Diffrax's `Solution.derivative`). When
        an accurate derivative matters, evaluate `f(t, sol.evaluate(t), args)`.

        **Arguments:**

        - `t`: a time, or an array of times, in the interval of the solve.

        **Returns:** `dy/dt`, a pytree like `y0` whose leaves have the shape of `t`
        in front of their own (zero for a solve of zero length).
        """
        dense = self._dense_or_error("derivative")
        t = jnp.asarray(t)
        dy = dense.derivative(self.direction * t)
        if isinstance(self.direction, int) and self.direction == 1:
            return dy
        # y(t) = Y(direction * t) for the loop's solution Y.
        return jtu.tree_map(lambda d: jnp.asarray(self.direction, d.dtype) * d, dy)

    def _dense_or_error(self, method: str):
        if self.dense is None:
            raise ValueError(
                f"Solution.{method} needs the dense output: solve with "
                "SaveAt(dense=True) (with an adjoint that supports it: "
                "DirectAdjoint, CheckpointedAdjoint or ReversibleAdjoint)."
            )
        return self.dense
