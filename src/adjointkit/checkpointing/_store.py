"""Keeping stepper states on the forward pass, as a plan says."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu

from .._recording import AbstractRecorder
from ._plan import AbstractCheckpointPlan


class CheckpointRecorder(AbstractRecorder):
    """Stores `stepper.checkpoint(state)` for the steps a plan keeps
    (`AbstractCheckpointPlan.keep` says whether and where).

    The record is `(states, positions, stride)`: `states` has one row per slot,
    `positions[slot]` is the step whose state the slot holds (-1: free), and
    `stride` is the plan's current stride (only `OnlinePlan` changes it). Writes
    go to one slot per step (a select of one state), so the cost per step does
    not grow with the slots.

    `kept_like` is the structure of what a checkpoint keeps (not known from the
    recorder's `init` arguments).
    """

    plan: AbstractCheckpointPlan
    stepper: eqx.Module
    kept_like: object

    def init(self, t0, y0, f0, dense_like, capacity):
        del t0, y0, f0, dense_like, capacity
        n = self.plan.num_slots
        states = jtu.tree_map(
            lambda x: jnp.zeros((n, *x.shape), x.dtype), self.kept_like
        )
        positions = jnp.full((n,), -1, jnp.int32)
        return states, positions, jnp.asarray(self.plan.initial_stride, jnp.int32)

    def record(self, state, step):
        states, positions, stride = state
        a = step.attempt
        plan = self.plan
        slot, write, positions, stride = plan.keep(positions, stride, a)
        slot = jnp.clip(slot, 0, plan.num_slots - 1)
        states = jtu.tree_map(
            lambda buf, x: buf.at[slot].set(jnp.where(write, x, buf[slot])),
            states,
            self.stepper.checkpoint(step.state),
        )
        positions = positions.at[slot].set(jnp.where(write, a, positions[slot]))
        return states, positions, stride

    def pullback(self, state, ct_state, step):
        raise TypeError(
            "checkpoints are kept for the backward pass, not returned: there is "
            "nothing to pull back through them."
        )
