"""Turning a finished loop into the `Solution` that `SaveAt` asked for."""

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._integrate import Summary, num_f_evals
from ._problem import Problem
from ._solution import Solution


def _stack_parts(parts):
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return jtu.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def _one(x):
    return jtu.tree_map(lambda a: a[None], x)


def assemble_solution(
    problem: Problem,
    summary: Summary,
    *,
    ys_at_ts: PyTree | None,
    steps: tuple | None,
    dense: PyTree | None,
    extra_stats: dict | None = None,
) -> Solution:
    """The `Solution` of a finished loop, in the user's time.

    **Arguments:**

    - `problem`, `summary`: the solve and how its loop ended.
    - `ys_at_ts`: the values at `problem.ts` (stacked), however the adjoint obtained
      them; `None` if `ts` was not asked for.
    - `steps`: `(ts, ys)` buffers from `StepsRecorder`, or `None`.
    - `dense`: the `Trajectory` for `Solution.evaluate`, or `None`.
    - `extra_stats`: counters an adjoint adds (e.g. of its backward solve).
    """
    d = problem.direction
    t_dtype = problem.t0.dtype
    ts_parts, ys_parts = [], []
    if problem.save_t0:
        ts_parts.append(problem.t0[None])
        ys_parts.append(_one(problem.y0))
    if problem.ts is not None:
        ts_parts.append(problem.ts)
        ys_parts.append(ys_at_ts)
    if problem.save_steps:
        step_ts, step_ys = steps
        ts_parts.append(step_ts)
        ys_parts.append(step_ys)
    if problem.save_t1:
        ts_parts.append(problem.t1[None])
        ys_parts.append(_one(summary.y))
    ts = _stack_parts(ts_parts)
    if ts is not None and not _is_one(d):
        # Unused rows (adaptive `steps=True`) stay `+inf` whatever the direction.
        ts = jnp.where(jnp.isinf(ts), ts, jnp.asarray(d, t_dtype) * ts)
    stats = {
        "num_steps": summary.num_steps,
        "num_accepted_steps": summary.num_accepted,
        "num_rejected_steps": summary.num_steps - summary.num_accepted,
        "num_f_evals": num_f_evals(problem, summary.num_steps),
    }
    if extra_stats:
        stats.update(extra_stats)
    return Solution(
        t0=d * problem.t0 if not _is_one(d) else problem.t0,
        t1=d * problem.t1 if not _is_one(d) else problem.t1,
        ts=ts,
        ys=_stack_parts(ys_parts),
        stats=stats,
        result=summary.result,
        dense=dense,
        direction=d,
    )


def _is_one(d) -> bool:
    return isinstance(d, int) and d == 1
