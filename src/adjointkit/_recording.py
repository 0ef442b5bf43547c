"""The per-step hook of the integration loop: what a solve keeps as it goes.

The loop calls `record(state, step)` on every recorder after every attempted step.
Adjoints differ in what they keep (nothing, saved values, checkpoints,
interpolation data); they say so by choosing recorders, never by changing the
loop. Adjoints that own their backward pass also need each recorder's `pullback`:
the transpose of one `record` call.
"""

import abc

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PyTree, Real

from ._bounded_loop import bounded_while_loop
from .interpolation import AbstractInterpolation, Trajectory


class StepRecord(eqx.Module):
    """What the loop reports about one attempted step.

    `attempt` counts attempts (accepted or not) before this one. `index` is the
    number of steps accepted before this one, so an accepted step is step number
    `index` (0-based). Data recorded at `index` for a rejected step is overwritten
    by the next attempt, which has the same index: recorders may write
    unconditionally. `state` is the stepper's state before the attempt (what a
    checkpoint keeps). `proposed_tnext` is the end time the controller proposed
    for the next attempt, before clipping to `t1` (`None` on a grid): with
    `accepted`, all a replay needs to retrace the step sizes (`DecisionRecorder`).
    """

    attempt: Int[Array, ""]
    index: Int[Array, ""]
    t0: Real[Array, ""]
    t1: Real[Array, ""]
    y0: PyTree
    y1: PyTree
    f0: PyTree
    f1: PyTree
    dense_info: PyTree
    accepted: Bool[Array, ""]
    state: PyTree
    proposed_tnext: Real[Array, ""] | None = None
    save_fn: PyTree = None


def inexact(tree: PyTree) -> PyTree:
    """`tree` with every leaf that is not a floating array replaced by `None`: the
    structure of a cotangent of `tree`."""
    return eqx.filter(tree, eqx.is_inexact_array)


class AbstractRecorder(eqx.Module):
    """Keeps something from every step of a solve.

    An implementation provides:

    - `init(t0, y0, f0, dense_like, capacity) -> state`: the empty record
      (`dense_like`: the structure of the solver's `dense_info`; `capacity`: the
      most steps the solve can take);
    - `record(state, step: StepRecord) -> state`;
    - `pullback(state, ct_state, step) -> (ct_state, ct_step)`: the transpose of
      `record` at `step`: given the cotangent of the record after the step, the
      cotangent of the record before it and of the `StepRecord`. (`state` is any
      record of the right structure, e.g. the final one; only its shape matters
      to a linear write.) Cotangents have `None` where a leaf is not floating.
      Most recorders only write at an index, and use `pullback_by_vjp`.
    """

    @abc.abstractmethod
    def init(
        self, t0, y0: PyTree, f0: PyTree, dense_like: PyTree, capacity: int
    ) -> PyTree:
        """The empty record."""

    @abc.abstractmethod
    def record(self, state: PyTree, step: StepRecord) -> PyTree:
        """The record after one more attempted step."""

    @abc.abstractmethod
    def pullback(
        self, state: PyTree, ct_state: PyTree, step: StepRecord
    ) -> tuple[PyTree, PyTree]:
        """The transpose of `record` at `step`."""


def pullback_by_vjp(recorder: AbstractRecorder, state, ct_state, step):
    """`pullback` of a `record` that JAX can transpose (writes at an index).

    The transpose of a write zeroes the written entry in the cotangent, so an
    entry overwritten later (a rejected attempt's, then its successor's) sends its
    cotangent only to the last write.
    """
    _, vjp_fn = eqx.filter_vjp(recorder.record, state, step)
    return vjp_fn(ct_state)


def _set(buffer, index, value):
    return jtu.tree_map(lambda b, v: b.at[index].set(v.astype(b.dtype)), buffer, value)


def _empty(like: PyTree, n: int, fill=0.0):
    return jtu.tree_map(lambda x: jnp.full((n, *x.shape), fill, x.dtype), like)


def saved_value(step: StepRecord, t, y):
    """What is saved of the state `y` at loop time `t`: `y`, or
    `SaveAt(fn=...)`'s value there, so that only that is stored."""
    return y if step.save_fn is None else step.save_fn(t, y)


def _empty_saved(out_like, y0, n: int, fill=0.0):
    """A buffer of `n` saved values: like `y0`, or like `out_like` (the structure
    of `SaveAt(fn=...)`'s value, a pytree of `jax.ShapeDtypeStruct`)."""
    like = y0 if out_like is None else out_like
    return jtu.tree_map(
        lambda x: jnp.full(
            (n, *x.shape), fill if jnp.issubdtype(x.dtype, jnp.inexact) else 0, x.dtype
        ),
        like,
    )


class StepsRecorder(AbstractRecorder):
    """The time and state at the end of every accepted step (`SaveAt(steps=True)`);
    with `SaveAt(fn=...)`, `fn`'s value instead of the state (`out_like`: its
    structure)."""

    out_like: PyTree = None

    def init(self, t0, y0, f0, dense_like, capacity):
        del f0, dense_like
        return (
            jnp.full((capacity,), jnp.inf, t0.dtype),
            _empty_saved(self.out_like, y0, capacity, jnp.inf),
        )

    def record(self, state, step):
        ts, ys = state
        value = saved_value(step, step.t1, step.y1)
        return (_set(ts, step.index, step.t1), _set(ys, step.index, value))

    def pullback(self, state, ct_state, step):
        return pullback_by_vjp(self, state, ct_state, step)


class TrajectoryRecorder(AbstractRecorder):
    """Interpolation data for every accepted step (`interpolation.Trajectory`).

    `offset` is subtracted from each step's index: a replay of the steps from
    number `offset` on fills a trajectory of its own from its start.
    """

    interpolation: AbstractInterpolation
    solver: eqx.Module
    offset: Int[Array, ""] | int = 0

    def init(self, t0, y0, f0, dense_like, capacity):
        capacity = max(capacity, 1)
        point = self.interpolation.point_data(y0, f0)
        points = _set(_empty(point, capacity + 1), 0, point)
        times = jnp.full((capacity + 1,), jnp.inf, t0.dtype).at[0].set(t0)
        steps = _empty(self.interpolation.step_data(dense_like), capacity)
        return Trajectory(
            times=times,
            points=points,
            steps=steps,
            count=jnp.asarray(0, jnp.int32),
            interpolation=self.interpolation,
            solver=self.solver,
        )

    def record(self, state: Trajectory, step: StepRecord) -> Trajectory:
        point = self.interpolation.point_data(step.y1, step.f1)
        i = step.index - self.offset
        return Trajectory(
            times=state.times.at[i + 1].set(step.t1),
            points=_set(state.points, i + 1, point),
            steps=_set(state.steps, i, self.interpolation.step_data(step.dense_info)),
            count=state.count + step.accepted.astype(jnp.int32),
            interpolation=state.interpolation,
            solver=state.solver,
        )

    def pullback(self, state, ct_state, step):
        return pullback_by_vjp(self, state, ct_state, step)


def _ts_in_step(ts, step: StepRecord):
    """The range `[lo, hi)` of `ts` saved during `step`: those in `(t0, t1]`, and
    also `t0` itself on the first step; empty for a rejected attempt."""
    first = step.index == 0
    lo = jnp.where(
        first,
        jnp.searchsorted(ts, step.t0, side="left"),
        jnp.searchsorted(ts, step.t0, side="right"),
    )
    hi = jnp.searchsorted(ts, step.t1, side="right")
    hi = jnp.where(step.accepted, hi, lo)
    return lo.astype(jnp.int32), jnp.maximum(hi, lo).astype(jnp.int32)


class TsRecorder(AbstractRecorder):
    """Values at `SaveAt(ts=...)` from the solver's dense output, written as the
    steps that contain them are accepted.

    The record is `(ys, ts)`: `ts` is carried unchanged so that its cotangent
    (the sensitivity to the save times) flows back through the record like any
    other. A save time no step reaches (when `t0 == t1`, or past the point where
    a failed solve stopped) is left for the caller to fill (`y0`, or `inf`).

    The save times within one step are written by a loop over them. With
    `differentiable=True` that loop is a `bounded_while_loop` (at most `len(ts)`
    iterations), so that reverse mode can differentiate `record` itself
    (`DirectAdjoint`): the record then costs `len(ts)` values, where reading them
    off a stored dense output afterwards would cost every step's dense output,
    `max_steps` of them. Otherwise it is a plain `lax.fori_loop`, and adjoints
    that own their backward pass use `pullback`.
    """

    ts: Real[Array, " times"]
    solver: eqx.Module
    differentiable: bool = eqx.field(static=True, default=False)
    out_like: PyTree = None

    def init(self, t0, y0, f0, dense_like, capacity):
        del t0, f0, dense_like, capacity
        return (_empty_saved(self.out_like, y0, self.ts.shape[0]), self.ts)

    def _value(self, step: StepRecord, t):
        y = self.solver.interpolate(step.t0, step.t1, step.y0, step.dense_info, t)
        return saved_value(step, t, y)

    def record(self, state, step):
        ys, ts = state
        lo, hi = _ts_in_step(ts, step)

        def body(i, ys):
            return _set(ys, i, self._value(step, ts[i]))

        if self.differentiable:
            _, ys = bounded_while_loop(
                lambda c: c[0] < hi,
                lambda c: (c[0] + 1, body(*c)),
                (lo, ys),
                max_iterations=ts.shape[0],
            )
        else:
            ys = lax.fori_loop(lo, hi, body, ys)
        return (ys, ts)

    def pullback(self, state, ct_state, step):
        _, ts = state
        ct_ys, ct_ts = ct_state
        lo, hi = _ts_in_step(ts, step)
        inputs = (step.t0, step.t1, step.y0, step.dense_info, step.save_fn)
        zero = jtu.tree_map(jnp.zeros_like, inexact(inputs))

        def value(inp, t):
            t0, t1, y0, dense_info, save_fn = inp
            y = self.solver.interpolate(t0, t1, y0, dense_info, t)
            return y if save_fn is None else save_fn(t, y)

        def body(i, carry):
            acc, ct_ys, ct_ts = carry
            ct_value = jtu.tree_map(lambda c: c[i], ct_ys)
            _, vjp_fn = eqx.filter_vjp(value, inputs, ts[i])
            ct_inputs, ct_t = vjp_fn(ct_value)
            acc = jtu.tree_map(jnp.add, acc, ct_inputs)
            ct_ys = jtu.tree_map(lambda c: c.at[i].set(0), ct_ys)
            return acc, ct_ys, ct_ts.at[i].add(ct_t)

        acc, ct_ys, ct_ts = lax.fori_loop(lo, hi, body, (zero, ct_ys, ct_ts))
        ct_t0, ct_t1, ct_y0, ct_dense, ct_save_fn = acc
        ct_step = jtu.tree_map(jnp.zeros_like, inexact(step))
        ct_step = eqx.tree_at(
            lambda s: (s.t0, s.t1, s.y0, s.dense_info, s.save_fn),
            ct_step,
            (ct_t0, ct_t1, ct_y0, ct_dense, ct_save_fn),
            is_leaf=lambda x: x is None,
        )
        return (ct_ys, ct_ts), ct_step


class DecisionRecorder(AbstractRecorder):
    """Each attempt's step-size decisions: whether it was accepted, and the end
    time the controller proposed next.

    A replay from a checkpoint that re-ran the controller would depend on rounding:
    the replayed steps are compiled in another loop, and a last-bit difference in
    an error estimate near the tolerance can turn an acceptance into a rejection,
    after which the replay retraces a different solve and the gradient is that of
    the wrong steps (in float32, badly so). Replaying these recorded decisions
    instead (`ControlledStepper.replaying`) retraces the same times bit for bit;
    only `y` may differ, by rounding. Two scalars per attempt.
    """

    def init(self, t0, y0, f0, dense_like, capacity):
        del y0, f0, dense_like
        return (jnp.zeros((capacity,), bool), jnp.zeros((capacity,), t0.dtype))

    def record(self, state, step):
        accepted, proposed = state
        return (
            accepted.at[step.attempt].set(step.accepted),
            proposed.at[step.attempt].set(step.proposed_tnext),
        )

    def pullback(self, state, ct_state, step):
        raise TypeError(
            "step-size decisions are kept for the backward pass, not returned: "
            "there is nothing to pull back through them."
        )
