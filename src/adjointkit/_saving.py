"""Turning a finished loop into the `Solution` that `SaveAt` asked for."""

import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._errors import concrete_value
from ._integrate import Summary, num_f_evals
from ._problem import Problem
from ._solution import RESULTS, Solution


def _stack_parts(parts):
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return jtu.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def _one(x):
    return jtu.tree_map(lambda a: a[None], x)


def zero_length_time_derivatives(
    problem: Problem, summary: Summary, ys_at_ts: PyTree | None
) -> tuple[PyTree, PyTree | None]:
    """The end value and the values at `ts`, with the derivatives in `t0`, `t1` and
    `ts` that a solve of zero length has.

    When `t0 == t1` no step is taken and the loop's values do not depend on the
    times at all; yet y(t1) = y0 + (t1 - t0) f(t0, y0) + O((t1 - t0)^2), so dy(t1)/dt1
    = f and dy(t1)/dt0 = -f there (the limit of the discrete solution's derivative
    as well: one step of length t1 - t0). This adds `(t - stop_gradient(t)) f`
    terms, zero in value, for solves that took no step. Every adjoint uses it for
    the values at `ts`; for the end value only the discrete ones do (the
    continuous ones have its time derivatives in their formulas).

    **Returns:** `(y1, ys_at_ts)` with those derivatives.
    """
    t0_c, t1_c = concrete_value(problem.t0), concrete_value(problem.t1)
    if t0_c is not None and t1_c is not None and t0_c != t1_c:
        return summary.y, ys_at_ts  # known at trace time to take steps
    f0 = problem.vector_field(problem.t0, problem.y0, problem.args)
    empty = summary.num_accepted == 0
    shift0 = problem.t0 - lax.stop_gradient(problem.t0)

    def plus(y, dt):
        return jtu.tree_map(
            lambda a, f: a + jnp.where(empty, dt, 0).astype(a.dtype) * f, y, f0
        )

    y1 = plus(summary.y, problem.t1 - lax.stop_gradient(problem.t1) - shift0)
    if ys_at_ts is not None:
        shift = problem.ts - lax.stop_gradient(problem.ts) - shift0
        ys_at_ts = jtu.tree_map(
            lambda a, f: (
                a
                + jnp.where(empty, shift, 0)
                .astype(a.dtype)
                .reshape((-1,) + (1,) * f.ndim)
                * f[None]
            ),
            ys_at_ts,
            f0,
        )
    return y1, ys_at_ts


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
    # `fn` of `SaveAt(fn=...)`: the recorders applied it to the values at `ts` and
    # at the steps already; the two ends are single values, applied here.
    at = (lambda t, y: y) if problem.save_fn is None else problem.save_fn
    # A solve that failed (`max_steps`, a step that could not be computed, ...)
    # stopped at `summary.t`: as in Diffrax, what it would have saved after that
    # is `inf` (times and values), and `t1=True` saves where it stopped.
    failed = summary.result != RESULTS.successful
    if problem.save_t0:
        ts_parts.append(problem.t0[None])
        ys_parts.append(_one(at(problem.t0, problem.y0)))
    if problem.ts is not None:
        ts_i, ys_i = _fill_unreached(failed, summary.t, problem.ts, ys_at_ts)
        ts_parts.append(ts_i)
        ys_parts.append(ys_i)
    if problem.save_steps:
        # Rows past the accepted steps are `inf` already, but for the last
        # attempt, written before it was rejected.
        ts_i, ys_i = _fill_unreached(failed, summary.t, *steps)
        ts_parts.append(ts_i)
        ys_parts.append(ys_i)
    if problem.save_t1:
        t_end = jnp.where(failed, summary.t, problem.t1)
        ts_parts.append(t_end[None])
        ys_parts.append(_one(at(t_end, summary.y)))
    ts = _stack_parts(ts_parts)
    if ts is not None and not _is_one(d):
        # Unused rows (adaptive `steps=True`) stay `+inf` whatever the direction.
        ts = jnp.where(jnp.isinf(ts), ts, jnp.asarray(d, t_dtype) * ts)
    stats = {
        "num_steps": summary.num_steps,
        "num_accepted_steps": summary.num_accepted,
        "num_rejected_steps": summary.num_steps - summary.num_accepted,
        "num_f_evals": num_f_evals(problem, summary),
    }
    if problem.solver.evaluates_jacobian:
        stats["num_jac_evals"] = summary.evals.jac
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


def _fill_unreached(failed, t_end, ts, ys):
    """`(ts, ys)` (`ys` with a leading axis along `ts`) with the times after
    `t_end`, and the floating values saved there, replaced by `inf` if the solve
    failed (integer values are kept)."""
    past = failed & (ts > t_end)

    def fill(y):
        if not jnp.issubdtype(y.dtype, jnp.inexact):
            return y
        return jnp.where(past.reshape(past.shape + (1,) * (y.ndim - 1)), jnp.inf, y)

    return jnp.where(past, jnp.inf, ts), jtu.tree_map(fill, ys)


def _is_one(d) -> bool:
    return isinstance(d, int) and d == 1
