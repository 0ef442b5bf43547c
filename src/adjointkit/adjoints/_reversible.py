"""Exact discrete gradients in memory independent of the number of steps: run a
reversible solver's steps backward."""

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._integrate import configured_solver, init_records, run
from .._problem import Problem
from .._recording import AbstractRecorder, StepRecord, inexact
from .._solution import Solution
from ..controllers._constant import grid_time, num_constant_steps
from ..solvers._reversible import AbstractReversibleSolver
from ._base import AbstractAdjoint
from ._outputs import (
    output_recorders,
    plain_records,
    record_cotangents,
    solution_from_records,
    tree_add,
    zeros_where_none,
)


class AcceptedTimesRecorder(AbstractRecorder):
    """The end time of every accepted step: `times[0] = t0`, `times[n + 1]` the
    end of step `n`. One scalar per step, all an adaptive solve's backward pass
    needs to retrace its steps. (A rejected attempt writes where the attempt
    that follows it, with the same index, writes again.)"""

    def init(self, t0, y0, f0, dense_like, capacity):
        del y0, f0, dense_like
        return jnp.full((capacity + 1,), jnp.inf, t0.dtype).at[0].set(t0)

    def record(self, state, step):
        return state.at[step.index + 1].set(step.t1)

    def pullback(self, state, ct_state, step):
        raise TypeError(
            "accepted step times are kept for the backward pass, not returned: "
            "there is nothing to pull back through them."
        )


def _step_time(problem: Problem, times, num_accepted, n):
    """The start of accepted step `n` (the end of step `n - 1`), with the
    derivatives with respect to `t0` and `t1` that the forward loop gives it.

    A grid's times are `grid_time(t0, t1, n, N)`, as the forward pass computed
    them. An adaptive controller's are `t0` plus step sizes that are not
    differentiated, except the last, which ends exactly at `t1`: the recorded
    value, with the derivative of `t0` (or of `t1` for the end).
    """
    if problem.num_steps is not None:
        return grid_time(problem.t0, problem.t1, n, problem.num_steps)
    if not problem.controller.adaptive:
        count = jnp.maximum(num_constant_steps(problem.t0, problem.t1, problem.dt0), 1)
        return grid_time(problem.t0, problem.t1, n, count)
    recorded = times[n]
    t0, t1 = problem.t0, problem.t1
    at_end = (n == num_accepted) & (recorded == lax.stop_gradient(t1))
    return jnp.where(
        at_end,
        t1 + (recorded - lax.stop_gradient(t1)),
        recorded + (t0 - lax.stop_gradient(t0)),
    )


def _initial(problem: Problem):
    state0 = configured_solver(problem).init(
        problem.vector_field, problem.t0, problem.y0, problem.args
    )
    records = init_records(problem, output_recorders(problem), state0)
    return (problem.y0, state0), records


@eqx.filter_custom_vjp
def _solve(problem: Problem, recompute_stages: bool):
    del recompute_stages
    summary, _, records = run(problem, output_recorders(problem), differentiable=False)
    return summary, plain_records(records)


@_solve.def_fwd
def _solve_fwd(perturbed, problem: Problem, recompute_stages: bool):
    del perturbed, recompute_stages
    recorders = output_recorders(problem)
    adaptive = problem.num_steps is None and problem.controller.adaptive
    if adaptive:
        recorders["_times"] = AcceptedTimesRecorder()
    summary, final_state, records = run(problem, recorders, differentiable=False)
    times = records.pop("_times", None)
    residuals = (final_state.y, final_state.f, times, summary.num_accepted, records)
    return (summary, plain_records(records)), residuals


@_solve.def_bwd
def _solve_bwd(
    residuals, grad_obj, perturbed, problem: Problem, recompute_stages: bool
):
    del perturbed
    y_end, state_end, times_kept, num_accepted, records = residuals
    ct_summary, ct_plain = grad_obj
    solver = configured_solver(problem)
    recorders = output_recorders(problem)

    ct_y = zeros_where_none(None if ct_summary is None else ct_summary.y, y_end)
    ct_state = jtu.tree_map(jnp.zeros_like, inexact(state_end))
    ct_records = record_cotangents(records, ct_plain)
    ct_problem = jtu.tree_map(jnp.zeros_like, inexact(problem))

    def body(i, carry):
        y, state, ct_y, ct_state, ct_records, ct_problem = carry
        n = num_accepted - 1 - i

        def times(p):
            return (
                _step_time(p, times_kept, num_accepted, n),
                _step_time(p, times_kept, num_accepted, n + 1),
            )

        def unpack(p):
            return (p.vector_field, *times(p), p.args)

        record_pullback = None
        if recorders:

            def record_pullback(y0, y1, f0, f1, dense_info):
                # What was saved from step n, pulled back into its values.
                ta, tb = times(problem)
                step = StepRecord(
                    attempt=n,
                    index=n,
                    t0=ta,
                    t1=tb,
                    y0=y0,
                    y1=y1,
                    f0=f0,
                    f1=f1,
                    dense_info=dense_info,
                    accepted=jnp.array(True),
                    state=None,
                    save_fn=problem.save_fn,
                )
                ct_step = jtu.tree_map(jnp.zeros_like, inexact(step))
                new_ct_records = {}
                for name, rec in recorders.items():
                    ct_rec, ct_step_rec = rec.pullback(
                        records[name], ct_records[name], step
                    )
                    new_ct_records[name] = zeros_where_none(ct_rec, records[name])
                    ct_step = tree_add(ct_step, zeros_where_none(ct_step_rec, step))
                # The save times, and what SaveAt(fn=...) closes over.
                _, vjp_times = eqx.filter_vjp(lambda p: (times(p), p.save_fn), problem)
                (ct_p_times,) = vjp_times(((ct_step.t0, ct_step.t1), ct_step.save_fn))
                cts = (ct_step.y0, ct_step.y1, ct_step.f0, ct_step.f1)
                return (*cts, ct_step.dense_info), (new_ct_records, ct_p_times)

        y, state, ct_p, ct_y, ct_state, aux = solver.reverse_step(
            unpack,
            problem,
            y,
            state,
            ct_y,
            ct_state,
            record_pullback,
            recompute_stages=recompute_stages,
        )
        ct_problem = tree_add(ct_problem, zeros_where_none(ct_p, problem))
        if aux is not None:
            ct_records, ct_p_times = aux
            ct_problem = tree_add(ct_problem, zeros_where_none(ct_p_times, problem))
        ct_y = zeros_where_none(ct_y, y)
        ct_state = zeros_where_none(ct_state, state)
        return y, state, ct_y, ct_state, ct_records, ct_problem

    carry = (y_end, state_end, ct_y, ct_state, ct_records, ct_problem)
    _, _, ct_y, ct_state, ct_records, ct_problem = lax.fori_loop(
        0, num_accepted, body, carry
    )
    _, vjp_init = eqx.filter_vjp(_initial, problem)
    (ct_problem_init,) = vjp_init(((ct_y, ct_state), ct_records))
    return tree_add(ct_problem, zeros_where_none(ct_problem_init, problem))


class ReversibleAdjoint(AbstractAdjoint):
    """Discretise-then-optimise in memory independent of the number of steps: the
    exact gradient of the computed solution (`DirectAdjoint`'s, up to the rounding
    of the reconstruction), for a reversible solver (`Reversible(...)`,
    `ReversibleHeun()`).

    The forward pass keeps no state but the last. The backward pass (a custom VJP
    around the whole solve) undoes the steps one at a time, last first, with the
    solver's `backward_step`, and pulls the cotangent back through each step with
    `jax.vjp` of that step taken afresh from the reconstructed state; values saved
    at `SaveAt(ts=...)`, at every step, or as dense output are pulled back at the
    step that wrote them. Time and memory: one forward solve, then per step one
    inverse step and one step's VJP; the memory of one step, whatever the number
    of steps. With adaptive steps the forward pass keeps each accepted step's end
    time (one scalar per step, up to `max_steps`), so the backward pass retraces
    exactly the steps taken; rejected attempts cost nothing backward. Step sizes
    are not differentiated (as everywhere), except through `t0` and `t1`.

    The reconstruction is exact in exact arithmetic; in floating point its rounding
    errors are amplified as the solver's docstring describes (for `Reversible`,
    by about `e^(|Re μ| T)` on a mode decaying at rate `μ`, and by `λ^(-N)`-like
    factors over `N` steps), so on strongly dissipative problems or in float32 the
    gradient can lose accuracy; see "Choosing an adjoint" in the documentation.

    A solver that is not an `AbstractReversibleSolver` raises a `TypeError`.
    Reverse mode only: `jax.jvp` through it raises an error (use `DirectAdjoint`
    for forward mode).

    **Arguments:**

    - `recompute_stages`: for `Reversible(...)`, pull each base step back one
      stage at a time, evaluating that stage's `f` again, so that the backward
      pass holds the intermediate values of one evaluation of `f` (a Neural
      ODE's hidden activations) instead of a whole base step's `s`. It costs
      `2 s` more evaluations of `f` per step (one more where the step saved
      something): 1.17x the time, for 0.55x the memory, on the Neural ODE of
      `benchmarks/reversible.py`. Default `False`.

    References: S. McCallum and J. Foster, "Efficient, accurate and stable
    gradients for Neural ODEs", arXiv:2410.11648, 2024; P. Kidger, J. Foster, X. Li
    and T. Lyons, "Efficient and accurate gradients for neural SDEs", NeurIPS 2021
    (algebraically reversible solvers and their backpropagation).
    """

    recompute_stages: bool = eqx.field(default=False, static=True)

    def solve(self, problem: Problem) -> Solution:
        if not isinstance(problem.solver, AbstractReversibleSolver):
            raise TypeError(
                "ReversibleAdjoint needs a reversible solver, one whose steps can be "
                "undone: `Reversible(solver)` around an explicit Runge--Kutta "
                f"method, or `ReversibleHeun()`; got {type(problem.solver).__name__}. "
                "Wrap it, e.g. `ak.Reversible(ak.Tsit5())`, or use another adjoint."
            )
        summary, records = _solve(problem, self.recompute_stages)
        return solution_from_records(problem, summary, records, discrete=True)
