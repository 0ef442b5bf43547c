"""`solve`: validate, normalise into a `Problem`, and hand it to the adjoint."""

import functools
import inspect
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
    forward_over_reverse_error,
    is_forward_mode_refusal,
    runtime_check,
)
from ._problem import Problem
from ._progress import AbstractProgressMeter
from ._saveat import SaveAt
from ._solution import RESULTS, Solution
from .adjoints import AbstractAdjoint, CheckpointedAdjoint, DirectAdjoint
from .controllers import AbstractController, ConstantStepSize
from .controllers._constant import num_constant_steps
from .solvers import AbstractSolver


# Diffrax's `diffeqsolve(terms, solver, t0, t1, dt0, y0, args, *, saveat,
# stepsize_controller, adjoint, ...)` and `solve` differ in the order of the
# positional arguments and in a few names. A Diffrax user's first call is likely
# to be written in Diffrax's habits; `_meets_diffrax_habits` recognises those
# calls and says what to write instead, without ever refusing a call `solve`
# accepts.

_REPLACEMENT = "ak.solve(f, solver, t0, t1, y0, args, dt0=dt0, ...)"

_DIFFRAX_KEYWORDS = {
    "stepsize_controller": (
        "adjointkit calls the step-size controller `controller=`: write "
        "`controller={value}`."
    ),
    "terms": (
        "adjointkit takes the vector field itself as the first positional "
        "argument, not `terms=`: write `ak.solve(f, solver, t0, t1, y0, args, ...)` "
        "(a `diffrax.ODETerm(f)` is accepted there too)."
    ),
    "solver_state": "adjointkit has no `solver_state=`: leave it out.",
    "controller_state": "adjointkit has no `controller_state=`: leave it out.",
    "made_jump": "adjointkit has no `made_jump=`: leave it out.",
    "event": (
        "adjointkit has no events: leave `event=` out and stop the solve at a "
        "fixed `t1`."
    ),
    "discrete_terminating_event": (
        "adjointkit has no events: leave `discrete_terminating_event=` out."
    ),
}


def _is_scalar_like(x) -> bool:
    """A Python number or a 0-dimensional array: what a `dt0` looks like."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int | float):
        return True
    return eqx.is_array(x) and jnp.ndim(x) == 0


def _diffrax_order_error(reason: str) -> TypeError:
    return TypeError(
        f"{reason} This looks like Diffrax's argument order, `diffeqsolve(terms, "
        "solver, t0, t1, dt0, y0, args)`. adjointkit's `solve` takes the state "
        "right after the times, and `dt0` as a keyword: write "
        f"`{_REPLACEMENT}` (`dt0=None`, the default, picks the first step "
        "automatically with an adaptive controller)."
    )


def _keyword_hint(name: str, value) -> str:
    template = _DIFFRAX_KEYWORDS[name]
    shown = "ak.PIDController(rtol=..., atol=...)"
    if name == "stepsize_controller":
        kind = type(value).__name__
        if kind == "ConstantStepSize":
            shown = "ak.ConstantStepSize()"
        elif hasattr(value, "rtol") and hasattr(value, "atol"):
            shown = f"ak.PIDController(rtol={value.rtol!r}, atol={value.atol!r})"
    return template.format(value=shown)


def _meets_diffrax_habits(impl):
    """Wrap `solve` so that calls in Diffrax's habits get an error that says what
    to write instead (see the module comment above)."""
    signature = inspect.signature(impl)
    max_positional = sum(
        p.kind is p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values()
    )
    names = list(signature.parameters)

    @functools.wraps(impl)
    def wrapper(*args, **kwargs):
        for name in kwargs:
            if name in signature.parameters:
                continue
            if name in _DIFFRAX_KEYWORDS:
                raise TypeError(
                    f"solve() got an unexpected keyword argument `{name}` (a "
                    f"Diffrax name). {_keyword_hint(name, kwargs[name])}"
                )
            raise TypeError(
                f"solve() got an unexpected keyword argument `{name}`. Its "
                f"arguments are: {', '.join(names)}."
            )
        if len(args) > max_positional:
            raise _diffrax_order_error(
                f"solve() takes at most {max_positional} positional arguments "
                f"(f, solver, t0, t1, y0, args) but {len(args)} were given."
            )
        if len(args) >= 5 and "y0" in kwargs:
            raise _diffrax_order_error(
                "solve() got `y0` both as its fifth positional argument and as "
                "a keyword."
            )
        if len(args) >= 6 and "args" in kwargs:
            raise _diffrax_order_error(
                "solve() got `args` both as its sixth positional argument and as "
                "a keyword."
            )
        if len(args) >= 5 and args[4] is None and len(args) == 6:
            # A state cannot be None; Diffrax's `dt0` often is.
            raise _diffrax_order_error(
                "solve() got `y0=None` (its fifth positional argument) and a sixth "
                "positional argument."
            )
        if len(args) == 5 and args[4] is None:
            raise TypeError(
                "`y0` (the fifth positional argument of solve) is None: pass the "
                f"initial state. If that None was Diffrax's `dt0`, write "
                f"`{_REPLACEMENT}`."
            )
        ambiguous = len(args) == 6 and _is_scalar_like(args[4]) and "dt0" not in kwargs
        if not ambiguous:
            return impl(*args, **kwargs)
        # `solve(f, solver, t0, t1, 0.1, y0)` in Diffrax's order and a scalar
        # problem `solve(f, solver, t0, t1, y0, args)` cannot be told apart by
        # their arguments; the call goes ahead, and if it fails, the error says
        # what to write had Diffrax's order been meant.
        try:
            return impl(*args, **kwargs)
        except (TypeError, ValueError) as error:
            hint = (
                " (If the fifth and sixth positional arguments were Diffrax's "
                "`dt0, y0`, note that adjointkit's order is different: write "
                f"`{_REPLACEMENT}`.)"
            )
            try:
                hinted = type(error)(f"{error}{hint}")
            except Exception:  # an error type that takes other arguments
                raise error from None
            raise hinted from error

    return wrapper


def _unwrap_term(f):
    """`f` itself, or the vector field of a `diffrax.ODETerm` (recognised by its
    class, without importing Diffrax). Other Diffrax terms are refused."""
    cls = type(f)
    if not cls.__module__.split(".")[0] == "diffrax":
        return f
    if cls.__name__ == "ODETerm" and hasattr(f, "vector_field"):
        return f.vector_field
    if cls.__name__ in {
        "ControlTerm",
        "MultiTerm",
        "WeaklyDiagonalControlTerm",
        "AbstractTerm",
        "UnderdampedLangevinDriftTerm",
        "UnderdampedLangevinDiffusionTerm",
    } or hasattr(f, "vf_prod"):
        raise TypeError(
            f"adjointkit solves ODEs dy/dt = f(t, y, args) only; a Diffrax "
            f"`{cls.__name__}` (a control or multi-term equation, e.g. an SDE) "
            "has no equivalent here. For an ODE pass the vector field `f` itself, "
            "or `diffrax.ODETerm(f)`."
        )
    return f


@_meets_diffrax_habits
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
    progress_meter: AbstractProgressMeter | None = None,
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
      small, a Newton iteration that failed on a constant step) raise an error,
      whichever part of the solution is used (also under `jax.jit` of a
      `jax.grad` that returns only the gradient, or `sol.result` as auxiliary
      output); if `False`, return the partial solution and say why in
      `Solution.result`. The solve stops where it failed: as in Diffrax, the
      times and values it would have saved after that point are `inf`, and
      `SaveAt(t1=True)` saves the point reached (its time and state). (A state
      gone NaN with constant steps is stepped on to `t1`: its values are NaN.)
    - `progress_meter`: `None` (the default: no progress is reported, and the solve
      compiles exactly as without the argument), `TextProgressMeter()` (prints the
      percentage of `[t0, t1]` covered) or `RichProgressMeter()` (a progress bar,
      needs `rich`). Works under `jax.jit`; reports at most about 100 updates per
      solve, not one per step.

    **Returns:** a `Solution`.

    **Coming from Diffrax:** `diffeqsolve(terms, solver, t0, t1, dt0, y0, args,
    stepsize_controller=c)` is `solve(f, solver, t0, t1, y0, args, dt0=dt0,
    controller=c)`. A `diffrax.ODETerm(f)` may be passed as `f`. A call in
    Diffrax's order, or with `stepsize_controller=`, raises an error that says
    what to write instead. (A six-argument call whose fifth argument is a number
    is a valid scalar problem and goes ahead; if it then fails, its error says
    what to write in case Diffrax's order was meant.)

    Wrap the whole computation (solve and loss) in `jax.jit`. When `t0`, `t1` and
    `dt0` are known at trace time (Python numbers, or arrays outside `jit`),
    constant-step solves run as a `lax.scan` of exactly their number of steps.
    """
    f = _unwrap_term(f)
    _check_instance("solver", solver, AbstractSolver, "an adjointkit solver")
    controller = ConstantStepSize() if controller is None else controller
    _check_instance(
        "controller", controller, AbstractController, "an adjointkit controller"
    )
    saveat = SaveAt(t1=True) if saveat is None else saveat
    _check_instance("saveat", saveat, SaveAt, "a SaveAt")
    adjoint = CheckpointedAdjoint() if adjoint is None else adjoint
    _check_instance("adjoint", adjoint, AbstractAdjoint, "an adjointkit adjoint")
    if progress_meter is not None and not isinstance(
        progress_meter, AbstractProgressMeter
    ):
        raise TypeError(
            "`progress_meter` must be None, `ak.TextProgressMeter()` or "
            f"`ak.RichProgressMeter()`, got {progress_meter!r}."
        )
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
    # The closed-over values are own values too (see `_own_values`).
    f = _own_values(eqx.filter_closure_convert(f, times.t0, y0, args))
    save_fn = None
    if saveat.fn is not None:
        save_fn = _loop_time_save_fn(saveat.fn, times, y0, args)

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
        save_fn=save_fn,
        progress_meter=progress_meter,
    )
    try:
        sol = adjoint.solve(problem)
    except TypeError as error:
        if not is_forward_mode_refusal(error):
            raise
        if isinstance(adjoint, DirectAdjoint):
            # DirectAdjoint differentiates the loop itself, which forward mode
            # goes through: what refused is forward mode over reverse mode
            # through an ESDIRK method's implicit stages (see `implicit_root`).
            raise forward_over_reverse_error(solver) from error
        raise TypeError(
            f"jax.jvp and jax.jacfwd (forward-mode differentiation) cannot go "
            f"through {type(adjoint).__name__}: its custom VJP gives reverse mode "
            "only. "
            "Use `adjoint=ak.DirectAdjoint()` for forward mode."
        ) from error
    if throw:
        sol = _raise_if_failed(_undifferentiated_integers(sol))
    return sol


def _undifferentiated_integers(tree: PyTree) -> PyTree:
    """`tree` with its integer leaves (the outcome, the counters) stop-gradiented:
    they are never differentiated, but a custom VJP may hand them back wrapped for
    differentiation, which `error_if` cannot take."""

    def plain(x):
        if eqx.is_array(x) and not jnp.issubdtype(x.dtype, jnp.inexact):
            return jax.lax.stop_gradient(x)
        return x

    return jtu.tree_map(plain, tree)


@eqx.filter_custom_jvp
def _raise_if_failed(sol: Solution) -> Solution:
    """`sol`, or an error naming `sol.result` if the solve failed (`throw=True`).

    The check is threaded through every array of the solution (as Diffrax does),
    so that it runs whatever part of it a program uses: a jitted function that
    returns only `sol.result` or `sol.stats` (say as the auxiliary output of
    `jax.grad`) still raises. Under differentiation the derivative also passes
    through it (its tangent is multiplied by a `1` that the check returns), so a
    gradient raises too when nothing else of the forward values is used, as
    under `jax.jit(jax.grad(loss))` for a loss linear in `ys`: XLA would
    otherwise drop the unused check and return the gradient of a failed solve.
    """
    result = sol.result
    return result.error_if(sol, result != RESULTS.successful)


@_raise_if_failed.def_jvp
def _raise_if_failed_jvp(primals, tangents):
    (sol,), (t_sol,) = primals, tangents
    result = sol.result
    sol, one = result.error_if(
        (sol, jnp.ones((), jnp.int32)), result != RESULTS.successful
    )

    def gate(t):
        return None if t is None else t * one.astype(t.dtype)

    return sol, jtu.tree_map(gate, t_sol, is_leaf=lambda x: x is None)


def _loop_time_save_fn(fn, times, y0, args):
    """`SaveAt(fn=...)` as the loop calls it, `save_fn(s, y)` in loop time,
    closure-converted: `args` and the arrays `fn` closes over become leaves of
    the pytree `save_fn`, so that every adjoint's custom VJP gives them
    cotangents (as it does `f`'s)."""
    d = times.direction

    def save_fn(s, y):
        t = s if isinstance(d, int) and d == 1 else d * s
        return fn(t, y, args)

    return _own_values(eqx.filter_closure_convert(save_fn, times.s0, y0))


def _check_instance(name: str, value, cls: type, what: str):
    if isinstance(value, cls):
        return
    module = type(value).__module__.split(".")[0]
    if module == "diffrax":
        import adjointkit

        kind = type(value).__name__
        if hasattr(adjointkit, kind):
            raise TypeError(
                f"`{name}` is Diffrax's `{kind}`; adjointkit has its own: pass "
                f"`ak.{kind}(...)` (with `import adjointkit as ak`)."
            )
        raise TypeError(
            f"`{name}` is Diffrax's `{kind}`, which adjointkit cannot use: pass {what}."
        )
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
    back as `None`). Eagerly, `jax.grad` of a Python number gives a tracer whose
    value is a Python scalar, not an array: a custom VJP sees that value as a
    non-array leaf and gives it no cotangent (the gradient of a Python float
    closed over by `f` came out 0.0). A copy of a scalar is an ordinary traced
    array in both cases, and free.
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
