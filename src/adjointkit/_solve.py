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
    _check_instance("solver", solver, AbstractSolver, "an adjointkit solver")
    controller = ConstantStepSize() if controller is None else controller
    _check_instance(
        "controller", controller, AbstractController, "an adjointkit controller"
    )
    saveat = SaveAt(t1=True) if saveat is None else saveat
    _check_instance("saveat", saveat, SaveAt, "a SaveAt")
    adjoint = CheckpointedAdjoint() if adjoint is None else adjoint
    _check_instance("adjoint", adjoint, AbstractAdjoint, "an adjointkit adjoint")
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
    f, args, y0 = _own_values((f, args, y0))
    check_vector_field(f, times.t0, y0, args)
    # Arrays and tracers that `f` closes over become leaves of the pytree `f`, so
    # that every adjoint's custom VJP sees them and gives them cotangents, exactly
    # as if they had been passed through `args`.
    f = eqx.filter_closure_convert(f, times.t0, y0, args)

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
        throw=throw,
    )
    try:
        sol = adjoint.solve(problem)
    except TypeError as error:
        if "forward-mode" not in str(error):
            raise
        raise TypeError(
            f"jax.jvp and jax.jacfwd (forward-mode differentiation) cannot go "
            f"through {type(adjoint).__name__}: its custom VJP gives reverse mode "
            "only. "
            "Use `adjoint=ak.DirectAdjoint()` for forward mode."
        ) from error
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


def _check_instance(name: str, value, cls: type, what: str):
    if isinstance(value, cls):
        return
    if isinstance(value, type) and issubclass(value, cls):
        raise TypeError(
            f"`{name}` must be an instance, not the class: pass "
            f"`{value.__name__}()`, not `{value.__name__}`."
        )
    raise TypeError(f"`{name}` must be {what}, got {value!r}.")


def _own_values(tree: PyTree) -> PyTree:
    """Array leaves as values of their own, not constants folded into the trace.

    Under `jax.jit` a scalar constant (`jnp.array(1.0)`, or a Python number under
    `jax.grad`) is traced as a literal, and a custom VJP loses literals between its
    forward and backward passes (their cotangents are dropped, or the value comes
    back as `None`). A copy of a scalar is an ordinary traced value, and free.
    """

    def own(x):
        if not eqx.is_array(x):
            return x
        x = jnp.asarray(x)
        if isinstance(x, jax.core.Tracer) and x.ndim == 0:
            x = jnp.array(x, copy=True)
        return x

    return jtu.tree_map(own, tree)


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
        ts = jnp.asarray(ts)
        # Times made in a narrower dtype than t0 and t1 (a float32 linspace to a
        # float64 t1) may overshoot the ends by a rounding error: accept that, and
        # put them on the ends.
        slack = (
            4
            * jnp.finfo(jnp.result_type(ts.dtype, jnp.float16)).eps
            * jnp.maximum(jnp.abs(s0), jnp.abs(s1))
        )
        ts = direction * ts.astype(t_dtype)
        bad = (
            jnp.any(ts < s0 - slack)
            | jnp.any(ts > s1 + slack)
            | jnp.any(jnp.diff(ts) < 0)
        )
        checks.append(
            (
                "ts",
                bad,
                "SaveAt(ts=...) must lie within [t0, t1] and be ordered in the "
                "direction of integration.",
            )
        )
        # `where`, not `clip`: a time on an end keeps its whole derivative.
        ts = jnp.where(ts > s1, s1, jnp.where(ts < s0, s0, ts))
    return _Times(t0, s0, s1, ts, dt_loop, direction, num_steps), checks
