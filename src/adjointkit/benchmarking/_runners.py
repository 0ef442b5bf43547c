"""Losses of a benchmark problem solved by adjointkit or by Diffrax, side by side.

Both solve with Tsit5 and the same constant steps, and report the number of
forward evaluations of the vector field, so that every benchmark compares like
with like.
"""

from collections.abc import Callable

import jax.numpy as jnp

from ._problems import BenchProblem


def adjointkit_loss(problem: BenchProblem, adjoint, steps: int) -> Callable:
    """`params -> (loss, f-evaluations)` with adjointkit, `steps` constant steps."""
    import adjointkit as ak

    dt0 = (problem.t1 - problem.t0) / steps

    def loss(params):
        sol = ak.solve(
            problem.f,
            ak.Tsit5(),
            problem.t0,
            problem.t1,
            problem.y0,
            params,
            dt0=dt0,
            adjoint=adjoint,
            max_steps=steps,
        )
        return problem.loss(sol.ys[-1]), sol.stats["num_f_evals"]

    return loss


def diffrax_loss(problem: BenchProblem, adjoint, steps: int) -> Callable:
    """`params -> (loss, f-evaluations)` with Diffrax, `steps` constant steps.

    `dt0 = (t1 - t0) / steps` divides the interval exactly, so Diffrax's grid (a
    first step of `dt0`, then equal steps) is adjointkit's.
    """
    import diffrax

    dt0 = (problem.t1 - problem.t0) / steps

    def loss(params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(problem.f),
            diffrax.Tsit5(),
            problem.t0,
            problem.t1,
            dt0,
            problem.y0,
            params,
            adjoint=adjoint,
            max_steps=steps,
        )
        # Tsit5 is FSAL: one evaluation to start, six per step.
        return problem.loss(sol.ys[-1]), 1 + 6 * jnp.asarray(sol.stats["num_steps"])

    return loss


def diffrax_default_checkpoints(max_steps: int) -> int:
    """The number of checkpoints Diffrax's `RecursiveCheckpointAdjoint()` uses for
    `max_steps` (Equinox's `checkpointed_while_loop` rule: the least c with
    (c + 1)(c + 2) > 2 max_steps)."""
    c = 1
    while (c + 1) * (c + 2) <= 2 * max_steps:
        c += 1
    return c
