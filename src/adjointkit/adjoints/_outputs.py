"""What a solve returns, for adjoints that own their backward pass: the recorders
that keep it, and the `Solution` built from them outside the custom VJP."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._integrate import Summary
from .._problem import Problem
from .._progress import ProgressRecorder
from .._recording import StepsRecorder, TrajectoryRecorder, TsRecorder, inexact
from .._saving import assemble_solution, zero_length_time_derivatives
from .._solution import Solution
from ..interpolation import DenseInterpolation, Trajectory


def saved_like(problem: Problem):
    """The structure of one saved value with `SaveAt(fn=...)` (a pytree of
    `jax.ShapeDtypeStruct`), or `None` when the state itself is saved."""
    if problem.save_fn is None:
        return None
    return eqx.filter_eval_shape(problem.save_fn, problem.t0, problem.y0)


def output_recorders(problem: Problem, *, differentiable: bool = False) -> dict:
    """What the solve returns, kept as it goes: values at `ts`, at every step, and
    the dense output. `differentiable`: reverse mode will differentiate the
    recording itself (`DirectAdjoint`).

    With `SaveAt(fn=...)` the recorders store `fn`'s value at each save time, not
    the state: this is the one place `fn` is applied to what the loop saves, so
    every adjoint that runs these recorders (and pulls back through them) gets it.
    """
    recorders = {}
    out_like = saved_like(problem)
    if problem.ts is not None:
        recorders["ts"] = TsRecorder(
            ts=problem.ts,
            solver=problem.solver,
            differentiable=differentiable,
            out_like=out_like,
        )
    if problem.save_steps:
        recorders["steps"] = StepsRecorder(out_like=out_like)
    if problem.dense:
        recorders["dense"] = TrajectoryRecorder(
            interpolation=DenseInterpolation(), solver=problem.solver
        )
    if problem.progress_meter is not None:
        recorders["progress"] = ProgressRecorder(
            meter=problem.progress_meter, t0=problem.t0, t1=problem.t1
        )
    return recorders


def zeros_where_none(ct, like):
    """A cotangent for `like` with explicit zeros where `ct` has none."""
    like = inexact(like)
    if ct is None:
        return jtu.tree_map(jnp.zeros_like, like)
    return jtu.tree_map(
        lambda x, c: None if x is None else (jnp.zeros_like(x) if c is None else c),
        like,
        ct,
        is_leaf=lambda x: x is None,
    )


def tree_add(a, b):
    return jtu.tree_map(jnp.add, a, b)


def plain_records(records: dict) -> dict:
    """Records without their non-array parts (a `Trajectory`'s interpolation and
    solver), as a custom-VJP output must be."""
    return {
        name: (rec.times, rec.points, rec.steps, rec.count)
        if isinstance(rec, Trajectory)
        else rec
        for name, rec in records.items()
    }


def values_at_ts(ys_at_ts, summary: Summary, y0):
    """The values recorded at `SaveAt(ts=...)`, with `y0` at the save times that
    no step reached because none was accepted: `t0 == t1`, where y = y0, or a
    first step that failed, where the times at t0 have y0 (`assemble_solution`
    fills the others with inf)."""
    return jtu.tree_map(
        lambda ys, y: jnp.where(summary.num_accepted > 0, ys, y[None]), ys_at_ts, y0
    )


def solution_from_records(
    problem: Problem, summary: Summary, records: dict, *, discrete: bool
) -> Solution:
    """The `Solution` from a custom VJP's outputs (`plain_records` of the output
    recorders). `discrete`: the adjoint differentiates its steps, so a solve of zero
    length gets its time derivatives from `zero_length_time_derivatives`.

    With `SaveAt(fn=...)` the records at `ts` (and `steps`) already hold `fn`'s
    values; a problem whose `save_fn` is `None` here but which the caller will
    wrap (see `apply_save_fn`) is handled by the caller."""
    if problem.ts is not None and problem.save_fn is not None:
        return _solution_with_saved_fn(problem, summary, records, discrete=discrete)
    ys_at_ts = None
    if problem.ts is not None:
        ys_at_ts = values_at_ts(records["ts"][0], summary, problem.y0)
    if discrete or problem.ts is not None:
        # The `where` above hides the saved values of a zero-length solve from the
        # custom VJP, so every adjoint adds their time derivatives here; the
        # continuous adjoints' end value has them in its formulas already.
        y1, ys_at_ts = zero_length_time_derivatives(problem, summary, ys_at_ts)
        if discrete:
            summary = eqx.tree_at(lambda s: s.y, summary, y1)
    return _finish(problem, summary, records, ys_at_ts)


def _solution_with_saved_fn(problem, summary, records, *, discrete):
    """`solution_from_records` when the values at `ts` are `fn`'s."""
    recorded, _ = records["ts"]
    # What would be saved if no step were taken (only when t0 == t1): fn of y0,
    # with y0's first-order dependence on the save times and the ends.
    n = problem.ts.shape[0]
    y0s = jtu.tree_map(lambda y: jnp.broadcast_to(y, (n, *y.shape)), problem.y0)
    y1, y0s = zero_length_time_derivatives(problem, summary, y0s)
    fallback = jax.vmap(problem.save_fn)(problem.ts, y0s)
    ys_at_ts = jtu.tree_map(
        lambda r, b: jnp.where(summary.num_accepted > 0, r, b), recorded, fallback
    )
    if discrete:
        summary = eqx.tree_at(lambda s: s.y, summary, y1)
    return _finish(problem, summary, records, ys_at_ts)


def _finish(problem, summary, records, ys_at_ts):
    dense = None
    if problem.dense:
        times, points, steps, count = records["dense"]
        dense = Trajectory(
            times=times,
            points=points,
            steps=steps,
            count=count,
            interpolation=DenseInterpolation(),
            solver=problem.solver,
        )
    return assemble_solution(
        problem,
        summary,
        ys_at_ts=ys_at_ts,
        steps=records.get("steps"),
        dense=dense,
    )


def record_cotangents(records: dict, ct_plain) -> dict:
    """The cotangents of the output records, explicit zeros where none came."""
    cts = {}
    for name, rec in records.items():
        ct = None if ct_plain is None else ct_plain.get(name)
        if isinstance(rec, Trajectory):
            ct_times, ct_points, ct_steps, _ = ct if ct is not None else (None,) * 4
            ct = eqx.tree_at(
                lambda r: (r.times, r.points, r.steps),
                inexact(rec),
                (ct_times, ct_points, ct_steps),
                is_leaf=lambda x: x is None,
            )
        cts[name] = zeros_where_none(ct, rec)
    return cts
