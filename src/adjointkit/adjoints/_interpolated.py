"""The adjoint ODE run backward, reading y(t) from an interpolation."""

from .._problem import Problem
from .._solution import Solution
from ..checkpointing import AbstractCheckpointSchedule
from ..controllers import AbstractController
from ..interpolation import AbstractInterpolation, HermiteInterpolation
from ..solvers import AbstractSolver
from ._base import AbstractAdjoint
from ._continuous import (
    IntegratedParameters,
    QuadratureParameters,
    _Spec,
    check_continuous,
    continuous_solution,
    trajectory_source,
)


class InterpolatedAdjoint(AbstractAdjoint):
    """Optimise-then-discretise reading the forward solution from an interpolation:
    the forward pass keeps interpolation data for every step; the backward pass
    integrates `(a, a_θ)` from `t1` back to `t0`, evaluating `df/dy` and `df/dθ`
    at `y(t)` interpolated from the forward solve. Stable where
    `BacksolveAdjoint` is not (no primal solve backward in time).

    With checkpoints the forward pass keeps only some states; the backward pass
    replays one stretch of steps at a time from a kept state to rebuild that
    stretch's interpolation, then integrates the adjoint across it (the scheme of
    SUNDIALS CVODES; A. C. Hindmarsh et al., ACM TOMS 31, 2005), at the cost of
    re-running every forward step once: with `EveryKSteps(k)`, memory about
    `N / k + k` states instead of `N`. This is the default with adaptive steps,
    whose storage would otherwise be sized by `max_steps`, however few steps the
    solve takes: `c ~ sqrt(2 max_steps)` kept states and stretches of at most
    about `max_steps / c` steps (89 and 64 for `max_steps=4096`).

    With an implicit backward solver (one that evaluates Jacobians, e.g.
    `Kvaerno5`, `Rodas5`), `a_θ` is kept out of its Newton matrix: `a_θ` never
    feeds back into `a`, so the solver steps `a` alone (an `n × n` matrix, not
    `(n + p) × (n + p)`) and `a_θ` is integrated over each step by an
    error-controlled quadrature, as `QuadratureAdjoint` does and as SUNDIALS
    CVODES treats quadrature variables (`seminorm` then has no effect).

    The gradient is that of the continuous problem, to the backward solve's and
    the interpolation's accuracy. Reverse mode only; `SaveAt(steps=True)` and
    `SaveAt(dense=True)` are refused (save at `ts` instead).

    **Arguments:**

    - `interpolation`: `HermiteInterpolation()` (default: y and f per step, error
      O(h⁴)), `DenseInterpolation()` (the solver's own dense output: all its
      stages per step, its own order) or `LinearInterpolation()` (y per step,
      O(h²)).
    - `checkpoints`: `None` (default): every step's data when the number of
      steps is known at trace time (constant steps), else `BinomialCheckpoints()`.
      `AllSteps()`: every step's data (with adaptive steps, room for `max_steps`
      of it). `EveryKSteps(k)`: the state before every `k`-th step.
      `BinomialCheckpoints(c)`: `c` states, every `ceil(N / c)`-th for `N` known
      steps, else every `s`-th with `s` doubling whenever they fill.
    - `solver`, `controller`: for the backward solve (default: the forward ones;
      with an implicit backward solver and constant steps, an adaptive one that
      never steps past the forward's step, see `BacksolveAdjoint`).
    - `max_steps`: the backward solve's budget of steps (on each stretch between
      save times). `None` (default): twice the forward solve's `max_steps`, since
      the adjoint system is larger than the primal and often needs more steps.
      Costs no memory.
    - `seminorm`: with an adaptive controller, leave `a_θ` out of the error norm
      (`adjoint_seminorm`). Often fewer backward steps; but `a_θ` is then not
      error-controlled, and where `df/dθ` varies faster than `a` it is integrated
      with steps too long for it (a gradient 200% off in
      `test_seminorm_can_miss_a_fast_parameter_integrand`). Off by default; prefer
      `QuadratureAdjoint`, which controls its parameter integral's error.
    """

    interpolation: AbstractInterpolation = HermiteInterpolation()
    checkpoints: AbstractCheckpointSchedule | None = None
    solver: AbstractSolver | None = None
    controller: AbstractController | None = None
    max_steps: int | None = None
    seminorm: bool = False

    def solve(self, problem: Problem) -> Solution:
        check_continuous(
            problem, "InterpolatedAdjoint", self.interpolation, self.checkpoints
        )
        backward = self.solver if self.solver is not None else problem.solver
        if backward.evaluates_jacobian:
            # Integrated with `a`, `a_θ` would enlarge every linear solve of an
            # implicit step by p rows while not feeding back into `a`.
            parameters = QuadratureParameters(order=None)
        else:
            parameters = IntegratedParameters(seminorm=self.seminorm)
        spec = _Spec(
            primal=trajectory_source(self.interpolation, self.checkpoints, problem),
            parameters=parameters,
            solver=self.solver,
            controller=self.controller,
            max_steps=self.max_steps,
        )
        return continuous_solution(problem, spec)
