"""What a solve returns, for adjoints that own their backward pass: the recorders
that keep it, and the `Solution` built from them outside the custom VJP."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from .._integrate import Summary
from .._problem import Problem
from .._recording import StepsRecorder, TrajectoryRecorder, TsRecorder, inexact
from .._saving import assemble_solution, zero_length_time_derivatives
from .._solution import Solution
from ..interpolation import DenseInterpolation, Trajectory


def output_recorders(problem: Problem, *, differentiable: bool = False) -> dict:
    """What the solve returns, kept as it goes: values at `ts`, at every step, and
    the dense output. `differentiable`: reverse mode will differentiate the
    recording itself (`DirectAdjoint`)."""
    recorders = {}
    if problem.ts is not None:
        recorders["ts"] = TsRecorder(
            ts=problem.ts, solver=problem.solver, differentiable=differentiable
        )
    if problem.save_steps:
        recorders["steps"] = StepsRecorder()
    if problem.dense:
        recorders["dense"] = TrajectoryRecorder(
            interpolation=DenseInterpolation(), solver=problem.solver
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


def solution_from_records(
    problem: Problem, summary: Summary, records: dict, *, discrete: bool
) -> Solution:
    """The `Solution` from a custom VJP's outputs (`plain_records` of the output
    recorders). `discrete`: the adjoint differentiates its steps, so a solve of zero
    length gets its time derivatives from `zero_length_time_derivatives`."""
    ys_at_ts = None
    if problem.ts is not None:
        ys_at_ts, _ = records["ts"]
        # Save times no step reached: only when t0 == t1, where y = y0.
        ys_at_ts = jtu.tree_map(
            lambda ys, y0: jnp.where(summary.num_accepted > 0, ys, y0[None]),
            ys_at_ts,
            problem.y0,
        )
    if discrete or problem.ts is not None:
        # The `where` above hides the saved values of a zero-length solve from the
        # custom VJP, so every adjoint adds their time derivatives here; the
        # continuous adjoints' end value has them in its formulas already.
        y1, ys_at_ts = zero_length_time_derivatives(problem, summary, ys_at_ts)
        if discrete:
            summary = eqx.tree_at(lambda s: s.y, summary, y1)
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
