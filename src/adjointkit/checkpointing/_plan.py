"""What a checkpoint schedule decides for one solve: a static plan."""

import dataclasses

from ._binomial import min_forward_steps, split


@dataclasses.dataclass(frozen=True)
class CheckpointPlan:
    """Where a discrete adjoint keeps states on the forward pass, and how many
    slots it may use to recompute the rest on the way back.

    The backward pass reverses the steps between kept states (*segments*) last
    segment first, each by binomial checkpointing (`_binomial.split`) from its
    stored start, with `inner_slots` more states. Kinds:

    - `"stride"`: keep the state before every `stride`-th step (`AllSteps` is
      `stride=1`, `inner_slots=0`; `EveryKSteps(k)` is `stride=k`,
      `inner_slots=k-1`, which stores a whole segment while reversing it).
    - `"descent"`: the number of steps `num_steps` is known at trace time, so the
      forward pass is revolve's first sweep: it keeps the states at
      `descent_positions` and the backward pass continues revolve from there.
    - `"online"`: the number of steps is unknown until the solve ends. Keep every
      `stride`-th state in `outer_slots` slots, doubling the stride (and freeing
      every other slot) whenever they are full; each segment is then at most
      about `2 N / outer_slots` steps long.

    `num_slots` states are stored in all: slots `[0, outer_slots)` hold the kept
    states (for `"descent"`: the states at `descent_positions`), and the inner
    reversal uses `[first_inner_slot, num_slots)`.
    """

    kind: str
    outer_slots: int
    inner_slots: int
    stride: int = 1
    num_steps: int | None = None
    descent_positions: tuple[int, ...] = ()
    descent_stack: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def root_slots(self) -> int:
        """States available to reverse one segment, its stored start included."""
        if self.kind == "descent":
            return self.outer_slots
        return 1 + self.inner_slots

    @property
    def first_inner_slot(self) -> int:
        return 1 if self.kind == "descent" else self.outer_slots

    @property
    def num_slots(self) -> int:
        if self.kind == "descent":
            return self.outer_slots
        return self.outer_slots + self.inner_slots

    def snapshot_slot(self, slots_left: int) -> int:
        """Where the inner reversal stores the state it advances to, when reversing
        a range with `slots_left` states: one slot per level of the recursion."""
        return self.first_inner_slot + self.root_slots - slots_left

    def num_recomputed_steps(self, num_steps: int) -> int:
        """Steps the backward pass re-runs for a solve of `num_steps` steps
        (beyond the one recomputation of each step that its pullback needs)."""
        if num_steps <= 0:
            return 0
        if self.kind == "descent":
            if num_steps != self.num_steps:
                raise ValueError("a descent plan is made for one number of steps.")
            advanced = self.descent_positions[-1]
            return min_forward_steps(num_steps, self.root_slots) - advanced
        return sum(
            min_forward_steps(length, self.root_slots)
            for length in self.segment_lengths(num_steps)
        )

    def segment_lengths(self, num_steps: int) -> list[int]:
        """Lengths of the segments between kept states after `num_steps` steps."""
        if self.kind == "stride":
            starts = list(range(0, num_steps, self.stride))
        elif self.kind == "online":
            starts = online_positions(num_steps, self.outer_slots)
        else:
            raise ValueError("a descent plan has no segments.")
        ends = starts[1:] + [num_steps]
        return [b - a for a, b in zip(starts, ends, strict=True)]


def online_positions(num_steps: int, slots: int) -> list[int]:
    """The steps whose states the online plan keeps after `num_steps` steps: a
    Python mirror of `CheckpointRecorder`'s thinning, for the cost model."""
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
