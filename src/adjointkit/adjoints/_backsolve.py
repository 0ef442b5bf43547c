"""The adjoint ODE run backward with the primal ODE beside it."""

from .._problem import Problem
from .._solution import Solution
from ..controllers import AbstractController
from ..solvers import AbstractSolver
from ._base import AbstractAdjoint
from ._continuous import (
    IntegratedParameters,
    SolvedBackward,
    _Spec,
    check_continuous,
    continuous_solution,
)


class BacksolveAdjoint(AbstractAdjoint):
    """Optimise-then-discretise with O(1) memory: the forward pass keeps only the
    saved values; the backward pass integrates `(y, a, a_θ)` from `t1` back to
    `t0`, re-solving the primal ODE backward in time alongside the adjoint
    `a' = -(df/dy)^T a` and the parameter cotangent `a_θ' = -(df/dθ)^T a`
    (R. T. Q. Chen, Y. Rubanova, J. Bettencourt and D. Duvenaud, "Neural ordinary
    differential equations", NeurIPS 2018; the adjoint equations themselves are
    classical, e.g. Y. Cao, S. Li, L. Petzold and R. Serban, "Adjoint sensitivity
    analysis for differential-algebraic equations", SIAM J. Sci. Comput. 24,
    2003).

    The gradient is that of the continuous problem, approximated to the backward
    solve's tolerance: it differs from the discrete gradient of the computed
    solution by O(tolerance).

    !!! warning
        Solving the primal backward in time is unstable for dissipative or stiff
        dynamics (contracting forward means expanding backward): the recomputed
        `y(t)` can drift far from the forward solution, and the gradient with
        it. `reanchor=True` resets `y` to the stored forward value at every save
        time, which helps only where there are save times. Prefer
        `InterpolatedAdjoint` or `QuadratureAdjoint` for such problems.

        The drift is checked, not just warned of: y0 is known, and so are the
        values saved at `SaveAt(ts=...)`. Where the `y` solved backward misses
        them by more than `1e4` times the tolerance (`max |Δy| / (atol + rtol
        |y|)` with the looser of the forward and backward controllers'; after
        constant steps, whose accuracy no tolerance states, by more than
        `1 + |y|`), or the backward solve fails, the gradient is refused with
        an error (with `solve(..., throw=False)`: NaN; `collect_backward_stats`
        reports the `reconstruction_error`).

    **Arguments:**

    - `solver`, `controller`: for the backward solve (default: the forward ones,
      except with an implicit backward solver and constant steps: then a
      `PIDController` at the solver's `rtol`/`atol` (else `10 sqrt(eps)`),
      starting with the forward's step and never longer, so that the backward
      solve controls its own error where an L-stable step would cross the
      adjoint's fast layers unresolved; `controller=ConstantStepSize()` takes
      the forward's steps). The same default holds for `InterpolatedAdjoint`
      and `QuadratureAdjoint`.
    - `max_steps`: the backward solve's budget of steps (on each stretch between
      save times). `None` (default): twice the forward solve's `max_steps`, since
      the adjoint system is larger than the primal and often needs more steps.
      Costs no memory.
    - `seminorm`: with an adaptive controller, leave `a_θ` out of the error norm
      (`adjoint_seminorm`). Often fewer backward steps; but `a_θ` is then not
      error-controlled, and where `df/dθ` varies faster than `y` and `a` it is
      integrated with steps too long for it. Off by default.
    - `reanchor`: at each `SaveAt(ts=...)` time, reset `y` to the forward value.

    Memory is independent of the number of steps. Statistics of the backward
    solve: `collect_backward_stats`. Reverse mode only; `SaveAt(steps=True)` and
    `SaveAt(dense=True)` are refused (save at `ts` instead).
    """

    solver: AbstractSolver | None = None
    controller: AbstractController | None = None
    max_steps: int | None = None
    seminorm: bool = False
    reanchor: bool = True

    def solve(self, problem: Problem) -> Solution:
        check_continuous(problem, "BacksolveAdjoint")
        spec = _Spec(
            primal=SolvedBackward(reanchor=self.reanchor),
            parameters=IntegratedParameters(seminorm=self.seminorm),
            solver=self.solver,
            controller=self.controller,
            max_steps=self.max_steps,
        )
        return continuous_solution(problem, spec)
