"""`solve`: validate, normalise into a `Problem`, and hand it to the adjoint."""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from ._errors import (
    check_scalar_time,
    check_state,
    check_vector_field,
    concrete_value,
    runtime_check,
)
from ._problem import Problem
from ._saveat import SaveAt
from ._solution import RESULTS, Solution
from .adjoints import AbstractAdjoint, CheckpointedAdjoint
from .controllers import AbstractController, ConstantStepSize
from .controllers._constant import num_constant_steps
from .solvers import AbstractSolver


def solve(
    f: Callable,
    solver: AbstractSolver,
    t0: ArrayLike,
    t1: ArrayLike,
    y0: PyTree,
    args: PyTree = None,
    *,
    dt0: ArrayLike | None = None,
    controller: AbstractController | None = None,
    saveat: SaveAt | None = None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 4096,
    throw: bool = True,
) -> Solution:
    """Solve `dy/dt = f(t, y, args)` from `t0` to `t1`, differentiably.

    **Arguments:**

    - `f`: the vector field, `f(t, y, args) -> dy/dt`, returning a pytree with the
      structure, shapes and dtypes of `y`. May be an `eqx.Module`; its parameters
      are differentiated like `args`.
    - `solver`: e.g. `Tsit5()`.
    - `t0`, `t1`: the interval. `t1 < t0` integrates backward in time; `t1 == t0`
      returns `y0`.
    - `y0`: the initial state, any pytree of floating-point arrays.
    - `args`: anything `f` needs (any pytree, Equinox modules included).
    - `dt0`: the (first) step size; required by `ConstantStepSize`, optional for
      `PIDController` (`None`: chosen automatically). Its sign must match
      `t1 - t0`.
    - `controller`: `ConstantStepSize()` (default) or `PIDController(rtol, atol)`.
    - `saveat`: which values to return (default `SaveAt(t1=True)`).
    - `adjoint`: how to differentiate the solve (default
      `CheckpointedAdjoint(BinomialCheckpoints())`: the exact gradient of the
      computed solution in memory that grows like the square root of the number
      of steps).
    - `max_steps`: the most steps to attempt; the solve fails beyond it.
    - `throw`: on failure (`max_steps` exhausted, NaN/inf state, step size too
      small) raise an error; if `False`, return the partial solution and say why in
      `Solution.result`.

    **Returns:** a `Solution`.

    Wrap the whole computation (solve and loss) in `jax.jit`. When `t0`, `t1` and
    `dt0` are known at trace time (Python numbers, or arrays outside `jit`),
    constant-step solves run as a `lax.scan` of exactly their number of steps.
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"`solver` must be an adjointkit solver, got {solver!r}.")
    controller = ConstantStepSize() if controller is None else controller
    if not isinstance(controller, AbstractController):
        raise TypeError(
            f"`controller` must be an adjointkit controller, got {controller!r}."
        )
    saveat = SaveAt(t1=True) if saveat is None else saveat
    if not isinstance(saveat, SaveAt):
        raise TypeError(f"`saveat` must be a SaveAt, got {saveat!r}.")
    adjoint = CheckpointedAdjoint() if adjoint is None else adjoint
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"`adjoint` must be an adjointkit adjoint, got {adjoint!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")

    y0 = check_state(y0)
    state_dtype = jnp.result_type(*jtu.tree_leaves(y0))
    # Eagerly, so that values known at trace time stay known under `jax.jit` (every
    # jnp operation would otherwise be staged out, even on Python numbers).
    with jax.ensure_compile_time_eval():
        times, checks = _normalise_times(
            t0, t1, dt0, saveat.ts, state_dtype, controller
        )
    for field, pred, message in checks:  # those only decidable at run time
        times = times._replace(
            **{field: runtime_check(getattr(times, field), pred, message)}
        )
    # Differentiable leaves as proper arrays: under jax.grad a Python number
    # becomes a tracer around a literal, whose cotangent a custom VJP drops.
    f, args = jtu.tree_map(
        lambda x: jnp.asarray(x) if eqx.is_array(x) else x, (f, args)
    )
    check_vector_field(f, times.t0, y0, args)

    problem = Problem(
        f=f,
        solver=solver,
        controller=controller,
        t0=times.s0,
        t1=times.s1,
        y0=y0,
        args=args,
        dt0=times.dt_loop,
        ts=times.ts,
        direction=times.direction,
        save_t0=saveat.t0,
        save_t1=saveat.t1,
        save_steps=saveat.steps,
        dense=saveat.dense,
        max_steps=max_steps,
        num_steps=times.num_steps,
    )
    sol = adjoint.solve(problem)
    if throw:
        # The outcome is an integer, never differentiated; a custom VJP may still
        # hand it back wrapped for differentiation, which error_if cannot take.
        result = jax.lax.stop_gradient(sol.result)
        outputs = result.error_if(
            (sol.ts, sol.ys, sol.dense), result != RESULTS.successful
        )
        sol = Solution(
            t0=sol.t0,
            t1=sol.t1,
            ts=outputs[0],
            ys=outputs[1],
            stats=sol.stats,
            result=sol.result,
            dense=outputs[2],
            direction=sol.direction,
        )
    return sol


class _Times(NamedTuple):
    t0: Array  # in the user's time, with the solve's time dtype
    s0: Array  # t0, t1, ts and dt0 in loop time (see `Problem`)
    s1: Array
    ts: Array | None
    dt_loop: Array | None
    direction: object  # 1 or -1, or a traced array
    num_steps: int | None


def _normalise_times(t0, t1, dt0, ts, state_dtype, controller):
    """Check the times, pick their dtype, and map them to ascending loop time.

    Python numbers (weakly typed) take the state's precision; arrays keep theirs.
    Checks run now when the values are known; the others are returned as
    `(field, predicate, message)` for `runtime_check`.
    """
    checks = []
    t0 = check_scalar_time("t0", t0)
    t1 = check_scalar_time("t1", t1)
    time_inputs = [t0, t1] if dt0 is None else [t0, t1, check_scalar_time("dt0", dt0)]
    t_dtype = jnp.result_type(*time_inputs, state_dtype)
    t0 = t0.astype(t_dtype)
    t1 = t1.astype(t_dtype)

    t0_c, t1_c = concrete_value(t0), concrete_value(t1)
    if t0_c is not None and t1_c is not None:
        if not (np.isfinite(t0_c) and np.isfinite(t1_c)):
            raise ValueError(f"`t0` and `t1` must be finite, got {t0_c} and {t1_c}.")
        direction = 1 if t1_c >= t0_c else -1
    else:
        checks.append(
            (
                "s0",
                ~(jnp.isfinite(t0) & jnp.isfinite(t1)),
                "`t0` and `t1` must be finite.",
            )
        )
        direction = jnp.where(t1 >= t0, 1, -1).astype(t_dtype)
    s0, s1 = direction * t0, direction * t1

    dt_loop = None
    if dt0 is not None:
        dt0 = jnp.asarray(dt0).astype(t_dtype)
        dt0_c = concrete_value(dt0)
        if dt0_c is not None:
            if not np.isfinite(dt0_c) or dt0_c == 0:
                raise ValueError(f"`dt0` must be finite and nonzero, got {dt0_c}.")
            if t0_c is not None and t1_c is not None and t1_c != t0_c:
                if np.sign(dt0_c) != np.sign(t1_c - t0_c):
                    raise ValueError(
                        f"`dt0`={dt0_c} has the wrong sign: integrating from "
                        f"t0={t0_c} to t1={t1_c} needs dt0 "
                        f"{'> 0' if t1_c > t0_c else '< 0'}."
                    )
        dt_loop = direction * dt0
        checks.append(
            (
                "dt_loop",
                (s1 > s0) & ~(dt_loop > 0),
                "`dt0` has the wrong sign for the direction of integration (or is "
                "zero or not finite).",
            )
        )

    num_steps = None
    if isinstance(controller, ConstantStepSize) and dt0 is not None:
        values = [concrete_value(x) for x in (s0, s1, dt_loop)]
        if all(v is not None for v in values):
            num_steps = int(num_constant_steps(*values, xp=np))

    if ts is not None:
        ts = direction * jnp.asarray(ts).astype(t_dtype)
        bad = jnp.any(ts < s0) | jnp.any(ts > s1) | jnp.any(jnp.diff(ts) < 0)
        checks.append(
            (
                "ts",
                bad,
                "SaveAt(ts=...) must lie within [t0, t1] and be ordered in the "
                "direction of integration.",
            )
        )
    return _Times(t0, s0, s1, ts, dt_loop, direction, num_steps), checks
