"""Keeping stepper states on the forward pass, as a plan says."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._recording import AbstractRecorder
from ._plan import CheckpointPlan


class CheckpointRecorder(AbstractRecorder):
    """Stores `stepper.checkpoint(state)` for the steps a `CheckpointPlan` keeps.

    The record is `(states, positions, stride)`: `states` has one row per slot,
    `positions[slot]` is the step whose state the slot holds (-1: free), and
    `stride` is the online plan's current stride. Writes go to one slot per step
    (a select of one state), so the cost per step does not grow with the slots.

    `kept_like` is the structure of what a checkpoint keeps (not known from the
    recorder's `init` arguments).
    """

    plan: CheckpointPlan
    stepper: eqx.Module
    kept_like: object

    def init(self, t0, y0, f0, dense_like, capacity):
        del t0, y0, f0, dense_like, capacity
        n = self.plan.num_slots
        states = jtu.tree_map(
            lambda x: jnp.zeros((n, *x.shape), x.dtype), self.kept_like
        )
        positions = jnp.full((n,), -1, jnp.int32)
        return states, positions, jnp.asarray(self.plan.stride, jnp.int32)

    def record(self, state, step):
        states, positions, stride = state
        a = step.attempt
        plan = self.plan
        if plan.kind == "stride":
            slot = a // plan.stride
            write = (a % plan.stride == 0) & (slot < plan.outer_slots)
        elif plan.kind == "descent":
            kept = np.asarray(plan.descent_positions, np.int32)
            slot = jnp.searchsorted(jnp.asarray(kept), a).astype(jnp.int32)
            slot = jnp.minimum(slot, len(kept) - 1)
            write = jnp.asarray(kept)[slot] == a
        else:  # online: keep every `stride`-th state; when full, double the stride
            # Only the outer slots hold kept states; the others are the backward
            # pass's scratch.
            outer = positions[: plan.outer_slots]
            full = jnp.all(outer >= 0)
            thin = (a % stride == 0) & full
            stride = jnp.where(thin, 2 * stride, stride)
            outer = jnp.where(thin & (outer % stride != 0), -1, outer)
            positions = positions.at[: plan.outer_slots].set(outer)
            free = outer < 0
            slot = jnp.argmax(free).astype(jnp.int32)
            write = (a % stride == 0) & jnp.any(free)
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


def kept_in_order(positions):
    """The kept states of a `CheckpointRecorder` record in step order: `(starts,
    slots, count)`, where `starts[i]` is the step of the i-th kept state (the
    int32 maximum past `count`, so that `starts` stays sorted) and `slots[i]` the
    slot holding it."""
    big = jnp.iinfo(jnp.int32).max
    keyed = jnp.where(positions >= 0, positions, big)
    slots = jnp.argsort(keyed).astype(jnp.int32)
    count = jnp.sum(positions >= 0).astype(jnp.int32)
    return keyed[slots], slots, count
