"""What a checkpoint schedule decides for one solve: a static plan, which owns how
its states are kept on the forward pass and how the steps are reversed."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int, PyTree

from . import _reverse
from ._binomial import min_forward_steps, split


class AbstractCheckpointPlan(eqx.Module):
    """Where a discrete adjoint keeps states on the forward pass, and how it
    reverses the steps with the slots it has.

    `num_slots` states are stored in all (one `CheckpointRecorder` row each).
    The reversal is binomial checkpointing (`_binomial.split`) of ranges of steps
    from a stored start, each with `root_slots` states (its start's included);
    the recursion stores the state it advances to in `snapshot_slot(s)`, from
    `first_inner_slot` on. A plan provides:

    - `keep(positions, stride, a)`: on the forward pass, whether and where step
      `a`'s state is kept (`CheckpointRecorder.record`);
    - `reverse(...)`: the backward pass (`reverse_steps`);
    - `num_recomputed_steps(num_steps)`: the steps that backward pass re-runs;
    - `initial_stride`: the stride a record starts with (only the online plan
      changes it).
    """

    @property
    @abc.abstractmethod
    def num_slots(self) -> int:
        """States stored in all."""

    @property
    @abc.abstractmethod
    def root_slots(self) -> int:
        """States available to reverse one range, its stored start included."""

    @property
    @abc.abstractmethod
    def first_inner_slot(self) -> int:
        """The first slot the reversal's recursion stores states in."""

    @property
    @abc.abstractmethod
    def initial_stride(self) -> int:
        """The stride a `CheckpointRecorder` record starts with."""

    @abc.abstractmethod
    def keep(
        self, positions: Int[Array, " slots"], stride: Int[Array, ""], a
    ) -> tuple[Int[Array, ""], Bool[Array, ""], Int[Array, " slots"], Int[Array, ""]]:
        """Whether and where the forward pass keeps the state before step `a`.

        **Arguments:** the record's `positions` (the step each slot holds, -1:
        free) and `stride`, and the attempt number `a`.

        **Returns:** `(slot, write, positions, stride)`: the slot to write (clipped
        to the buffer by the caller), whether to write it, and the record's
        `positions` and `stride` before the write (the online plan frees slots
        and doubles its stride here).
        """

    @abc.abstractmethod
    def reverse(
        self,
        problem,
        stepper,
        checkpoints,
        num_steps: Int[Array, ""],
        final_state: PyTree,
        leaf: Callable[[PyTree, PyTree, Int[Array, ""]], PyTree],
        carry: PyTree,
    ) -> tuple[PyTree, Int[Array, ""]]:
        """The backward pass: `carry = leaf(carry, state_a, a)` for every step,
        last first (see `reverse_steps`).

        **Returns:** the final `carry` and the number of steps re-run."""

    @abc.abstractmethod
    def num_recomputed_steps(self, num_steps: int) -> int:
        """Steps the backward pass re-runs for a solve of `num_steps` steps
        (beyond the one recomputation of each step that its pullback needs)."""

    def snapshot_slot(self, slots_left: int) -> int:
        """Where the inner reversal stores the state it advances to, when reversing
        a range with `slots_left` states: one slot per level of the recursion."""
        return self.first_inner_slot + self.root_slots - slots_left


class AbstractSegmentedPlan(AbstractCheckpointPlan):
    """A plan that keeps some states in `outer_slots` slots during the forward
    pass, and reverses the steps between two kept states (*segments*) last
    segment first, each from its stored start with `inner_slots` more states.

    A subclass says which states it keeps (`keep`, mirrored in Python by
    `segment_starts` for the cost model), how it reverses (usually
    `reverse_segments`), and the longest segment a solve of at most `max_steps`
    steps can leave (`segment_capacity`, the size of the buffer in which the
    interpolating adjoints rebuild one segment).
    """

    outer_slots: eqx.AbstractVar[int]
    inner_slots: eqx.AbstractVar[int]

    @property
    def num_slots(self) -> int:
        return self.outer_slots + self.inner_slots

    @property
    def root_slots(self) -> int:
        return 1 + self.inner_slots

    @property
    def first_inner_slot(self) -> int:
        return self.outer_slots

    @abc.abstractmethod
    def segment_starts(self, num_steps: int) -> list[int]:
        """The steps whose states are kept after `num_steps` steps (Python)."""

    @abc.abstractmethod
    def segment_capacity(self, max_steps: int) -> int:
        """The longest segment (gap between kept states, or from the last one to
        the end) of any solve of at most `max_steps` steps."""

    def segment_lengths(self, num_steps: int) -> list[int]:
        """Lengths of the segments between kept states after `num_steps` steps."""
        starts = self.segment_starts(num_steps)
        ends = starts[1:] + [num_steps]
        return [b - a for a, b in zip(starts, ends, strict=True)]

    def num_recomputed_steps(self, num_steps: int) -> int:
        if num_steps <= 0:
            return 0
        return sum(
            min_forward_steps(length, self.root_slots)
            for length in self.segment_lengths(num_steps)
        )

    def reverse_segments(
        self, problem, stepper, checkpoints, num_steps, final_state, leaf, carry
    ):
        """Reverse the segments last first, each by the stack machine of
        `_reverse.run_stack_machine` from its kept start."""
        states, positions, _ = checkpoints
        return _reverse.run_stack_machine(
            problem, stepper, self, states, num_steps, final_state, leaf, carry,
            ranges=(), positions=positions,
        )  # fmt: skip


class StridePlan(AbstractSegmentedPlan):
    """Keep the state before every `stride`-th step, in `outer_slots` slots;
    reverse each segment with `inner_slots` more states (`AllSteps` is
    `stride=1`, `inner_slots=0`; `EveryKSteps(k)` is `stride=k`,
    `inner_slots=k-1`, which stores a whole segment while reversing it)."""

    outer_slots: int
    inner_slots: int
    stride: int

    @property
    def initial_stride(self) -> int:
        return self.stride

    def keep(self, positions, stride, a):
        slot = a // self.stride
        write = (a % self.stride == 0) & (slot < self.outer_slots)
        return slot, write, positions, stride

    def segment_starts(self, num_steps: int) -> list[int]:
        return list(range(0, num_steps, self.stride))

    def segment_capacity(self, max_steps: int) -> int:
        del max_steps
        return self.stride

    def reverse(
        self, problem, stepper, checkpoints, num_steps, final_state, leaf, carry
    ):
        if self.stride == 1:
            # Every state is stored (AllSteps): nothing to recompute and no stack
            # to keep, so a plain loop, last step first. The stack machine would
            # reverse it in the same order with several times the operations per
            # step, which is all the time a tiny state takes.
            states, _, _ = checkpoints
            return _reverse.reverse_all_stored(
                problem, stepper, states, num_steps, leaf, carry
            )
        return self.reverse_segments(
            problem, stepper, checkpoints, num_steps, final_state, leaf, carry
        )


class OnlinePlan(AbstractSegmentedPlan):
    """For a number of steps unknown until the solve ends: keep every `stride`-th
    state in `outer_slots` slots, doubling the stride (and freeing every other
    slot) whenever they are full; each segment is then at most about
    `2 N / outer_slots` steps long. Reverse each with `inner_slots` more
    states."""

    outer_slots: int
    inner_slots: int

    @property
    def initial_stride(self) -> int:
        return 1

    def keep(self, positions, stride, a):
        # Only the outer slots hold kept states; the others are the backward
        # pass's scratch.
        outer = positions[: self.outer_slots]
        full = jnp.all(outer >= 0)
        thin = (a % stride == 0) & full
        stride = jnp.where(thin, 2 * stride, stride)
        outer = jnp.where(thin & (outer % stride != 0), -1, outer)
        positions = positions.at[: self.outer_slots].set(outer)
        free = outer < 0
        slot = jnp.argmax(free).astype(jnp.int32)
        write = (a % stride == 0) & jnp.any(free)
        return slot, write, positions, stride

    def segment_starts(self, num_steps: int) -> list[int]:
        return online_positions(num_steps, self.outer_slots)

    def segment_capacity(self, max_steps: int) -> int:
        # The stride `s` doubles only once `outer_slots` states `s` apart are
        # kept, so after at most `max_steps` steps it is at most the least power
        # of two with `outer_slots * s >= max_steps`.
        stride = 1
        while self.outer_slots * stride < max_steps:
            stride *= 2
        return stride

    def reverse(
        self, problem, stepper, checkpoints, num_steps, final_state, leaf, carry
    ):
        return self.reverse_segments(
            problem, stepper, checkpoints, num_steps, final_state, leaf, carry
        )


class DescentPlan(AbstractCheckpointPlan):
    """The number of steps `num_steps` is known at trace time, so the forward pass
    is revolve's first sweep with `slots` states: it keeps the states at
    `descent_positions` (in slots 0, 1, ...), and the backward pass continues
    revolve from the ranges left on its stack, `descent_stack`.

    **Arguments:** `num_steps` (the steps of the solve) and `slots` (states).
    """

    num_steps: int
    slots: int
    descent_positions: tuple[int, ...]
    descent_stack: tuple[tuple[int, int, int, int], ...]

    def __init__(self, num_steps: int, slots: int):
        self.num_steps = num_steps
        self.slots = slots
        self.descent_positions, self.descent_stack = descent(num_steps, slots)

    @property
    def num_slots(self) -> int:
        return self.slots

    @property
    def root_slots(self) -> int:
        return self.slots

    @property
    def first_inner_slot(self) -> int:
        return 1

    @property
    def initial_stride(self) -> int:
        return 1

    def keep(self, positions, stride, a):
        kept = np.asarray(self.descent_positions, np.int32)
        slot = jnp.searchsorted(jnp.asarray(kept), a).astype(jnp.int32)
        slot = jnp.minimum(slot, len(kept) - 1)
        write = jnp.asarray(kept)[slot] == a
        return slot, write, positions, stride

    def num_recomputed_steps(self, num_steps: int) -> int:
        if num_steps <= 0:
            return 0
        if num_steps != self.num_steps:
            raise ValueError("a descent plan is made for one number of steps.")
        advanced = self.descent_positions[-1]
        return min_forward_steps(num_steps, self.root_slots) - advanced

    def reverse(
        self, problem, stepper, checkpoints, num_steps, final_state, leaf, carry
    ):
        states, _, _ = checkpoints
        if self.num_steps <= _reverse._MAX_STATIC_STEPS:
            return _reverse.reverse_static(
                problem, stepper, self, states, final_state, leaf, carry
            )
        # The forward pass was revolve's first sweep: continue from its stack.
        return _reverse.run_stack_machine(
            problem, stepper, self, states, num_steps, final_state, leaf, carry,
            ranges=self.descent_stack, positions=None,
        )  # fmt: skip


def online_positions(num_steps: int, slots: int) -> list[int]:
    """The steps whose states the online plan keeps after `num_steps` steps: a
    Python mirror of `OnlinePlan.keep`, for the cost model."""
    stride = 1
    kept: list[int] = []
    for a in range(num_steps):
        if a % stride:
            continue
        if len(kept) == slots:
            stride *= 2
            kept = [p for p in kept if p % stride == 0]
            if a % stride:
                continue
        kept.append(a)
    return kept


def descent(num_steps: int, slots: int):
    """Revolve's first sweep over `num_steps` steps with `slots` states.

    Returns `(positions, stack)`: the steps whose states the sweep stores (in slots
    0, 1, ...), and the ranges `(start, length, slots, slot)` left to reverse,
    last-to-reverse first, the one to reverse next on top.
    """
    positions = [0]
    stack = []
    if num_steps == 0:
        return tuple(positions), ()
    start, length, s, slot = 0, num_steps, slots, 0
    while length >= 2 and s >= 2:
        m = split(length, s)
        stack.append((start, m, s, slot))
        slot = 1 + slots - s
        start, length, s = start + m, length - m, s - 1
        positions.append(start)
    stack.append((start, length, s, slot))
    return tuple(positions), tuple(stack)
