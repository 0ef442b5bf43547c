"""Optimise-then-discretise: the adjoint ODE, solved backward in time.

With a(t) = dL/dy(t), the pullback of y(T) = solve(f, y0, θ, t0, T) is

    a' = -(df/dy)^T a,  a(T) = dL/dy(T),       dL/dθ = ∫ a^T df/dθ dt,
    dL/dy0 = a(t0),  dL/dT = <dL/dy(T), f(T, y(T))>,  dL/dt0 = -<a(t0), f(t0, y0)>,

and with values saved at times t_i the adjoint jumps by dL/dy(t_i) there, with
dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>. Every product a^T df/dy, a^T df/dθ is one
`jax.vjp` of f. The three adjoints share one engine and differ in two
strategies: where the backward solve reads y(t) (an `AbstractPrimalSource`) and
how it accumulates dL/dθ (an `AbstractParameterAccumulation`):

- `BacksolveAdjoint`: `SolvedBackward` (y runs backward alongside) and
  `IntegratedParameters`: state (y, a, a_θ);
- `InterpolatedAdjoint`: y from an interpolation of the forward solve, every
  step's data kept (`StoredTrajectory`) or rebuilt segment by segment from
  checkpoints (`RebuiltTrajectory`), and `IntegratedParameters`: state (a, a_θ);
- `QuadratureAdjoint`: y likewise, and `QuadratureParameters`: state a alone;
  dL/dθ by Gauss--Legendre quadrature over each backward step, from the backward
  solver's dense output.

Everything runs in the forward solve's loop time (ascending, see `Problem`); a
backward solve is another `Problem` with direction -1, run by the same loop.
"""

import abc
import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Int, PyTree, Real

from .._adjoint_state import AdjointState
from .._integrate import _dense_like, make_stepper, num_f_evals, replay_recording, run
from .._problem import Problem
from .._recording import TrajectoryRecorder, inexact
from .._solution import RESULTS, Solution
from ..checkpointing import (
    AbstractCheckpointSchedule,
    AllSteps,
    BinomialCheckpoints,
    EveryKSteps,
    default_num_checkpoints,
)
from ..checkpointing._plan import AbstractSegmentedPlan, OnlinePlan
from ..checkpointing._reverse import kept_in_order
from ..checkpointing._store import CheckpointRecorder
from ..controllers import PIDController, adjoint_seminorm, rms_norm
from ..controllers._constant import num_constant_steps
from ..interpolation import AbstractInterpolation, Trajectory
from ..solvers import AbstractSolver
from ..solvers._base import SolverStep
from ._outputs import (
    output_recorders,
    plain_records,
    solution_from_records,
    tree_add,
    values_at_ts,
    zeros_where_none,
)


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    """How a continuous adjoint runs its backward pass (static): where y(t) comes
    from (`primal`), how dL/dθ is accumulated (`parameters`), and the backward
    solve's own solver, controller and step budget (`None`: the forward ones;
    for the controller, `default_backward_controller`; for `max_steps`, twice
    the forward's)."""

    primal: "AbstractPrimalSource"
    parameters: "AbstractParameterAccumulation"
    solver: object
    controller: object
    max_steps: int | None


# --- backward statistics ---------------------------------------------------------

_COLLECTORS: list[list] = []


class collect_backward_stats:
    """Collect the statistics of every continuous adjoint's backward solve run
    inside this context (on the host, as the backward passes execute):

    ```python
    with ak.collect_backward_stats() as stats:
        grads = jax.grad(loss)(params)
    stats[0]["num_steps"], stats[0]["num_f_evals"]
    ```

    Each entry is a dict: the integers `num_steps`, `num_accepted_steps`,
    `num_rejected_steps`, `num_f_evals` (evaluations of `f`, each together with its
    vector-Jacobian product) of the backward solves of one pullback; `result`,
    the message of the `RESULTS` value the backward solve ended with; and
    `reconstruction_error`, a float: for `BacksolveAdjoint`, the largest
    difference between the y it solved backward and the forward solution (at
    `t0` and the `SaveAt(ts=...)` times), `max |Δy| / (atol + rtol |y|)` with the
    solves' tolerances (with constant forward steps, `rtol = atol = 1e-4`); 0
    for the others. A gradient is refused (with `throw=False`, NaN) when the
    backward solve failed or when `reconstruction_error` exceeds `1e4` (or 10
    per forward and backward step, if more); these two entries say which. Under
    `vmap` the values are arrays.

    **Arguments:** none.

    **Returns** (from `with ... as stats`): a list, filled with one dict per
    pullback of `BacksolveAdjoint`, `InterpolatedAdjoint` or `QuadratureAdjoint`
    that runs inside the block (the discrete adjoints report nothing here: they
    re-run forward steps, counted by the benchmarks instead). Values arrive as the
    computation executes; read them after it has finished (e.g. after
    `jax.block_until_ready`).
    """

    def __enter__(self) -> list:
        self._stats: list = []
        _COLLECTORS.append(self._stats)
        return self._stats

    def __exit__(self, *exc):
        _COLLECTORS.remove(self._stats)
        return False


def _result_message(code) -> str:
    for name in _RESULT_NAMES:
        item = getattr(RESULTS, name)
        if int(item._value) == int(code):
            return RESULTS[item]
    return f"unknown result {int(code)}"


_RESULT_NAMES = ("successful", "max_steps_reached", "nonfinite_state")
_RESULT_NAMES += ("step_size_too_small", "nonlinear_solve_failed")


def _report(stats: dict):
    stats = {k: np.asarray(v) for k, v in stats.items()}
    codes = stats.pop("result")
    stats["result"] = np.vectorize(_result_message, otypes=[object])(codes)
    if stats["result"].ndim == 0:
        stats["result"] = stats["result"].item()
    for collector in _COLLECTORS:
        collector.append(dict(stats))


# --- the backward pass ------------------------------------------------------------


def _tree_dot(a: PyTree, b: PyTree) -> Real[Array, ""]:
    leaves = jtu.tree_leaves(jtu.tree_map(lambda x, y: jnp.sum(x * y), a, b))
    return sum(leaves, jnp.zeros(()))


def _neg(tree):
    return jtu.tree_map(jnp.negative, tree)


def _gauss_legendre(order: int):
    """Nodes and weights of the `order`-point Gauss--Legendre rule on [0, 1], exact
    for polynomials of degree 2 order - 1 (Abramowitz & Stegun 25.4.29)."""
    x, w = np.polynomial.legendre.leggauss(order)
    # Python floats: weakly typed, they keep the time's and the state's dtype.
    return tuple(float(v) for v in (x + 1) / 2), tuple(float(v) for v in w / 2)


class _QuadratureSolver(AbstractSolver):
    """A backward solver for `QuadratureAdjoint`: the wrapped solver steps the
    adjoint `a` alone; after each step, `∫ a^T df/dθ ds` over it is added to
    `a_params` by Gauss--Legendre quadrature, with `a` from the step's own dense
    output and `y` from the forward interpolation.

    The step's error estimate includes the quadrature's (the difference between
    the rules with `order` and `order - 1` points), so the step-size controller
    keeps the parameter cotangent as accurate as the adjoint: a step too long for
    the integrand is rejected, never silently integrated badly.
    """

    base: AbstractSolver
    a_dot_f_theta: Callable
    y_of_s: Callable
    order_high: int

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def error_order(self):
        return self.base.error_order

    @property
    def evaluates_jacobian(self) -> bool:
        return self.base.evaluates_jacobian

    def with_controller(self, controller) -> "_QuadratureSolver":
        return eqx.tree_at(
            lambda s: s.base, self, self.base.with_controller(controller)
        )

    def func(self, state):
        return AdjointState(None, self.base.func(state.a), state.a_params)

    @staticmethod
    def _a_only(f):
        return lambda t, a, args: f(t, AdjointState(None, a, None), args).a

    def init(self, f, t0, y0, args):
        # The carried state is f(t, y) as the solver contract asks: `a`'s field,
        # and zero for the running integral (see the backward field).
        f_a = self.base.init(self._a_only(f), t0, y0.a, args)
        return AdjointState(None, f_a, jtu.tree_map(jnp.zeros_like, y0.a_params))

    def _quadrature(self, t0, t1, a0, dense_info, order):
        h = t1 - t0  # a backward step in loop time τ = -s: h > 0
        total = None
        for x, w in zip(*_gauss_legendre(order), strict=True):
            tau = t0 + x * h
            a = self.base.interpolate(t0, t1, a0, dense_info, tau)
            value = self.a_dot_f_theta(-tau, self.y_of_s(-tau), a)
            term = jtu.tree_map(lambda v, w=w: (w * h).astype(v.dtype) * v, value)
            total = term if total is None else tree_add(total, term)
        return total

    def step(self, f, t0, t1, y0, args, state):
        out = self.base.step(self._a_only(f), t0, t1, y0.a, args, state.a)
        high = self._quadrature(t0, t1, y0.a, out.dense_info, self.order_high)
        low = self._quadrature(t0, t1, y0.a, out.dense_info, self.order_high - 1)
        y1 = AdjointState(None, out.y1, tree_add(y0.a_params, high))
        error = AdjointState(None, out.y_error, jtu.tree_map(jnp.subtract, high, low))
        return SolverStep(
            y1=y1,
            y_error=error,
            dense_info=out.dense_info,
            state=AdjointState(None, out.state, state.a_params),
            result=out.result,
            # Each quadrature point is one evaluation of f with its VJP.
            num_f_evals=out.num_f_evals + 2 * self.order_high - 1,
            num_jac_evals=out.num_jac_evals,
        )

    def interpolate(self, t0, t1, y0, dense_info, t):
        # Only `a` has a continuous extension; the running integral is reported at
        # the step's start.
        a = self.base.interpolate(t0, t1, y0.a, dense_info, t)
        return AdjointState(None, a, y0.a_params)


class _Sweep(eqx.Module):
    """The backward pass's carry."""

    z: AdjointState
    s: Real[Array, ""]  # where the backward solve is (forward loop time)
    save: Int[Array, ""]  # the next save time to pass, counting down; -1: none
    ct_ts: Array
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    num_f_evals: Int[Array, ""]
    result: RESULTS
    # `BacksolveAdjoint`: the largest difference so far between the y it solved
    # backward and the forward solution, in units of the tolerance
    # (`_reconstruction_error`).
    reconstruction_error: Real[Array, ""]


# --- the strategies: how dL/dθ is accumulated ----------------------------------------


class AbstractParameterAccumulation(eqx.Module):
    """How the backward pass accumulates `a_θ = dL/dθ = ∫ a^T df/dθ dt`. Provides:

    - `derivatives(vf, s, y, a, th) -> (f, da/ds, da_θ/ds)`: the vector field
      `f = vf(s, y, th)` and the adjoint system's derivatives of `a` and `a_θ`
      at `s` (each a `jax.vjp` of `f`);
    - `backward_solver(solver, a_dot_f_theta, y_of_s)`: the solver that steps the
      adjoint system (`a_dot_f_theta(s, y, a)` is `a^T df/dθ`; `y_of_s` reads the
      forward solution);
    - `backward_controller(controller)`: the controller of the backward solve.
    """

    @abc.abstractmethod
    def derivatives(self, vf, s, y, a, th):
        """`(f(s, y), da/ds, da_θ/ds)` in the forward loop time `s`."""

    @abc.abstractmethod
    def backward_solver(self, solver: AbstractSolver, a_dot_f_theta, y_of_s):
        """The solver of the backward solve, given the user's (or the forward) one."""

    @abc.abstractmethod
    def backward_controller(self, controller):
        """The controller of the backward solve, given the user's (or the forward)
        one."""


class IntegratedParameters(AbstractParameterAccumulation):
    """`a_θ` is a component of the adjoint ODE, `a_θ' = -(df/dθ)^T a`, integrated
    by the backward solver with `a` (`BacksolveAdjoint`, `InterpolatedAdjoint`).
    With `seminorm`, an adaptive controller's `rms_norm` becomes
    `adjoint_seminorm`, which leaves `a_θ` out of the error estimate."""

    seminorm: bool

    def derivatives(self, vf, s, y, a, th):
        fy, vjp_fn = jax.vjp(lambda y, th: vf(s, y, th), y, th)
        a_y, a_th = vjp_fn(a)
        return fy, _neg(a_y), _neg(a_th)

    def backward_solver(self, solver, a_dot_f_theta, y_of_s):
        del a_dot_f_theta, y_of_s
        return solver

    def backward_controller(self, controller):
        if self.seminorm and isinstance(controller, PIDController):
            if controller.norm is rms_norm:
                controller = eqx.tree_at(lambda c: c.norm, controller, adjoint_seminorm)
        return controller


class QuadratureParameters(AbstractParameterAccumulation):
    """`a_θ` is not an ODE component: the backward solver steps `a` alone, and
    `_QuadratureSolver` adds the Gauss--Legendre quadrature of `a^T df/dθ` over
    each step, with `order` points (`None`: the least that matches the backward
    solver's order), its error in the step's error estimate
    (`QuadratureAdjoint`)."""

    order: int | None

    def derivatives(self, vf, s, y, a, th):
        # The running integral's increments come from `_QuadratureSolver`'s
        # quadrature, and its derivative is reported as zero.
        fy, vjp_fn = jax.vjp(lambda y: vf(s, y, th), y)
        (a_y,) = vjp_fn(a)
        zeros = jtu.tree_map(jnp.zeros_like, th)
        return fy, _neg(a_y), zeros

    def backward_solver(self, solver, a_dot_f_theta, y_of_s):
        order = self.order or max(2, -(-(solver.order + 1) // 2))
        return _QuadratureSolver(solver, a_dot_f_theta, y_of_s, order)

    def backward_controller(self, controller):
        return controller


# --- the strategies: where the backward pass reads y(t) from ------------------------


class AbstractPrimalSource(eqx.Module):
    """Where the backward pass gets the forward solution y(t). Provides:

    - `forward_recorders(problem, stepper)`: what the forward pass keeps for it,
      by name (beyond the outputs);
    - `sweep(problem, internal, final_state, num_steps, c, sweep)`: the whole
      backward pass from `t1` to `t0`, given what was kept (`internal`, by the
      same names) and `sweep(c, s_lo, last, y_of_s)`, which solves the adjoint
      from `c.s` down to `s_lo` reading y from `y_of_s(s)`;
    - how y enters the adjoint state: `initial_y(y(t1))` (its `y` component at
      `t1`, `None`: none), `y_at(s, z, y_of_s)` (y at `s`),
      `y_derivative(f)` (the `y` component of the adjoint field) and
      `at_save_time(z, y_i)` (the state after a save time with value `y_i`);
    - `reconstructed_y(z)`: the y the backward solve computed itself (to be
      checked against the forward solution where that is known), `None` if it
      reads y from the forward solution.
    """

    @abc.abstractmethod
    def forward_recorders(self, problem: Problem, stepper) -> dict:
        """The recorders the forward pass runs for this source, by name."""

    @abc.abstractmethod
    def sweep(self, problem, internal, final_state, num_steps, c, sweep):
        """The backward pass from `t1` down to `t0`; returns the final carry."""

    @abc.abstractmethod
    def initial_y(self, y_final):
        """The adjoint state's `y` component at `t1`."""

    @abc.abstractmethod
    def y_at(self, s, z: AdjointState, y_of_s):
        """y at `s`, from the adjoint state `z` or from `y_of_s`."""

    @abc.abstractmethod
    def reconstructed_y(self, z: AdjointState):
        """The y solved backward in `z`, or `None` if y is not solved backward."""

    @abc.abstractmethod
    def y_derivative(self, fy):
        """The `y` component of the adjoint field, given `f(s, y)`."""

    @abc.abstractmethod
    def at_save_time(self, z: AdjointState, y_i) -> AdjointState:
        """The adjoint state once it reaches a save time with forward value `y_i`."""


class SolvedBackward(AbstractPrimalSource):
    """y is solved backward alongside the adjoint, from y(t1): the state is
    `(y, a, a_θ)` and the forward pass keeps nothing (`BacksolveAdjoint`). With
    `reanchor`, y is reset to the saved forward value at each save time."""

    reanchor: bool

    def forward_recorders(self, problem, stepper):
        del problem, stepper
        return {}

    def sweep(self, problem, internal, final_state, num_steps, c, sweep):
        del internal, final_state, num_steps
        return sweep(c, problem.t0, True, None)

    def initial_y(self, y_final):
        return y_final

    def y_at(self, s, z, y_of_s):
        del s, y_of_s
        return z.y

    def reconstructed_y(self, z):
        return z.y

    def y_derivative(self, fy):
        return fy

    def at_save_time(self, z, y_i):
        if self.reanchor:
            z = eqx.tree_at(lambda z: z.y, z, y_i)
        return z


class AbstractTrajectorySource(AbstractPrimalSource):
    """y is read from an `interpolation` of the forward solution: the adjoint
    state is `(a, a_θ)`, and the subclass says how the interpolation is kept."""

    interpolation: eqx.AbstractVar[AbstractInterpolation]

    def initial_y(self, y_final):
        del y_final
        return None

    def y_at(self, s, z, y_of_s):
        del z
        return y_of_s(s)

    def reconstructed_y(self, z):
        del z
        return None

    def y_derivative(self, fy):
        del fy
        return None

    def at_save_time(self, z, y_i):
        del y_i
        return z


class StoredTrajectory(AbstractTrajectorySource):
    """The forward pass stores every step's interpolation data (a
    `TrajectoryRecorder`), and the backward pass reads y(t) from it."""

    interpolation: AbstractInterpolation

    def forward_recorders(self, problem, stepper):
        del stepper
        return {"_trajectory": TrajectoryRecorder(self.interpolation, problem.solver)}

    def sweep(self, problem, internal, final_state, num_steps, c, sweep):
        del final_state, num_steps
        times, points, steps, count = internal["_trajectory"]
        trajectory = Trajectory(
            times, points, steps, count, self.interpolation, problem.solver
        )
        return sweep(c, problem.t0, True, trajectory.evaluate)


class RebuiltTrajectory(AbstractTrajectorySource):
    """The forward pass keeps the states `plan` chooses (a `CheckpointRecorder`,
    and with adaptive steps the step-size decisions); the backward pass rebuilds
    the interpolation one stretch of steps at a time from them (the scheme of
    SUNDIALS CVODES), see `sweep`."""

    interpolation: AbstractInterpolation
    plan: AbstractSegmentedPlan

    def forward_recorders(self, problem, stepper):
        kept_like = eqx.filter_eval_shape(
            lambda p: stepper.checkpoint(stepper.init(p)), problem
        )
        recorders = {"_checkpoints": CheckpointRecorder(self.plan, stepper, kept_like)}
        decider = stepper.decision_recorder(problem)
        if decider is not None:
            recorders["_decisions"] = decider
        return recorders

    def sweep(self, problem, internal, final_state, num_steps, c, sweep):
        """Rebuild the interpolation of one stretch of steps at a time, last
        first, by replaying it from a kept state, and solve the adjoint across it.

        A stretch starts at the earliest kept state no more than `capacity` steps
        before the end of the one after it, so that stretches are as long as the
        rebuild buffer allows: every backward solve restarts its step-size
        control, and the fewer restarts the better."""
        del final_state
        states, positions, _ = internal["_checkpoints"]
        # Replays retrace the forward pass's step-size decisions
        # (`DecisionRecorder`).
        stepper = make_stepper(problem).replaying(internal.get("_decisions"))
        capacity = self.plan.segment_capacity(problem.max_steps)
        starts, slots, _ = kept_in_order(positions)
        recorder_like = TrajectoryRecorder(self.interpolation, problem.solver)
        f_like = eqx.filter_eval_shape(lambda p: stepper.init(p).f, problem)
        dense_like = _dense_like(problem, f_like)

        def body(loop_carry):
            c, end, _ = loop_carry
            i = jnp.searchsorted(starts, end - capacity, side="left")
            i = jnp.minimum(i, starts.shape[0] - 1)
            start = jnp.where(num_steps == 0, 0, starts[i])
            kept = jtu.tree_map(lambda buf: buf[slots[i]], states)
            # A solve that took no step kept no checkpoint: start from t0 itself
            # (evaluated only then: the start of an adaptive solve costs two
            # evaluations of f).
            state = lax.cond(
                num_steps == 0,
                lambda: stepper.init(problem),
                lambda: stepper.restore(problem, kept),
            )
            t_start = stepper.time(problem, state)
            recorder = eqx.tree_at(
                lambda r: r.offset, recorder_like, stepper.accepted(state)
            )
            func = problem.solver.with_controller(problem.controller).func(state.f)
            record = recorder.init(t_start, state.y, func, dense_like, capacity)
            _, records = replay_recording(
                problem, stepper, state, end - start, {"t": recorder}, {"t": record}
            )
            c = sweep(c, t_start, start == 0, records["t"].evaluate)
            return c, start, jnp.array(False)

        def more(loop_carry):
            _, end, first = loop_carry
            return first | (end > 0)

        c, _, _ = lax.while_loop(
            more, body, (c, jnp.asarray(num_steps, jnp.int32), jnp.array(True))
        )
        return c


def segment_plan(
    checkpoints: AbstractCheckpointSchedule | None, problem: Problem
) -> AbstractSegmentedPlan | None:
    """Which states an interpolating adjoint keeps on the forward pass: `None`,
    every step's interpolation data; else a plan of kept states from which the
    backward pass rebuilds the interpolation a stretch of steps at a time.

    - `None` (the default): every step's data when the number of steps is known at
      trace time (memory follows the steps taken); with adaptive steps, whose
      storage would be sized by `max_steps` however few steps are taken, the
      online plan of `BinomialCheckpoints()`.
    - `AllSteps()`: every step's data (with adaptive steps: `max_steps` of it).
    - `EveryKSteps(k)`: the state before every `k`-th step.
    - `BinomialCheckpoints(c)`: `c` kept states; with the number of steps `N`
      known, every `ceil(N / c)`-th; else every `s`-th with `s` doubling whenever
      the `c` slots fill (as `CheckpointedAdjoint`'s online plan does).
    """
    n, max_steps = problem.num_steps, problem.max_steps
    if checkpoints is None:
        if n is not None:
            return None
        checkpoints = BinomialCheckpoints()
    if isinstance(checkpoints, AllSteps):
        return None
    if isinstance(checkpoints, BinomialCheckpoints):
        if n is not None:
            n = min(n, max_steps)
            c = checkpoints.num_checkpoints or default_num_checkpoints(n)
            return EveryKSteps(max(1, -(-n // c))).plan(n, max_steps)
        c = checkpoints.num_checkpoints or default_num_checkpoints(max_steps)
        return OnlinePlan(outer_slots=c, inner_slots=0)
    return checkpoints.plan(n, max_steps)


def trajectory_source(
    interpolation: AbstractInterpolation,
    checkpoints: AbstractCheckpointSchedule | None,
    problem: Problem,
) -> AbstractTrajectorySource:
    """The primal source of an interpolating adjoint: every step's data stored
    (`StoredTrajectory`), or rebuilt from the states `segment_plan` keeps
    (`RebuiltTrajectory`)."""
    plan = segment_plan(checkpoints, problem)
    if plan is None:
        return StoredTrajectory(interpolation)
    return RebuiltTrajectory(interpolation, plan)


# --- the backward solve's own error control ----------------------------------------

# How far (in units of the tolerance, `_reconstruction_error`) the y that
# `BacksolveAdjoint` solves backward may stray from the forward solution before
# the gradient is refused. The reasoning, with an adaptive forward solve:
#
# - healthy: each accepted step's local error is at most one tolerance (the
#   controller's test), and where the backward solve does not amplify errors the
#   difference is a sum of the forward and backward local errors. Measured
#   (Tsit5, float32 and float64, rtol 1e-3 to 1e-10): at most 91, on
#   Lotka--Volterra over [0, 50] at rtol 1e-6 (730 forward and backward steps,
#   about 0.1 per step); 75 for 8 steps at rtol 1e-3; below 10 on Neural ODEs.
#   A sum of local errors can grow with the steps taken, so the limit grows with
#   them too: `RECONSTRUCTION_PER_STEP` per forward and backward step.
# - diverging: errors grow like the backward propagator, exponentially in time
#   where the forward dynamics contract. Measured: 1e6 on a linear problem with
#   decay rates 0.2 and 4 over [0, 4] (e^16 between the modes; the gradient 6e-2
#   off at rtol 1e-6); past the float64 range (inf) on the stiff kinetics (rates
#   1 and 1000) of tests/test_reliability_continuous.py backward with the
#   forward's constant steps (parameter gradients of 1e147).
#
# 1e4 sits two orders of magnitude from both; where the backward solve
# diverges, the difference usually grows far past any limit anyway. The check
# is conservative: on a linear problem the adjoint decays backward where y's
# error grows, and the two can cancel in the gradient (rates 1 and 20, Tsit5 at
# rtol 1e-8: y misses y0 by 1e7 tolerances, the gradient is within 1e-3); a y
# that far off is refused all the same, since nothing at run time can tell
# that case from the nonlinear one above.
RECONSTRUCTION_LIMIT = 1e4
RECONSTRUCTION_PER_STEP = 10
# With constant forward steps no tolerance states the forward solution's
# accuracy (an implicit solver's `rtol`/`atol` are those of its stage solves,
# not of its steps), so a difference from the forward's discretisation error
# cannot be told from one amplified by the backward solve. Only a gross
# divergence is then refused: `rtol = atol = 1 / RECONSTRUCTION_LIMIT`, i.e. a
# difference larger than `1 + |y|` (measured with constant Tsit5 steps: 1.4e-3
# relative on Lotka--Volterra with 20 steps over [0, 5], 1e-4 on a tanh field with
# 20 over [0, 10]; inf on the stiff kinetics).
_UNSTATED_TOLERANCE = 1 / RECONSTRUCTION_LIMIT


def _state_dtype(problem: Problem):
    leaves = jtu.tree_leaves(problem.y0)
    return jnp.result_type(*leaves) if leaves else problem.t0.dtype


def _stated_tolerances(*sources):
    """The loosest `rtol` and `atol` stated by `sources` (controllers, solvers),
    `None` where none states one."""
    out = []
    for name in ("rtol", "atol"):
        values = [getattr(x, name, None) for x in sources]
        values = [jnp.max(jnp.asarray(v)) for v in values if v is not None]
        out.append(None if not values else functools.reduce(jnp.maximum, values))
    return tuple(out)


def default_backward_controller(problem: Problem, solver: AbstractSolver):
    """The backward solve's controller when the adjoint is given none, and the
    first step it tries (`None`: chosen automatically).

    The forward's controller, except with constant steps and an implicit backward
    solver. An L-stable method steps stably across a stiff layer it does not
    resolve (|hλ| >> 1): the forward solution after it is right, and the discrete
    adjoints differentiate what was computed. But the adjoint ODE has the same
    fast modes, and its parameter integral `∫ a^T df/dθ dt` across such a step,
    from the step's stages or its dense output, can be wrong by more than its
    size (dL/dk2 of the wrong sign on the kinetics of
    tests/test_reliability_continuous.py). So the backward solve controls its own
    error: a `PIDController` at the implicit solver's own `rtol`/`atol` (else
    `10 sqrt(eps)` of the state's dtype, its stage solves' default under constant
    steps), starting with the forward's step and never exceeding it. Where its
    error estimate is within the tolerance it takes the forward's step size, so it
    is never coarser than before; it refines where those steps do not resolve
    the adjoint.

    An explicit solver keeps the forward's constant steps: a constant-step solve
    with it is stable only if `h |λ|` is bounded for every mode, and the adjoint,
    with the same modes, is then resolved as well as the forward solution is. So
    does a solver without an error estimate (no adaptive control is possible).
    """
    controller = problem.controller
    if (
        controller.adaptive
        or not solver.evaluates_jacobian
        or solver.error_order is None
        or problem.dt0 is None
    ):
        return controller, None
    eps = float(jnp.finfo(_state_dtype(problem)).eps)
    rtol, atol = _stated_tolerances(solver)
    rtol = 10 * eps**0.5 if rtol is None else rtol
    atol = 10 * eps**0.5 if atol is None else atol
    n = problem.num_steps
    if n is None:
        n = jnp.maximum(num_constant_steps(problem.t0, problem.t1, problem.dt0), 1)
    # The forward grid's step, `(t1 - t0) / N` (no longer than `dt0`).
    h = lax.stop_gradient((problem.t1 - problem.t0) / n)
    return PIDController(rtol=rtol, atol=atol, dtmax=h), h


def _reconstruction_tolerance(problem: Problem, backward_controller):
    """`rtol`, `atol` against which a y solved backward is checked: the looser of
    the forward and backward controllers' (the difference holds the errors of
    both solves), or `_UNSTATED_TOLERANCE` with constant forward steps."""
    unstated = _UNSTATED_TOLERANCE
    if not problem.controller.adaptive:
        return unstated, unstated
    rtol, atol = _stated_tolerances(problem.controller, backward_controller)
    return (unstated if rtol is None else rtol), (unstated if atol is None else atol)


def _reconstruction_error(y_back, y_ref, rtol, atol):
    """`max |y_back - y_ref| / (atol + rtol |y_ref|)` over every component (inf
    if not finite). The max, not the RMS of the step-size controllers: one
    diverging component among many is divergence."""
    scaled = jtu.tree_map(
        lambda b, r: jnp.max(jnp.abs(b - r) / (atol + rtol * jnp.abs(r)), initial=0),
        y_back,
        y_ref,
    )
    error = functools.reduce(jnp.maximum, jtu.tree_leaves(scaled), jnp.zeros(()))
    return jnp.where(jnp.isnan(error), jnp.inf, error)


def _backward_pass(problem: Problem, spec: _Spec, residuals, ct_final, ct_ys):
    """Solve the adjoint ODE from t1 back to t0; return the cotangent of
    `problem`."""
    y_final, final_state, ys_ts, internal, num_steps = residuals
    theta, theta_static = eqx.partition((problem.f, problem.args), eqx.is_inexact_array)

    def with_theta(th) -> Problem:
        f, args = eqx.combine(th, theta_static)
        return eqx.tree_at(
            lambda p: (p.f, p.args), problem, (f, args), is_leaf=lambda x: x is None
        )

    def vf(s, y, th):
        return with_theta(th).vector_field(s, y, with_theta(th).args)

    def a_dot_f_theta(s, y, a):
        _, vjp_fn = jax.vjp(lambda th: vf(s, y, th), theta)
        return vjp_fn(a)[0]

    primal, parameters = spec.primal, spec.parameters

    def adjoint_field(y_of_s):
        """dz/ds of the adjoint system, in the forward loop time s; `y_of_s` reads
        the forward solution (if `primal` does not carry it in the state)."""

        def field(s, z: AdjointState, th):
            y = primal.y_at(s, z, y_of_s)
            fy, a_dot, a_params_dot = parameters.derivatives(vf, s, y, z.a, th)
            return AdjointState(
                y=primal.y_derivative(fy), a=a_dot, a_params=a_params_dot
            )

        return field

    solver = spec.solver if spec.solver is not None else problem.solver
    if spec.controller is not None:
        controller, dt0 = spec.controller, None
    else:
        controller, dt0 = default_backward_controller(problem, solver)
    controller = parameters.backward_controller(controller)
    if not controller.adaptive:
        dt0 = problem.dt0
    backward_max_steps = (
        2 * problem.max_steps if spec.max_steps is None else spec.max_steps
    )

    def integrate(c: _Sweep, s_to, y_of_s) -> _Sweep:
        """The backward solve from `c.s` down to `s_to`: a problem of its own, in
        the reversed time τ = -s, run by the one loop."""
        backward = Problem(
            f=adjoint_field(y_of_s),
            solver=parameters.backward_solver(solver, a_dot_f_theta, y_of_s),
            controller=controller,
            t0=-c.s,
            t1=-s_to,
            y0=c.z,
            args=theta,
            dt0=dt0,
            ts=None,
            direction=-1,
            save_t0=False,
            save_t1=True,
            save_steps=False,
            dense=False,
            max_steps=backward_max_steps,
            num_steps=None,
        )
        summary, _, _ = run(backward, {}, differentiable=False)
        return eqx.tree_at(
            lambda x: (x.z, x.s, x.num_steps, x.num_accepted, x.num_f_evals, x.result),
            c,
            (
                summary.y,
                s_to,
                c.num_steps + summary.num_steps,
                c.num_accepted + summary.num_accepted,
                c.num_f_evals + num_f_evals(backward, summary),
                RESULTS.where(c.result == RESULTS.successful, summary.result, c.result),
            ),
        )

    ts = problem.ts if problem.ts is not None else jnp.zeros((0,), problem.t0.dtype)
    rtol, atol = _reconstruction_tolerance(problem, controller)

    def checked(c: _Sweep, y_ref) -> _Sweep:
        """`c`, its y (if solved backward) checked against the forward solution
        `y_ref` at the same time: the running maximum of
        `_reconstruction_error`."""
        y_back = primal.reconstructed_y(c.z)
        if y_back is None:
            return c
        error = _reconstruction_error(y_back, y_ref, rtol, atol)
        error = jnp.maximum(c.reconstruction_error, error.astype(problem.t0.dtype))
        return eqx.tree_at(lambda x: x.reconstruction_error, c, error)

    def jump(c: _Sweep) -> _Sweep:
        """At save time i: a gains dL/dy(t_i); dL/dt_i = <dL/dy(t_i), f(t_i, y_i)>."""
        i = c.save
        ct_i = jtu.tree_map(lambda x: x[i], ct_ys)
        y_i = jtu.tree_map(lambda x: x[i], ys_ts)
        # Before `reanchor` resets it: how far the y solved backward has drifted.
        c = checked(c, y_i)
        z = eqx.tree_at(lambda z: z.a, c.z, tree_add(c.z.a, ct_i))
        z = primal.at_save_time(z, y_i)
        ct_t = _tree_dot(ct_i, vf(ts[i], y_i, theta))
        return eqx.tree_at(
            lambda x: (x.z, x.ct_ts, x.save), c, (z, c.ct_ts.at[i].add(ct_t), i - 1)
        )

    def sweep(c: _Sweep, s_lo, last, y_of_s) -> _Sweep:
        """From `c.s` down to `s_lo`, passing the save times in `(s_lo, c.s]`
        (`[s_lo, c.s]` on the last stretch, which ends at t0)."""

        def more(c):
            t = ts[jnp.maximum(c.save, 0)]
            return (c.save >= 0) & ((t > s_lo) | (last & (t >= s_lo)))

        def body(c):
            return jump(integrate(c, ts[c.save], y_of_s))

        if ts.shape[0] > 0:
            c = lax.while_loop(more, body, c)
        return integrate(c, s_lo, y_of_s)

    zero = jnp.asarray(0, jnp.int32)
    c = _Sweep(
        z=AdjointState(
            y=primal.initial_y(y_final),
            a=ct_final,
            a_params=jtu.tree_map(jnp.zeros_like, theta),
        ),
        s=problem.t1,
        save=jnp.asarray(ts.shape[0] - 1, jnp.int32),
        ct_ts=jnp.zeros_like(ts),
        num_steps=zero,
        num_accepted=zero,
        num_f_evals=zero,
        result=RESULTS.successful,
        reconstruction_error=jnp.zeros((), problem.t0.dtype),
    )

    c = primal.sweep(problem, internal, final_state, num_steps, c, sweep)
    # y0 is known: a y solved backward must come back to it.
    c = checked(c, problem.y0)

    a0 = c.z.a
    ct_t0 = -_tree_dot(a0, vf(problem.t0, problem.y0, theta))
    ct_t1 = _tree_dot(ct_final, vf(problem.t1, y_final, theta))
    ct_theta = c.z.a_params
    _report_stats(c)

    ct = jtu.tree_map(jnp.zeros_like, inexact(problem))
    ct = eqx.tree_at(
        lambda p: (p.y0, p.t0, p.t1),
        ct,
        (a0, ct_t0.astype(problem.t0.dtype), ct_t1.astype(problem.t1.dtype)),
    )
    f_ct, args_ct = ct_theta
    ct = eqx.tree_at(
        lambda p: (p.f, p.args), ct, (f_ct, args_ct), is_leaf=lambda x: x is None
    )
    if problem.ts is not None:
        ct = eqx.tree_at(lambda p: p.ts, ct, c.ct_ts)
    failed = c.result != RESULTS.successful
    limit = jnp.maximum(
        RECONSTRUCTION_LIMIT,
        RECONSTRUCTION_PER_STEP * (num_steps + c.num_steps).astype(problem.t0.dtype),
    )
    # `not <=`: a NaN difference is divergence too.
    diverged = ~(c.reconstruction_error <= limit)
    if not problem.throw:
        # As the forward solve does with throw=False: no error, and nothing that
        # looks like a gradient. The cause is in `collect_backward_stats`.
        bad = failed | diverged
        return jtu.tree_map(lambda x: jnp.where(bad, jnp.full_like(x, jnp.nan), x), ct)
    failure = (
        "The backward (adjoint) solve failed: it reached its `max_steps`, met a "
        "NaN or infinite state, or needed a step below `dtmin` / the "
        "floating-point limit. The adjoint ODE may be unstable backward in time "
        "(see BacksolveAdjoint), or need a larger `max_steps` (the adjoint's own, "
        "e.g. BacksolveAdjoint(max_steps=...)) or looser tolerances. With "
        "solve(..., throw=False) the gradient is NaN instead and the cause is "
        "reported by collect_backward_stats."
    )
    if isinstance(primal, SolvedBackward):
        failure += (
            " With BacksolveAdjoint the usual cause is the primal ODE solved "
            "backward in time alongside the adjoint, which is unstable for stiff "
            "or dissipative problems: use InterpolatedAdjoint(), "
            "QuadratureAdjoint() or CheckpointedAdjoint() instead."
        )
    # Only BacksolveAdjoint solves y backward, so only it can diverge.
    divergence = (
        "BacksolveAdjoint: the primal ODE, solved backward in time alongside the "
        "adjoint, diverged: it does not return to the forward solution (to y0 at "
        "t0, or to the values saved at SaveAt(ts=...)): it is off by more than "
        f"{RECONSTRUCTION_LIMIT:g} times the tolerance (after a solve with "
        "constant steps, by more than 1 + |y|), so a gradient computed along it "
        "would be wrong. This is typical of stiff or dissipative "
        "problems: what contracts forward in time expands backward. Use "
        "InterpolatedAdjoint() or QuadratureAdjoint() (they read y from the "
        "forward solve) or CheckpointedAdjoint() (the exact gradient of the "
        "computed solution). With solve(..., throw=False) the gradient is NaN "
        "instead, and collect_backward_stats reports `reconstruction_error`."
    )
    index = jnp.where(failed, 0, 1)
    return eqx.branched_error_if(ct, failed | diverged, index, (failure, divergence))


def _report_stats(c: _Sweep):
    stats = dict(
        num_steps=c.num_steps,
        num_accepted_steps=c.num_accepted,
        num_rejected_steps=c.num_steps - c.num_accepted,
        num_f_evals=c.num_f_evals,
        result=c.result._value,
        reconstruction_error=c.reconstruction_error,
    )
    jax.debug.callback(_report, stats)


def continuous_solution(problem: Problem, spec: _Spec) -> Solution:
    """The `Solution` of a continuous adjoint's solve.

    With `SaveAt(fn=...)` the solve saves the states themselves and `fn` is
    applied to them outside the custom VJP (so JAX differentiates `fn`): the
    backward pass needs the state at each save time anyway (to restart y there
    with `BacksolveAdjoint`, and for dL/dt_i = <dL/dy(t_i), f(t_i, y_i)>), so
    storing `fn`'s values alone would save nothing here.
    """
    save_fn = problem.save_fn
    raw = eqx.tree_at(lambda p: p.save_fn, problem, None, is_leaf=lambda x: x is None)
    summary, records = continuous_solve(raw, spec)
    sol = solution_from_records(raw, summary, records, discrete=False)
    if save_fn is None or sol.ts is None:
        return sol
    d = problem.direction
    loop_ts = sol.ts if isinstance(d, int) and d == 1 else d * sol.ts
    return eqx.tree_at(lambda s: s.ys, sol, jax.vmap(save_fn)(loop_ts, sol.ys))


@eqx.filter_custom_vjp
def continuous_solve(problem: Problem, spec: _Spec):
    summary, _, records = run(problem, output_recorders(problem), differentiable=False)
    return summary, plain_records(records)


@continuous_solve.def_fwd
def _continuous_fwd(perturbed, problem: Problem, spec: _Spec):
    del perturbed
    stepper = make_stepper(problem)
    kept = spec.primal.forward_recorders(problem, stepper)
    recorders = {**output_recorders(problem), **kept}
    summary, final_state, records = run(problem, recorders, differentiable=False)
    internal = plain_records({name: records.pop(name) for name in kept})
    # As the solution holds them: the backward pass resets y to them and checks
    # y against them.
    ys_ts = None
    if "ts" in records:
        ys_ts = values_at_ts(records["ts"][0], summary, problem.y0)
    residuals = (summary.y, final_state, ys_ts, internal, summary.num_steps)
    return (summary, plain_records(records)), residuals


@continuous_solve.def_bwd
def _continuous_bwd(residuals, grad_obj, perturbed, problem: Problem, spec: _Spec):
    del perturbed
    y_final, _, ys_ts, _, _ = residuals
    ct_summary, ct_records = grad_obj
    ct_final = zeros_where_none(None if ct_summary is None else ct_summary.y, y_final)
    ct_ys = None
    if problem.ts is not None:
        ct_ts_record = None if ct_records is None else ct_records.get("ts")
        ct_ys = zeros_where_none(
            None if ct_ts_record is None else ct_ts_record[0], ys_ts
        )
    ct = _backward_pass(problem, spec, residuals, ct_final, ct_ys)
    return zeros_where_none(ct, problem)


def check_continuous(
    problem: Problem, name: str, interpolation=None, checkpoints=None
) -> None:
    """What a continuous adjoint cannot differentiate, refused at trace time."""
    if problem.save_steps:
        raise ValueError(
            f"{name} cannot differentiate SaveAt(steps=True): the backward solve "
            "does not know the forward steps. Save at fixed times with "
            "SaveAt(ts=...), or use CheckpointedAdjoint."
        )
    if problem.dense:
        raise ValueError(
            f"{name} cannot differentiate SaveAt(dense=True): the times at which "
            "the dense output will be evaluated are unknown to the backward solve. "
            "Save at those times with SaveAt(ts=...), or use CheckpointedAdjoint."
        )
    if interpolation is not None and not isinstance(
        interpolation, AbstractInterpolation
    ):
        raise TypeError(f"{name}: `interpolation` must be an adjointkit interpolation.")
    if checkpoints is not None and not isinstance(
        checkpoints, AbstractCheckpointSchedule
    ):
        raise TypeError(
            f"{name}: `checkpoints` must be None or a checkpoint schedule "
            "(AllSteps(), EveryKSteps(k), BinomialCheckpoints(c)), got "
            f"{checkpoints!r}."
        )
