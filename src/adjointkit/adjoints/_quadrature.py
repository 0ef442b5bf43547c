"""The adjoint ODE alone backward; the parameter cotangent by quadrature."""

from .._problem import Problem
from .._solution import Solution
from ..checkpointing import AbstractCheckpointSchedule
from ..controllers import AbstractController
from ..interpolation import AbstractInterpolation, HermiteInterpolation
from ..solvers import AbstractSolver
from ._base import AbstractAdjoint
from ._continuous import (
    QuadratureParameters,
    _Spec,
    check_continuous,
    continuous_solution,
    trajectory_source,
)


class QuadratureAdjoint(AbstractAdjoint):
    """Optimise-then-discretise with a backward solve the size of the state: the
    backward pass integrates the adjoint `a` alone (n components, not n plus the
    number of parameters), reading `y(t)` from an interpolation as
    `InterpolatedAdjoint` does, and accumulates `dL/dθ = ∫ a^T df/dθ dt` step by
    step: over each backward step, by Gauss--Legendre quadrature of `a^T df/dθ` at
    `quadrature_order` points, with `a` from the backward solver's dense output
    and `y` from the interpolation.

    The quadrature's error (its difference from the rule with one point fewer)
    joins the step's error estimate, so an adaptive backward solve keeps the
    parameter cotangent as accurate as the adjoint: where `df/dθ` varies faster
    than `a`, steps are shortened rather than the integral silently missed. Each
    backward step costs the solver's stages (products with `df/dy` only) plus
    `2 quadrature_order - 1` products with `df/dθ`. Reverse mode only;
    `SaveAt(steps=True)` and `SaveAt(dense=True)` are refused (save at `ts`
    instead).

    **Arguments:**

    - `interpolation`, `checkpoints`: as for `InterpolatedAdjoint`.
    - `quadrature_order`: Gauss--Legendre points per backward step (at least 2);
      the rule is exact for polynomials of degree `2 * order - 1`. `None`: the
      least order that matches the backward solver's order (3 for Tsit5).
    - `solver`, `controller`: for the backward solve (default: the forward ones;
      with an implicit backward solver and constant steps, an adaptive one that
      never steps past the forward's step, see `BacksolveAdjoint`).
    - `max_steps`: the backward solve's budget of steps (on each stretch between
      save times). `None` (default): twice the forward solve's `max_steps`, since
      the adjoint system is larger than the primal and often needs more steps.
      Costs no memory.

    References: R. Serban and A. C. Hindmarsh, "CVODES: the sensitivity-enabled
    ODE solver in SUNDIALS", ASME IDETC/CIE 2005 (the adjoint with the parameter
    integral as a backward quadrature); Y. Ma, V. Dixit, M. Innes, X. Guo and
    C. Rackauckas, "A comparison of automatic differentiation and continuous
    sensitivity analysis for derivatives of differential equation solutions",
    IEEE HPEC 2021 (interpolating and quadrature adjoints compared);
    Gauss--Legendre rules: M. Abramowitz and I. A. Stegun, *Handbook of
    Mathematical Functions*, 25.4.29.
    """

    interpolation: AbstractInterpolation = HermiteInterpolation()
    checkpoints: AbstractCheckpointSchedule | None = None
    quadrature_order: int | None = None
    solver: AbstractSolver | None = None
    controller: AbstractController | None = None
    max_steps: int | None = None

    def __check_init__(self):
        q = self.quadrature_order
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 2):
            raise ValueError(
                "QuadratureAdjoint: `quadrature_order` must be an integer >= 2 (its "
                f"error is estimated with one point fewer), got {q!r}."
            )

    def solve(self, problem: Problem) -> Solution:
        check_continuous(
            problem, "QuadratureAdjoint", self.interpolation, self.checkpoints
        )
        spec = _Spec(
            primal=trajectory_source(self.interpolation, self.checkpoints, problem),
            parameters=QuadratureParameters(order=self.quadrature_order),
            solver=self.solver,
            controller=self.controller,
            max_steps=self.max_steps,
        )
        return continuous_solution(problem, spec)
