"""The result of a solve."""

import equinox as eqx
import jax.numpy as jnp
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
      outcome when that cannot help).

    With `solve(..., throw=True)` (the default) any value but `successful` raises
    an error carrying its message; with `throw=False` it is returned in
    `Solution.result`.
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
    - `stats`: a dict of integer counters: `num_steps` (attempted),
      `num_accepted_steps`, `num_rejected_steps`, `num_f_evals`. Adjoints that run
      a backward solve may add their own (e.g. `backward_num_steps`).
    - `result`: a `RESULTS` value.
    - `t0`, `t1`: the interval, as passed.
    - `dense`: with `SaveAt(dense=True)`, the solver's dense output over the whole
      interval (read it with `evaluate`); else `None`.
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

    def evaluate(self, t: Real[Array, "*shape"]) -> PyTree:
        """The dense output at time(s) `t` in `[t0, t1]`; needs `SaveAt(dense=True)`.

        Vectorised over a leading shape of `t`. Differentiable with respect to `t`
        and to everything the solve depends on.

        **Arguments:**

        - `t`: a time, or an array of times, in `[t0, t1]`.

        **Returns:** `y(t)`, a pytree like `y0` whose leaves have the shape of `t`
        in front of their own.
        """
        if self.dense is None:
            raise ValueError(
                "Solution.evaluate needs the dense output: solve with "
                "SaveAt(dense=True)."
            )
        t = jnp.asarray(t)
        return self.dense.evaluate(self.direction * t)
