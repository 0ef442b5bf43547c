"""The backward pass of a checkpointed solve: visit every step, last first."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Int, PyTree

from .._tree import tree_where
from ._binomial import beta_table, split, split_jnp


if TYPE_CHECKING:
    from ._plan import AbstractCheckpointPlan, DescentPlan


class _Machine(eqx.Module):
    """The loop carry: a stack of ranges left to reverse, the stored states, and
    the state most recently recomputed."""

    # Ranges on the stack, one row each: first step, number of steps, states they
    # may hold (their start's included), and where their start state is (-1:
    # `current`). One array, so that a push or a pop is one operation.
    stack: Int[Array, "depth 4"]
    top: Int[Array, ""]  # stack size
    segments_left: Int[Array, ""]  # outer segments not yet pushed
    states: PyTree  # one stepper state per slot
    current: PyTree
    current_step: Int[Array, ""]
    recomputed: Int[Array, ""]
    carry: PyTree


def reverse_steps(
    problem,
    stepper,
    plan: "AbstractCheckpointPlan",
    checkpoints,
    num_steps: Int[Array, ""],
    final_state: PyTree,
    leaf: Callable[[PyTree, PyTree, Int[Array, ""]], PyTree],
    carry: PyTree,
) -> tuple[PyTree, Int[Array, ""]]:
    """Call `carry = leaf(carry, state_a, a)` for `a = num_steps - 1, ..., 0`, where
    `state_a` is the stepper state before step `a`, recomputing states from the
    checkpoints (the record of a `CheckpointRecorder`) as the plan allows. Stored
    states are `stepper.checkpoint(state)` and come back through
    `stepper.restore(problem, kept)`.

    The plan decides how (`plan.reverse`): with every state stored (`AllSteps`)
    there is nothing to recompute, and `reverse_all_stored` simply visits the
    steps last first; otherwise ranges of steps are reversed from their stored
    starts by binomial checkpointing, by `run_stack_machine` (or, for a
    `DescentPlan`, from a table computed at trace time by `reverse_static`).

    **Returns:** the final `carry`, and the number of steps re-run (for tests and
    benchmarks).
    """
    return plan.reverse(
        problem, stepper, checkpoints, num_steps, final_state, leaf, carry
    )


def reverse_all_stored(problem, stepper, states, num_steps, leaf, carry):
    """`reverse_steps` when every state is stored, the one before step `a` in slot
    `a`: a plain loop, last step first."""

    def visit(i, carry):
        a = num_steps - 1 - i
        kept = jtu.tree_map(lambda buf: buf[a], states)
        return leaf(carry, stepper.restore(problem, kept), a)

    return lax.fori_loop(0, num_steps, visit, carry), jnp.asarray(0, jnp.int32)


def run_stack_machine(
    problem, stepper, plan, states, num_steps, final_state, leaf, carry, *,
    ranges, positions,
):  # fmt: skip
    """`reverse_steps` by an explicit stack of ranges, in one `lax.while_loop`.

    Each range `(start, length, slots)` is reversed as in binomial checkpointing:
    advance `m = split(length, slots)` steps from its start, store that state (one
    slot per level of the recursion), reverse the `length - m` steps after it with
    one state fewer, then the first `m`. A range no longer than its states
    (`length <= slots`) is not split but reversed whole: one sweep storing each of
    its states, then its steps pulled back last first.

    **Arguments** (beyond `reverse_steps`'s): `ranges`, the rows `(start,
    length, slots, slot)` on the stack at the start (a `DescentPlan`'s, the one
    to reverse next last); `positions`, the record's (see `CheckpointRecorder`),
    or `None` when no state was kept in segments: each segment between kept
    states is pushed, last first, whenever the stack empties.
    """
    depth = plan.root_slots + 2
    betas = beta_table(plan.root_slots)
    stack = jnp.zeros((depth, 4), jnp.int32)
    if ranges:
        stack = stack.at[: len(ranges)].set(jnp.asarray(ranges, jnp.int32))
    if positions is None:
        seg_start = seg_slot = jnp.zeros((1,), jnp.int32)
        num_segments = jnp.asarray(0, jnp.int32)
    else:
        seg_start, seg_slot, num_segments = kept_in_order(positions)
    top = jnp.asarray(len(ranges), jnp.int32)

    machine = _Machine(
        stack=stack,
        top=top,
        segments_left=num_segments,
        states=states,
        current=final_state,
        current_step=jnp.asarray(num_steps, jnp.int32),
        recomputed=jnp.asarray(0, jnp.int32),
        carry=carry,
    )

    def push(m: _Machine, a, n, s, where_slot, when=True):
        i = m.top
        row = jnp.stack([jnp.asarray(v, jnp.int32) for v in (a, n, s, where_slot)])
        return eqx.tree_at(
            lambda x: (x.stack, x.top),
            m,
            (
                m.stack.at[i].set(jnp.where(when, row, m.stack[i])),
                m.top + jnp.where(when, 1, 0),
            ),
        )

    def next_segment(m: _Machine) -> _Machine:
        """When the stack is empty, push the last segment not yet reversed."""
        j = jnp.maximum(m.segments_left - 1, 0)
        end = jnp.where(
            j + 1 < num_segments,
            seg_start[jnp.minimum(j + 1, seg_start.shape[0] - 1)],
            num_steps,
        )
        empty = m.top == 0
        m = push(
            m, seg_start[j], end - seg_start[j], plan.root_slots, seg_slot[j], empty
        )
        return eqx.tree_at(
            lambda x: x.segments_left, m, m.segments_left - jnp.where(empty, 1, 0)
        )

    def body(m: _Machine) -> _Machine:
        m = next_segment(m)
        i = m.top - 1
        a, n, s, where_slot = m.stack[i]
        m = eqx.tree_at(lambda x: x.top, m, i)
        # A range whose every state fits in its slots is reversed in one go: sweep
        # it once storing each state, then pull back its steps last first. A
        # longer one is split: keep the state `step` steps on (if a slot is
        # left), then reverse the steps after it, then the first `step` ones.
        bulk = (n <= s) | (n == 1)
        split = ~bulk
        step = split_jnp(jnp.maximum(n, 2), s, betas)
        store = split & (s >= 2)
        snapshot = jnp.clip(plan.snapshot_slot(s), 0, plan.num_slots - 1)
        carry, states, state = _visit(
            problem, stepper, leaf, m.carry, m.states, m.current,
            use_current=m.current_step == a, slot=jnp.maximum(where_slot, 0), a=a,
            leaves=jnp.where(bulk, n, 0), advance=jnp.where(bulk, n - 1, step),
            store_all=bulk, store=store, snapshot=snapshot,
        )  # fmt: skip
        m = eqx.tree_at(
            lambda x: (x.carry, x.states, x.current, x.current_step, x.recomputed),
            m,
            (
                carry,
                states,
                tree_where(split, state, m.current),
                jnp.where(split, a + step, m.current_step),
                m.recomputed + jnp.where(split, step, n - 1),
            ),
        )
        m = push(m, a, step, s, where_slot, split)
        return push(m, a + step, n - step, s - 1, jnp.where(store, snapshot, -1), split)

    def cond(m: _Machine):
        return (m.top > 0) | (m.segments_left > 0)

    machine = lax.while_loop(cond, body, machine)
    return machine.carry, machine.recomputed


def _visit(problem, stepper, leaf, carry, states, current, *, use_current, slot, a,
           leaves, advance, store_all, store, snapshot):  # fmt: skip
    """One iteration of a reversal, whoever decided it (the stack machine or the
    static table). Start from `current` or from the state stored in `slot` (the
    state before step `a`) and advance `advance` steps. Then either

    - (`store_all`) the states reached are stored in slots `snapshot`,
      `snapshot + 1`, ..., and steps `a + leaves - 1`, ..., `a` are pulled back
      (`leaf`), each from its stored state: a whole range reversed at once; or
    - the last state reached is stored in `snapshot` if `store`, and nothing is
      pulled back (`leaves` is 0): a range split in two.

    Both are loops whose trip counts are values, with no branch on the stored
    states, so that XLA updates them in place.

    **Returns:** `(carry, states, state reached)`."""
    kept = jtu.tree_map(lambda buf: buf[slot], states)
    start = lax.cond(
        use_current, lambda: current, lambda: stepper.restore(problem, kept)
    )
    last_slot = states_count(states) - 1

    def sweep(i, loop_carry):
        state, states = loop_carry
        state = stepper.advance(problem, state)[0]
        target = jnp.clip(jnp.where(store_all, snapshot + i, snapshot), 0, last_slot)
        write = store_all | (store & (i == advance - 1))
        states = jtu.tree_map(
            lambda buf, x: buf.at[target].set(jnp.where(write, x, buf[target])),
            states,
            stepper.checkpoint(state),
        )
        return state, states

    state, states = lax.fori_loop(0, advance, sweep, (start, states))

    def pull_back(j, carry):
        i = leaves - 1 - j
        kept = jtu.tree_map(
            lambda buf: buf[jnp.clip(snapshot + i - 1, 0, last_slot)], states
        )
        before = lax.cond(i == 0, lambda: start, lambda: stepper.restore(problem, kept))
        return leaf(carry, before, a + i)

    carry = lax.fori_loop(0, leaves, pull_back, carry)
    return carry, states, state


def states_count(states) -> int:
    """The number of slots of a stored-states buffer."""
    return jtu.tree_leaves(states)[0].shape[0]


# A static schedule is a table of at most about 2 N rows of 8 integers, embedded
# in the compiled program: beyond this many steps, run the stack machine instead.
_MAX_STATIC_STEPS = 20_000


def _descent_actions(plan: "DescentPlan") -> tuple[np.ndarray, int]:
    """The stack machine of `run_stack_machine`, run at trace time for a
    `DescentPlan` (the number of steps is static, so every decision is): one row per
    iteration, `(a, use_current, slot, leaves, advance, store_all, store,
    snapshot)` as `_visit` takes them, and the number of steps re-run. With
    Python's exact `split` (no repetition cap)."""
    stack = [tuple(entry) for entry in plan.descent_stack]
    current_step = plan.num_steps
    rows, recomputed = [], 0
    while stack:
        a, n, s, where_slot = stack.pop()
        use_current = int(current_step == a)
        slot = max(where_slot, 0)
        snapshot = min(max(plan.snapshot_slot(s), 0), plan.num_slots - 1)
        if n <= s or n == 1:  # the whole range at once
            rows.append((a, use_current, slot, n, n - 1, 1, 0, snapshot))
            recomputed += n - 1
            continue
        m = split(n, s)
        store = s >= 2
        rows.append((a, use_current, slot, 0, m, 0, int(store), snapshot))
        recomputed += m
        current_step = a + m
        stack.append((a, m, s, where_slot))
        stack.append((a + m, n - m, s - 1, snapshot if store else -1))
    return np.asarray(rows, np.int32).reshape(-1, 8), recomputed


def reverse_static(problem, stepper, plan, states, final_state, leaf, carry):
    """`reverse_steps` for a `DescentPlan`: the same visits in the same order,
    read from a table computed at trace time instead of decided by the stack
    machine as it runs, which takes a fraction of the operations per iteration
    (what a small state's backward pass costs)."""
    rows, recomputed = _descent_actions(plan)
    if rows.shape[0] == 0:  # no steps
        return carry, jnp.asarray(0, jnp.int32)
    table = jnp.asarray(rows)

    def visit(i, loop_carry):
        carry, states, current = loop_carry
        a, use_current, slot, leaves, advance, store_all, store, snapshot = table[i]
        carry, states, state = _visit(
            problem, stepper, leaf, carry, states, current,
            use_current=use_current == 1, slot=slot, a=a, leaves=leaves,
            advance=advance, store_all=store_all == 1, store=store == 1,
            snapshot=snapshot,
        )  # fmt: skip
        # A split moves the recomputed position; a whole range leaves it.
        return carry, states, tree_where(store_all == 0, state, current)

    carry, _, _ = lax.fori_loop(0, rows.shape[0], visit, (carry, states, final_state))
    return carry, jnp.asarray(recomputed, jnp.int32)


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
