"""The per-step hook of the integration loop: what a solve keeps as it goes.

The loop calls `record(state, step)` on every recorder after every attempted step.
Adjoints differ in what they keep (nothing, saved values, checkpoints,
interpolation data); they say so by choosing recorders, never by changing the
loop.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PyTree, Real

from .interpolation import AbstractInterpolation, Trajectory


class StepRecord(eqx.Module):
    """What the loop reports about one attempted step.

    `index` is the number of steps accepted before this one, so an accepted step
    is step number `index` (0-based). Data recorded at `index` for a rejected step
    is overwritten by the next attempt, which has the same index: recorders may
    write unconditionally.
    """

    index: Int[Array, ""]
    t0: Real[Array, ""]
    t1: Real[Array, ""]
    y0: PyTree
    y1: PyTree
    f0: PyTree
    f1: PyTree
    dense_info: PyTree
    accepted: Bool[Array, ""]


class AbstractRecorder(eqx.Module):
    """Keeps something from every step of a solve.

    An implementation provides `init(t0, y0, f0, dense_like, capacity) -> state`
    (`dense_like`: the structure of the solver's `dense_info`; `capacity`: the most
    steps the solve can take) and `record(state, step: StepRecord) -> state`.
    """

    @abc.abstractmethod
    def init(
        self, t0, y0: PyTree, f0: PyTree, dense_like: PyTree, capacity: int
    ) -> PyTree:
        """The empty record."""

    @abc.abstractmethod
    def record(self, state: PyTree, step: StepRecord) -> PyTree:
        """The record after one more attempted step."""


def _set(buffer, index, value):
    return jtu.tree_map(lambda b, v: b.at[index].set(v.astype(b.dtype)), buffer, value)


def _empty(like: PyTree, n: int, fill=0.0):
    return jtu.tree_map(lambda x: jnp.full((n, *x.shape), fill, x.dtype), like)


class StepsRecorder(AbstractRecorder):
    """The time and state at the end of every accepted step (`SaveAt(steps=True)`)."""

    def init(self, t0, y0, f0, dense_like, capacity):
        del f0, dense_like
        return (jnp.full((capacity,), jnp.inf, t0.dtype), _empty(y0, capacity, jnp.inf))

    def record(self, state, step):
        ts, ys = state
        return (_set(ts, step.index, step.t1), _set(ys, step.index, step.y1))


class TrajectoryRecorder(AbstractRecorder):
    """Interpolation data for every accepted step (`interpolation.Trajectory`)."""

    interpolation: AbstractInterpolation
    solver: eqx.Module

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
        i = step.index
        return Trajectory(
            times=state.times.at[i + 1].set(step.t1),
            points=_set(state.points, i + 1, point),
            steps=_set(state.steps, i, self.interpolation.step_data(step.dense_info)),
            count=state.count + step.accepted.astype(jnp.int32),
            interpolation=state.interpolation,
            solver=state.solver,
        )
