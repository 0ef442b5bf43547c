"""The one stepping loop. Every adjoint runs its solves through `run`.

A *stepper* says how one step is taken from a state; `run` drives it:

- `GridStepper`: constant steps whose number `N` is known at trace time. Its state
  is the step number and `(y, f)`; the loop is a `lax.scan` of exactly `N` steps:
  fastest, and differentiable in both modes.
- `ControlledStepper`: everything else (adaptive steps, or constant steps whose
  number is only known at run time). Its state holds the time, the proposed next
  step end, the controller's state and counters. The loop is a `lax.while_loop`
  bounded by `max_steps` (differentiable in forward mode), or, when reverse mode
  must work through it (`DirectAdjoint`), a `bounded_while_loop`: nested,
  checkpointed scans that skip whole blocks once the solve is done, so that
  reverse mode's cost follows the steps taken rather than `max_steps`.

Every attempted step is reported to every recorder (`_recording.StepRecord`): that
per-step hook is how adjoints keep what they need. Adjoints that replay steps on
their backward pass (checkpointing) call the same `advance` the loop calls, from a
stored stepper state, so no adjoint copies the loop.
"""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PyTree, Real

from ._bounded_loop import bounded_while_loop
from ._errors import concrete_value
from ._problem import Problem
from ._recording import AbstractRecorder, DecisionRecorder, StepRecord
from ._solution import RESULTS
from ._tree import tree_all_finite, tree_where
from .controllers._constant import grid_time
from .solvers import AbstractSolver
from .solvers._base import AbstractAuxiliaryState, SolverStep


class GridState(eqx.Module):
    """Where a `GridStepper` is: after `n` attempts, of which the first
    `num_accepted` were accepted, at grid point `num_accepted` with `y` there and
    the solver's carried state `f` (`solver.func(f)` is `f(t, y)` at that grid
    point), the evaluations counted so far and whether every step so far could be
    computed. Until a step fails, `num_accepted == n`; after one fails the solve
    has stopped, and the remaining attempts of the scan leave the state as it is."""

    n: Int[Array, ""]
    num_accepted: Int[Array, ""]
    y: PyTree
    f: PyTree
    evals: "Evals"
    result: RESULTS


class Evals(eqx.Module):
    """Evaluations of `f` and of its Jacobian made by the steps of a run."""

    f: Int[Array, ""]
    jac: Int[Array, ""]

    @staticmethod
    def zero() -> "Evals":
        zero = jnp.asarray(0, jnp.int32)
        return Evals(f=zero, jac=zero)

    def add(self, step: SolverStep) -> "Evals":
        return Evals(f=self.f + step.num_f_evals, jac=self.jac + step.num_jac_evals)


class ControlledState(eqx.Module):
    """Where a `ControlledStepper` is: at `(t, y)` with the solver's carried state
    `f`, about to attempt a step to `tnext`, after `num_steps` attempts of which
    `num_accepted` were accepted."""

    t: Real[Array, ""]
    tnext: Real[Array, ""]
    y: PyTree
    f: PyTree
    controller_state: PyTree
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    result: RESULTS
    evals: Evals


class Summary(eqx.Module):
    """How a run ended: the time reached (loop time, not differentiated: `t1`
    unless the solve stopped early), the state there, counters and outcome.

    `num_steps` counts the attempts that belong to the solve: on a grid whose step
    failed, the attempts up to and including the failed one (the scan's later
    iterations change nothing; `stepper.attempts(final_state)` is the loop's own
    count, which a replay must reverse)."""

    t: Real[Array, ""]
    y: PyTree
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    result: RESULTS
    evals: Evals


def _end_tolerance(problem: Problem):
    """How close to `t1` a proposed step end is rounded onto `t1` (100 ulps of the
    interval's scale), so that the last step is never a sliver."""
    scale = jnp.maximum(jnp.abs(problem.t1), jnp.abs(problem.t1 - problem.t0))
    return 100 * jnp.finfo(problem.t1.dtype).eps * scale


def _clip_to_end(problem: Problem, tnext):
    tnext = jnp.minimum(tnext, problem.t1)
    return jnp.where(tnext >= problem.t1 - _end_tolerance(problem), problem.t1, tnext)


def _drop_solver_state(state):
    """A stepper state without the solver's carried state, which a restore
    recomputes from `(t, y)` with `init`; unless it is an `AbstractAuxiliaryState`
    (a reversible solver's second solution), which is not a function of `(t, y)`
    and is kept."""
    if isinstance(state.f, AbstractAuxiliaryState):
        return state
    return eqx.tree_at(lambda s: s.f, state, None, is_leaf=lambda x: x is None)


def _cannot_fail(result: RESULTS) -> bool:
    """Whether a step's `result` is `successful` at trace time (an explicit
    method's): then no failure needs handling, and the success path carries no
    extra `select`."""
    (value,) = jtu.tree_leaves(result)
    (success,) = jtu.tree_leaves(RESULTS.successful)
    value = concrete_value(value)
    return value is not None and bool(value == success)


def configured_solver(problem: Problem) -> AbstractSolver:
    """The problem's solver, configured for its controller (tolerances)."""
    return problem.solver.with_controller(problem.controller)


class GridStepper(eqx.Module):
    """`problem.num_steps` equal steps over `[t0, t1]`, as a scan."""

    def init(self, problem: Problem) -> GridState:
        f0 = configured_solver(problem).init(
            problem.vector_field, problem.t0, problem.y0, problem.args
        )
        zero = jnp.asarray(0, jnp.int32)
        return GridState(
            n=zero,
            num_accepted=zero,
            y=problem.y0,
            f=f0,
            evals=Evals.zero(),
            result=RESULTS.successful,
        )

    def advance(
        self, problem: Problem, state: GridState
    ) -> tuple[GridState, StepRecord]:
        """Attempt the step from grid point `num_accepted` to the next.

        A step the solver could not compute (a Newton iteration that did not
        converge) cannot be retried shorter on a grid: it is rejected, its cause
        is kept in `result`, and the solve stops there. The scan's remaining
        iterations attempt nothing new: they are rejected too, and neither `y`,
        the counters nor the evaluations change."""
        n, m, num_steps = state.n, state.num_accepted, problem.num_steps
        ta = grid_time(problem.t0, problem.t1, m, num_steps)
        tb = grid_time(problem.t0, problem.t1, m + 1, num_steps)
        solver = configured_solver(problem)
        out = solver.step(problem.vector_field, ta, tb, state.y, problem.args, state.f)
        if _cannot_fail(out.result):
            # No step of this solver can fail, so neither did an earlier one.
            accept = jnp.array(True)
            y, f, evals = out.y1, out.state, state.evals.add(out)
            num_accepted, result = m + 1, state.result
        else:
            going = state.result == RESULTS.successful
            accept = going & (out.result == RESULTS.successful)
            y = tree_where(accept, out.y1, state.y)
            f = tree_where(accept, out.state, state.f)
            evals = tree_where(going, state.evals.add(out), state.evals)
            num_accepted = m + accept.astype(jnp.int32)
            result = RESULTS.where(going, out.result, state.result)
        step = StepRecord(
            attempt=n,
            index=m,
            t0=ta,
            t1=tb,
            y0=state.y,
            y1=out.y1,
            f0=solver.func(state.f),
            f1=solver.func(out.state),
            dense_info=out.dense_info,
            accepted=accept,
            state=state,
            save_fn=problem.save_fn,
        )
        new_state = GridState(
            n=n + 1, num_accepted=num_accepted, y=y, f=f, evals=evals, result=result
        )
        return new_state, step

    def num_attempts(self, problem: Problem) -> int:
        return min(problem.num_steps, problem.max_steps)

    def decision_recorder(self, problem: Problem) -> None:
        """Nothing to record: a grid makes no decisions that rounding could change."""
        del problem
        return None

    def replaying(self, decisions) -> "GridStepper":
        del decisions
        return self

    def checkpoint(self, state: GridState) -> GridState:
        """What a checkpoint keeps: the step counts and `y`. (`f` is one
        evaluation away, and would double the memory of every checkpoint; an
        `AbstractAuxiliaryState` is kept whole.)"""
        return _drop_solver_state(state)

    def time(self, problem: Problem, state: GridState) -> Real[Array, ""]:
        return grid_time(problem.t0, problem.t1, state.num_accepted, problem.num_steps)

    def accepted(self, state: GridState) -> Int[Array, ""]:
        return state.num_accepted

    def attempts(self, state: GridState) -> Int[Array, ""]:
        """The loop's iterations so far (what a replay reverses)."""
        return state.n

    def restore(self, problem: Problem, kept: GridState) -> GridState:
        """The state a checkpoint was taken from (bit for bit: `f` is recomputed
        exactly as the step that produced it computed it)."""
        if kept.f is not None:
            return kept
        t = grid_time(problem.t0, problem.t1, kept.num_accepted, problem.num_steps)
        f = configured_solver(problem).init(
            problem.vector_field, t, kept.y, problem.args
        )
        return eqx.tree_at(lambda s: s.f, kept, f, is_leaf=lambda x: x is None)

    def summary(self, problem: Problem, state: GridState) -> Summary:
        result = state.result
        if self.num_attempts(problem) != problem.num_steps:
            result = RESULTS.where(
                result == RESULTS.successful, RESULTS.max_steps_reached, result
            )
        # The attempts of the solve: those accepted, and the one that failed.
        failed = (state.result != RESULTS.successful).astype(jnp.int32)
        t = grid_time(problem.t0, problem.t1, state.num_accepted, problem.num_steps)
        return Summary(
            t=lax.stop_gradient(t),
            y=state.y,
            num_steps=state.num_accepted + failed,
            num_accepted=state.num_accepted,
            result=result,
            evals=state.evals,
        )


class ControlledStepper(eqx.Module):
    """Steps chosen by `problem.controller`, attempted until `t1` is reached.

    With `decisions` (from a `DecisionRecorder` of an earlier run of the same
    solve) it replays that run's accept/reject decisions and proposed step ends
    instead of asking the controller: what checkpointed replays use, so that they
    retrace the forward pass's times exactly whatever the rounding of `y`.
    """

    decisions: tuple[Bool[Array, " attempts"], Real[Array, " attempts"]] | None = None

    def decision_recorder(self, problem: Problem) -> DecisionRecorder | None:
        """What to record in a run that will be replayed: the decisions of an
        adaptive controller (a constant step size's are a formula of the step
        number, the same in any replay)."""
        return DecisionRecorder() if problem.controller.adaptive else None

    def replaying(self, decisions) -> "ControlledStepper":
        """This stepper, replaying `decisions` (the record of `decision_recorder`,
        or `None`: decide afresh)."""
        return ControlledStepper(decisions=decisions)

    def init(self, problem: Problem) -> ControlledState:
        vf = problem.vector_field
        solver = configured_solver(problem)
        f0 = solver.init(vf, problem.t0, problem.y0, problem.args)
        tnext, controller_state = problem.controller.init(
            vf,
            solver,
            problem.t0,
            problem.t1,
            problem.y0,
            problem.args,
            problem.dt0,
            solver.func(f0),
        )
        zero = jnp.asarray(0, jnp.int32)
        return ControlledState(
            t=problem.t0,
            tnext=_clip_to_end(problem, tnext),
            y=problem.y0,
            f=f0,
            controller_state=controller_state,
            num_steps=zero,
            num_accepted=zero,
            result=RESULTS.successful,
            evals=Evals.zero(),
        )

    def advance(
        self, problem: Problem, state: ControlledState
    ) -> tuple[ControlledState, StepRecord]:
        """Attempt one step from `state.t` to `state.tnext`; accept or reject it."""
        solver, controller = configured_solver(problem), problem.controller
        out = solver.step(
            problem.vector_field, state.t, state.tnext, state.y, problem.args, state.f
        )
        y1, y_error = out.y1, out.y_error
        step_failed = out.result != RESULTS.successful
        retried = controller.adaptive and y_error is not None
        if retried:
            # A step the solver could not compute (a Newton iteration that did
            # not converge) is rejected and retried shorter: an infinite error
            # makes the controller shrink the step as much as it may.
            y_error = jtu.tree_map(
                lambda e: jnp.where(step_failed, jnp.inf, e), y_error
            )
        if self.decisions is None:
            accept, next_t0, proposed, controller_state, failed = controller.adapt(
                state.t,
                state.tnext,
                state.y,
                y1,
                y_error,
                solver.error_order,
                state.controller_state,
            )
        else:
            accepted, proposals = self.decisions
            accept = accepted[state.num_steps]
            # As every controller does: on to `tnext` if accepted, else stay.
            next_t0 = jnp.where(accept, state.tnext, state.t)
            # The recorded value, bit for bit, with the derivative the controller's
            # `next_t0 + dt` has (step sizes themselves are not differentiated).
            proposed = proposals[state.num_steps] + (
                next_t0 - lax.stop_gradient(next_t0)
            )
            controller_state, failed = state.controller_state, jnp.array(False)
        result = state.result
        if not retried and not _cannot_fail(out.result):
            # A constant step cannot be retried shorter: a failed one is rejected
            # and the solve stops there, naming the cause (as on a grid).
            accept = accept & ~step_failed
            next_t0 = jnp.where(step_failed, state.t, next_t0)
            result = RESULTS.where(
                step_failed & (result == RESULTS.successful), out.result, result
            )
        next_tnext = _clip_to_end(problem, proposed)
        if controller.adaptive:
            # A step that cannot be made: the controller gave up (dtmin), or the
            # step size fell to the floating-point limit. Name the cause: usually a
            # state gone NaN/inf, which the controller keeps rejecting. A refusal
            # of the step after the last one (say, below dtmin because the
            # interval ended) is no failure.
            tiny = (
                10
                * jnp.finfo(next_t0.dtype).eps
                * jnp.maximum(jnp.abs(next_t0), jnp.abs(problem.t1 - problem.t0))
            )
            not_finished = next_t0 < problem.t1
            stuck = not_finished & (next_tnext - next_t0 <= tiny)
            cause = RESULTS.where(
                tree_all_finite(y1),
                RESULTS.step_size_too_small,
                RESULTS.nonfinite_state,
            )
            cause = RESULTS.where(step_failed, out.result, cause)
            result = RESULTS.where(
                ((failed & not_finished) | stuck) & (result == RESULTS.successful),
                cause,
                result,
            )
        step = StepRecord(
            attempt=state.num_steps,
            index=state.num_accepted,
            t0=state.t,
            t1=state.tnext,
            y0=state.y,
            y1=y1,
            f0=solver.func(state.f),
            f1=solver.func(out.state),
            dense_info=out.dense_info,
            accepted=accept,
            state=state,
            proposed_tnext=proposed,
            save_fn=problem.save_fn,
        )
        new_state = ControlledState(
            t=next_t0,
            tnext=next_tnext,
            y=tree_where(accept, y1, state.y),
            f=tree_where(accept, out.state, state.f),
            controller_state=controller_state,
            num_steps=state.num_steps + 1,
            num_accepted=state.num_accepted + accept.astype(jnp.int32),
            result=result,
            evals=state.evals.add(out),
        )
        return new_state, step

    def checkpoint(self, state: ControlledState) -> ControlledState:
        """What a checkpoint keeps: everything but `f`, one evaluation away
        (unless it is an `AbstractAuxiliaryState`)."""
        return _drop_solver_state(state)

    def time(self, problem: Problem, state: ControlledState) -> Real[Array, ""]:
        del problem
        return state.t

    def accepted(self, state: ControlledState) -> Int[Array, ""]:
        return state.num_accepted

    def attempts(self, state: ControlledState) -> Int[Array, ""]:
        """The loop's iterations so far (what a replay reverses)."""
        return state.num_steps

    def restore(self, problem: Problem, kept: ControlledState) -> ControlledState:
        if kept.f is not None:
            return kept
        f = configured_solver(problem).init(
            problem.vector_field, kept.t, kept.y, problem.args
        )
        return eqx.tree_at(lambda s: s.f, kept, f, is_leaf=lambda x: x is None)

    def not_done(self, problem: Problem, state: ControlledState) -> Bool[Array, ""]:
        return (
            (state.t < problem.t1)
            & (state.result == RESULTS.successful)
            & (state.num_steps < problem.max_steps)
        )

    def summary(self, problem: Problem, state: ControlledState) -> Summary:
        unfinished = (state.t < problem.t1) & (state.result == RESULTS.successful)
        return Summary(
            t=lax.stop_gradient(state.t),
            y=state.y,
            num_steps=state.num_steps,
            num_accepted=state.num_accepted,
            result=RESULTS.where(unfinished, RESULTS.max_steps_reached, state.result),
            evals=state.evals,
        )


def make_stepper(problem: Problem) -> GridStepper | ControlledStepper:
    """The stepper for `problem`: a grid when its step count is known."""
    return GridStepper() if problem.num_steps is not None else ControlledStepper()


def _dense_like(problem: Problem, f0: PyTree) -> PyTree:
    """The structure of the solver's `dense_info`, without computing a step
    (`f0`: the solver's carried state)."""
    t0 = problem.t0
    return jax.eval_shape(
        lambda f: (
            configured_solver(problem)
            .step(problem.vector_field, t0, t0, problem.y0, problem.args, f)
            .dense_info
        ),
        f0,
    )


def init_records(
    problem: Problem, recorders: dict[str, AbstractRecorder], f0: PyTree
) -> dict[str, PyTree]:
    """Every recorder's empty record."""
    dense_like = _dense_like(problem, f0)
    func = configured_solver(problem).func(f0)
    return {
        name: rec.init(problem.t0, problem.y0, func, dense_like, problem.capacity)
        for name, rec in recorders.items()
    }


def record_all(recorders, records, step: StepRecord) -> dict[str, PyTree]:
    return {name: rec.record(records[name], step) for name, rec in recorders.items()}


def advance_n(problem: Problem, stepper, state, num: Int[Array, ""]):
    """Replay `num` steps from `state`, recording nothing (checkpointing)."""

    def body(_, s):
        return stepper.advance(problem, s)[0]

    return lax.fori_loop(0, num, body, state)


def replay_recording(
    problem: Problem,
    stepper,
    state,
    num: Int[Array, ""],
    recorders: dict[str, AbstractRecorder],
    records: dict[str, PyTree],
):
    """Replay `num` steps from `state`, telling `recorders` about each (rebuilding
    what a forward pass would have kept, one segment at a time)."""

    def body(_, carry):
        state, records = carry
        state, step = stepper.advance(problem, state)
        return state, record_all(recorders, records, step)

    return lax.fori_loop(0, num, body, (state, records))


def run(
    problem: Problem,
    recorders: dict[str, AbstractRecorder],
    *,
    differentiable: bool,
) -> tuple[Summary, PyTree, dict[str, PyTree]]:
    """Integrate `problem` from `t0` to `t1`, telling `recorders` about every step.

    **Arguments:**

    - `problem`: the validated solve.
    - `recorders`: what to keep, by name.
    - `differentiable`: whether reverse-mode differentiation through the loop must
      work (`DirectAdjoint`); otherwise a `lax.while_loop` is used when the number
      of steps is not known at trace time.

    **Returns:** `(summary, final_state, records)`: how the run ended (its `result`
    says whether `t1` was reached), the stepper's final state, and the records by
    name.
    """
    stepper = make_stepper(problem)
    state = stepper.init(problem)
    records = init_records(problem, recorders, state.f)

    def body(carry):
        state, records = carry
        state, step = stepper.advance(problem, state)
        return state, record_all(recorders, records, step)

    if isinstance(stepper, GridStepper):
        (state, records), _ = lax.scan(
            lambda c, _: (body(c), None),
            (state, records),
            None,
            length=stepper.num_attempts(problem),
        )
    else:
        cond = lambda c: stepper.not_done(problem, c[0])  # noqa: E731
        if differentiable:
            state, records = bounded_while_loop(
                cond, body, (state, records), max_iterations=problem.max_steps
            )
        else:
            state, records = lax.while_loop(cond, body, (state, records))
    summary = stepper.summary(problem, state)
    nonfinite = ~tree_all_finite(summary.y) & (summary.result == RESULTS.successful)
    summary = eqx.tree_at(
        lambda s: s.result,
        summary,
        RESULTS.where(nonfinite, RESULTS.nonfinite_state, summary.result),
    )
    return summary, state, records


def num_f_evals(problem: Problem, summary: Summary) -> Int[Array, ""]:
    """Evaluations of `f` a run made: the initial one, the initial-step probe of
    an adaptive controller choosing `dt0`, and those its steps counted."""
    extra = 1
    if problem.controller.adaptive and problem.dt0 is None:
        extra += 1
    return extra + summary.evals.f
