"""Losses of a benchmark problem solved by adjointkit or by Diffrax, side by side.

Both solve with the same method (the problem's: Tsit5 for the non-stiff problems,
Kvaerno5 for the stiff ones, unless told), either with the same constant steps or
with the same PID control (`atol = problem.atol_scale * rtol`), and report the
number of forward evaluations of the vector field, so that every benchmark
compares like with like. The implicit solvers take their Newton tolerances from
the controller in both libraries (Diffrax's default root finder does the same).
"""

from collections.abc import Callable

import jax.numpy as jnp

from ._problems import BenchProblem


_CLASSES = {
    "tsit5": "Tsit5",
    "dopri5": "Dopri5",
    "bosh3": "Bosh3",
    "implicit_euler": "ImplicitEuler",
    "kvaerno3": "Kvaerno3",
    "kvaerno5": "Kvaerno5",
    "rodas5": "Rodas5",
}
SOLVERS = tuple(_CLASSES)
# Evaluations of f per attempted step that a counter in f sees, for the FSAL
# explicit methods (one more to start): Diffrax reports no count of its own.
_EXPLICIT_EVALS_PER_STEP = {"tsit5": 6, "dopri5": 6, "bosh3": 3}


def _solver(library, name: str):
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}.")
    if not hasattr(library, _CLASSES[name]):
        raise ValueError(f"{library.__name__} has no {_CLASSES[name]} solver.")
    return getattr(library, _CLASSES[name])()


def _settings(problem: BenchProblem, rtol, solver):
    """`(solver name, atol)`: the problem's own solver unless told, and its atol
    for `rtol` (None with constant steps)."""
    solver = problem.solver if solver is None else solver
    atol = None if rtol is None else problem.atol_scale * rtol
    return solver, atol


def _field_and_args(problem: BenchProblem, params, closure: bool):
    """`(f, args)` for a solve: the parameters passed as `args`, or (`closure`)
    closed over by `f`, as in an Equinox model whose weights are its fields."""
    if closure:
        return (lambda t, y, args: problem.f(t, y, params)), None
    return problem.f, params


def adjointkit_solve(
    problem: BenchProblem,
    params,
    steps: int,
    rtol: float | None = None,
    *,
    solver: str | None = None,
    closure: bool = False,
    **options,
):
    """`problem` solved by adjointkit: `steps` constant steps, or, with `rtol`,
    adaptive steps (at most `steps`). `solver`: a name in `SOLVERS` (default:
    the problem's). `closure`: `f` closes over `params` instead of taking them
    as `args`. `options` go to `solve`. With `adjoint=ReversibleAdjoint()` the
    solver is wrapped in `Reversible` (default coupling), which that adjoint
    needs."""
    import adjointkit as ak

    solver, atol = _settings(problem, rtol, solver)
    solver_object = _solver(ak, solver)
    if isinstance(options.get("adjoint"), ak.ReversibleAdjoint):
        solver_object = ak.Reversible(solver_object)
    if rtol is None:
        step_options = dict(dt0=(problem.t1 - problem.t0) / steps)
    else:
        step_options = dict(controller=ak.PIDController(rtol=rtol, atol=atol))
    f, args = _field_and_args(problem, params, closure)
    return ak.solve(
        f,
        solver_object,
        problem.t0,
        problem.t1,
        problem.y0,
        args,
        max_steps=steps,
        **step_options,
        **options,
    )


def adjointkit_loss(
    problem: BenchProblem,
    adjoint,
    steps: int,
    rtol: float | None = None,
    *,
    solver: str | None = None,
    closure: bool = False,
) -> Callable:
    """`params -> (loss, f-evaluations)` with adjointkit: `steps` constant steps,
    or, with `rtol`, adaptive steps (at most `steps`)."""

    def loss(params):
        sol = adjointkit_solve(
            problem,
            params,
            steps,
            rtol,
            solver=solver,
            closure=closure,
            adjoint=adjoint,
        )
        return problem.loss(sol.ys[-1]), sol.stats["num_f_evals"]

    return loss


def diffrax_solve(
    problem: BenchProblem,
    params,
    steps: int,
    rtol: float | None = None,
    *,
    solver: str | None = None,
    closure: bool = False,
    **options,
):
    """`problem` solved by Diffrax: `steps` constant steps, or, with `rtol`,
    adaptive steps (at most `steps`), with `params` as `args` or (`closure`)
    closed over by `f`. `solver`: a name in `SOLVERS` (default: the problem's).
    `options` go to `diffeqsolve`.

    `dt0 = (t1 - t0) / steps` divides the interval exactly, so Diffrax's constant
    grid (a first step of `dt0`, then equal steps) is adjointkit's.
    """
    import diffrax

    solver, atol = _settings(problem, rtol, solver)
    if rtol is None:
        dt0, controller = (problem.t1 - problem.t0) / steps, diffrax.ConstantStepSize()
    else:
        dt0, controller = None, diffrax.PIDController(rtol=rtol, atol=atol)
    f, args = _field_and_args(problem, params, closure)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(f),
        _solver(diffrax, solver),
        problem.t0,
        problem.t1,
        dt0,
        problem.y0,
        args,
        stepsize_controller=controller,
        max_steps=steps,
        **options,
    )


def diffrax_loss(
    problem: BenchProblem,
    adjoint,
    steps: int,
    rtol: float | None = None,
    *,
    solver: str | None = None,
    closure: bool = False,
) -> Callable:
    """`params -> (loss, f-evaluations)` with Diffrax: `steps` constant steps, or,
    with `rtol`, adaptive steps (at most `steps`). The count is derived from the
    steps taken for the explicit methods; for the implicit ones, whose Newton
    iterations Diffrax does not report, it is `None` (count with
    `count_f_evals`)."""
    solver, _ = _settings(problem, None, solver)

    def loss(params):
        sol = diffrax_solve(
            problem,
            params,
            steps,
            rtol,
            solver=solver,
            closure=closure,
            adjoint=adjoint,
        )
        # Diffrax reports no evaluation count. For an FSAL method of s stages
        # (Tsit5, Dopri5: 7; Bosh3: 4), one plus s - 1 per attempted step is what
        # a counter in f sees, with constant steps and with PID control alike
        # (tests/test_harness.py checks it for Tsit5).
        if solver not in _EXPLICIT_EVALS_PER_STEP:
            return problem.loss(sol.ys[-1]), None
        per_step = _EXPLICIT_EVALS_PER_STEP[solver]
        return problem.loss(sol.ys[-1]), 1 + per_step * jnp.asarray(
            sol.stats["num_steps"]
        )

    return loss


def diffrax_default_checkpoints(max_steps: int) -> int:
    """The number of checkpoints Diffrax's `RecursiveCheckpointAdjoint()` uses for
    `max_steps` (Equinox's `checkpointed_while_loop` rule: the least c with
    (c + 1)(c + 2) > 2 max_steps)."""
    c = 1
    while (c + 1) * (c + 2) <= 2 * max_steps:
        c += 1
    return c
