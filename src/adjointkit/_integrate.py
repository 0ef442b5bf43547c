"""The one stepping loop. Every adjoint runs its solves through `run`.

Three ways to run the same steps, chosen per solve:

- `scan`: a constant step size whose number of steps is known at trace time runs
  as a `lax.scan` of exactly that many steps. Fastest, and differentiable in both
  modes.
- `while`: otherwise, a `lax.while_loop` bounded by `max_steps`. Differentiable in
  forward mode only; adjoints that own their backward pass use it.
- `bounded`: a `lax.scan` over `max_steps` iterations that skips (by `lax.cond`)
  once the solve is done, so that reverse mode can differentiate it
  (`DirectAdjoint`). Stores `max_steps` iterations' worth of residuals.

A step is attempted, the controller accepts or rejects it, and every recorder is
told about it (`_recording.StepRecord`): that per-step hook is how adjoints keep
what they need without touching the loop.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int, PyTree, Real

from ._problem import Problem
from ._recording import AbstractRecorder, StepRecord
from ._solution import RESULTS
from ._tree import tree_all_finite, tree_where
from .controllers._constant import grid_time


class LoopState(eqx.Module):
    """The carry of the loop: where the solve is, and what it has recorded."""

    t: Real[Array, ""]
    tnext: Real[Array, ""]
    y: PyTree
    solver_state: PyTree
    controller_state: PyTree
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    result: RESULTS
    records: dict[str, PyTree]


def _dense_like(problem: Problem, f0: PyTree) -> PyTree:
    """The structure of the solver's `dense_info`, without computing a step."""
    t0 = problem.t0
    return jax.eval_shape(
        lambda: problem.solver.step(
            problem.vector_field, t0, t0, problem.y0, problem.args, f0
        )[2]
    )


def _init_records(problem, recorders, f0):
    dense_like = _dense_like(problem, f0)
    return {
        name: rec.init(problem.t0, problem.y0, f0, dense_like, problem.capacity)
        for name, rec in recorders.items()
    }


def _record_all(recorders, records, step: StepRecord):
    return {name: rec.record(records[name], step) for name, rec in recorders.items()}


def _end_tolerance(problem: Problem):
    """How close to `t1` a proposed step end is rounded onto `t1` (100 ulps of the
    interval's scale), so that the last step is never a sliver."""
    scale = jnp.maximum(jnp.abs(problem.t1), jnp.abs(problem.t1 - problem.t0))
    return 100 * jnp.finfo(problem.t1.dtype).eps * scale


def _clip_to_end(problem: Problem, tnext):
    tnext = jnp.minimum(tnext, problem.t1)
    return jnp.where(tnext >= problem.t1 - _end_tolerance(problem), problem.t1, tnext)


def init_state(problem: Problem, recorders: dict[str, AbstractRecorder]) -> LoopState:
    """The loop's state before its first step."""
    vf = problem.vector_field
    f0 = problem.solver.init(vf, problem.t0, problem.y0, problem.args)
    tnext, controller_state = problem.controller.init(
        vf,
        problem.solver,
        problem.t0,
        problem.t1,
        problem.y0,
        problem.args,
        problem.dt0,
        f0,
    )
    zero = jnp.asarray(0, jnp.int32)
    return LoopState(
        t=problem.t0,
        tnext=_clip_to_end(problem, tnext),
        y=problem.y0,
        solver_state=f0,
        controller_state=controller_state,
        num_steps=zero,
        num_accepted=zero,
        result=RESULTS.successful,
        records=_init_records(problem, recorders, f0),
    )


def attempt_step(
    problem: Problem, recorders: dict[str, AbstractRecorder], state: LoopState
) -> LoopState:
    """Attempt one step from `state.t` to `state.tnext`; accept or reject it."""
    solver, controller = problem.solver, problem.controller
    y1, y_error, dense_info, f1 = solver.step(
        problem.vector_field,
        state.t,
        state.tnext,
        state.y,
        problem.args,
        state.solver_state,
    )
    accept, next_t0, next_tnext, controller_state, failed = controller.adapt(
        state.t,
        state.tnext,
        state.y,
        y1,
        y_error,
        solver.error_order,
        state.controller_state,
    )
    records = _record_all(
        recorders,
        state.records,
        StepRecord(
            index=state.num_accepted,
            t0=state.t,
            t1=state.tnext,
            y0=state.y,
            y1=y1,
            f0=state.solver_state,
            f1=f1,
            dense_info=dense_info,
            accepted=accept,
        ),
    )
    next_tnext = _clip_to_end(problem, next_tnext)
    result = state.result
    if controller.adaptive:
        # A step that cannot be made: the controller gave up (dtmin), or the step
        # size fell to the floating-point limit. Name the cause: usually a state
        # that went NaN/inf, which the controller keeps rejecting.
        tiny = (
            10
            * jnp.finfo(next_t0.dtype).eps
            * jnp.maximum(jnp.abs(next_t0), jnp.abs(problem.t1 - problem.t0))
        )
        stuck = (next_t0 < problem.t1) & (next_tnext - next_t0 <= tiny)
        cause = RESULTS.where(
            tree_all_finite(y1), RESULTS.step_size_too_small, RESULTS.nonfinite_state
        )
        # The controller may refuse the step after the last one (say, below dtmin
        # because the interval ended): that is no failure once t1 is reached.
        failed = failed & (next_t0 < problem.t1)
        result = RESULTS.where(
            (failed | stuck) & (result == RESULTS.successful), cause, result
        )
    return LoopState(
        t=next_t0,
        tnext=next_tnext,
        y=tree_where(accept, y1, state.y),
        solver_state=tree_where(accept, f1, state.solver_state),
        controller_state=controller_state,
        num_steps=state.num_steps + 1,
        num_accepted=state.num_accepted + accept.astype(jnp.int32),
        result=result,
        records=records,
    )


def _not_done(problem: Problem, state: LoopState) -> Bool[Array, ""]:
    return (
        (state.t < problem.t1)
        & (state.result == RESULTS.successful)
        & (state.num_steps < problem.max_steps)
    )


def _run_grid(problem: Problem, recorders: dict[str, AbstractRecorder]) -> LoopState:
    """`num_steps` equal steps as a `lax.scan`."""
    n_total = problem.num_steps
    n_run = min(n_total, problem.max_steps)
    t0, t1 = problem.t0, problem.t1
    vf, solver = problem.vector_field, problem.solver
    f0 = solver.init(vf, t0, problem.y0, problem.args)
    records = _init_records(problem, recorders, f0)

    def body(carry, n):
        y, f, records = carry
        ta = grid_time(t0, t1, n, n_total)
        tb = grid_time(t0, t1, n + 1, n_total)
        y1, _, dense_info, f1 = solver.step(vf, ta, tb, y, problem.args, f)
        step = StepRecord(
            index=n,
            t0=ta,
            t1=tb,
            y0=y,
            y1=y1,
            f0=f,
            f1=f1,
            dense_info=dense_info,
            accepted=jnp.array(True),
        )
        return (y1, f1, _record_all(recorders, records, step)), None

    steps = jnp.arange(n_run, dtype=jnp.int32)
    (y, f, records), _ = lax.scan(body, (problem.y0, f0, records), steps)
    count = jnp.asarray(n_run, jnp.int32)
    result = RESULTS.successful if n_run == n_total else RESULTS.max_steps_reached
    t_end = grid_time(t0, t1, count, n_total)
    return LoopState(
        t=t_end,
        tnext=t_end,
        y=y,
        solver_state=f,
        controller_state=None,
        num_steps=count,
        num_accepted=count,
        result=result,
        records=records,
    )


def run(
    problem: Problem,
    recorders: dict[str, AbstractRecorder],
    *,
    differentiable: bool,
) -> LoopState:
    """Integrate `problem` from `t0` to `t1`, telling `recorders` about every step.

    **Arguments:**

    - `problem`: the validated solve.
    - `recorders`: what to keep, by name; their records come back in
      `LoopState.records` under the same names.
    - `differentiable`: whether reverse-mode differentiation through the loop
      must work (`DirectAdjoint`); otherwise a `lax.while_loop` is used when the
      number of steps is not known at trace time.

    **Returns:** the final `LoopState`. Its `result` says whether `t1` was reached
    (`max_steps_reached`, `step_size_too_small` and `nonfinite_state` otherwise).
    """
    if problem.num_steps is not None:
        state = _run_grid(problem, recorders)
    else:
        state = init_state(problem, recorders)
        cond = lambda s: _not_done(problem, s)  # noqa: E731
        body = lambda s: attempt_step(problem, recorders, s)  # noqa: E731
        if differentiable:

            def bounded_body(s, _):
                return lax.cond(cond(s), body, lambda x: x, s), None

            state, _ = lax.scan(bounded_body, state, None, length=problem.max_steps)
        else:
            state = lax.while_loop(cond, body, state)
        unfinished = (state.t < problem.t1) & (state.result == RESULTS.successful)
        state = eqx.tree_at(
            lambda s: s.result,
            state,
            RESULTS.where(unfinished, RESULTS.max_steps_reached, state.result),
        )
    finite = tree_all_finite(state.y)
    result = RESULTS.where(
        ~finite & (state.result == RESULTS.successful),
        RESULTS.nonfinite_state,
        state.result,
    )
    return eqx.tree_at(lambda s: s.result, state, result)


def num_f_evals(problem: Problem, state: LoopState) -> Int[Array, ""]:
    """Evaluations of `f` a run made: the initial one, the initial-step probe of an
    adaptive controller choosing `dt0`, and the solver's per-step cost."""
    extra = 1
    if problem.controller.adaptive and problem.dt0 is None:
        extra += 1
    return extra + state.num_steps * problem.solver.evals_per_step
