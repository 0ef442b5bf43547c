"""Exact discrete gradients under a memory budget: replay steps from checkpoints."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from .._errors import explaining_forward_over_reverse
from .._integrate import init_records, make_stepper, run
from .._problem import Problem
from .._recording import inexact
from .._solution import Solution
from ..checkpointing import AbstractCheckpointSchedule, BinomialCheckpoints
from ..checkpointing._reverse import reverse_steps
from ..checkpointing._store import CheckpointRecorder
from ..solvers._dirk import AbstractImplicitRungeKutta
from ._base import AbstractAdjoint
from ._outputs import (
    output_recorders,
    plain_records,
    record_cotangents,
    solution_from_records,
    tree_add,
    zeros_where_none,
)


@eqx.filter_custom_vjp
def _solve(problem: Problem, schedule: AbstractCheckpointSchedule):
    summary, _, records = run(problem, output_recorders(problem), differentiable=False)
    return summary, plain_records(records)


@_solve.def_fwd
def _solve_fwd(perturbed, problem: Problem, schedule: AbstractCheckpointSchedule):
    del perturbed
    stepper = make_stepper(problem)
    plan = schedule.plan(problem.num_steps, problem.max_steps)
    kept_like = eqx.filter_eval_shape(
        lambda p: stepper.checkpoint(stepper.init(p)), problem
    )
    recorders = {
        **output_recorders(problem),
        "_checkpoints": CheckpointRecorder(
            plan=plan, stepper=stepper, kept_like=kept_like
        ),
    }
    decider = stepper.decision_recorder(problem)
    if decider is not None:
        recorders["_decisions"] = decider
    summary, final_state, records = run(problem, recorders, differentiable=False)
    checkpoints = records.pop("_checkpoints")
    decisions = records.pop("_decisions", None)
    # The loop's iterations, all of which the backward pass reverses (on a grid,
    # those after a failed step too, which changed nothing).
    num_steps = stepper.attempts(final_state)
    residuals = (final_state, checkpoints, decisions, num_steps, records)
    return (summary, plain_records(records)), residuals


@_solve.def_bwd
def _solve_bwd(residuals, grad_obj, perturbed, problem, schedule):
    del perturbed
    implicit = isinstance(problem.solver, AbstractImplicitRungeKutta)
    with explaining_forward_over_reverse(problem.solver, implicit):
        return _pull_back(residuals, grad_obj, problem, schedule)


def _pull_back(residuals, grad_obj, problem, schedule):
    final_state, checkpoints, decisions, num_steps, records = residuals
    ct_summary, ct_plain = grad_obj
    # Replays, and each step's pullback, retrace the forward pass's decisions.
    stepper = make_stepper(problem).replaying(decisions)
    plan = schedule.plan(problem.num_steps, problem.max_steps)
    recorders = output_recorders(problem)

    ct_y = zeros_where_none(None if ct_summary is None else ct_summary.y, final_state.y)
    ct_state = eqx.tree_at(
        lambda s: s.y,
        jtu.tree_map(jnp.zeros_like, inexact(final_state)),
        ct_y,
    )
    ct_records = record_cotangents(records, ct_plain)
    ct_problem = jtu.tree_map(jnp.zeros_like, inexact(problem))

    def leaf(carry, state, a):
        del a
        ct_next, ct_records, ct_problem = carry
        (_, step), vjp_fn = eqx.filter_vjp(
            lambda s, p: stepper.advance(p, s), state, problem
        )
        ct_step = jtu.tree_map(jnp.zeros_like, inexact(step))
        new_ct_records = {}
        for name, rec in recorders.items():
            ct_rec, ct_step_rec = rec.pullback(records[name], ct_records[name], step)
            new_ct_records[name] = zeros_where_none(ct_rec, records[name])
            ct_step = tree_add(ct_step, zeros_where_none(ct_step_rec, step))
        ct_state, ct_problem_step = vjp_fn((ct_next, ct_step))
        ct_state = zeros_where_none(ct_state, state)
        ct_problem = tree_add(ct_problem, zeros_where_none(ct_problem_step, problem))
        return ct_state, new_ct_records, ct_problem

    (ct_state0, ct_records, ct_problem), _ = reverse_steps(
        problem,
        stepper,
        plan,
        checkpoints,
        num_steps,
        final_state,
        leaf,
        (ct_state, ct_records, ct_problem),
    )

    def initial(p: Problem):
        state0 = make_stepper(p).init(p)
        return state0, init_records(p, output_recorders(p), state0.f)

    _, vjp_init = eqx.filter_vjp(initial, problem)
    (ct_problem_init,) = vjp_init((ct_state0, ct_records))
    return tree_add(ct_problem, zeros_where_none(ct_problem_init, problem))


class CheckpointedAdjoint(AbstractAdjoint):
    """Discretise-then-optimise under a memory budget: the exact gradient of the
    computed solution (the same as `DirectAdjoint`'s, to rounding), keeping only
    the step states a checkpoint schedule chooses.

    The forward pass runs the solve once, keeping checkpoints; the backward pass
    (a custom VJP around the whole solve) replays steps from them and pulls back
    through one step at a time with `jax.vjp` of a single solver step. Values saved
    at `SaveAt(ts=...)`, at every step, or as dense output are pulled back at the
    step that wrote them. Step sizes are not differentiated (as everywhere). With
    adaptive steps the forward pass also records each attempt's accept/reject
    decision and proposed step end (two scalars per attempt, up to `max_steps`),
    and every replay reuses them: re-running the controller on replayed values
    could decide otherwise by rounding, and differentiate steps never taken.

    Reverse mode only: `jax.jvp` through it raises an error (use `DirectAdjoint`
    for forward mode).

    **Arguments:**

    - `schedule`: `BinomialCheckpoints(num_checkpoints)` (the default, with a
      number of checkpoints chosen from the number of steps), `AllSteps()`, or
      `EveryKSteps(k)`.

    References: A. Griewank and A. Walther, "Algorithm 799: Revolve", ACM TOMS
    26, 2000 (binomial checkpointing); J. M. Sanz-Serna, SIAM Review 58, 2016
    (the discrete adjoint of a Runge--Kutta method).
    """

    schedule: AbstractCheckpointSchedule = BinomialCheckpoints()

    def solve(self, problem: Problem) -> Solution:
        summary, records = _solve(problem, self.schedule)
        return solution_from_records(problem, summary, records, discrete=True)
