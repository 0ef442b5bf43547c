"""The checkpoint schedules."""

import math

from ._base import AbstractCheckpointSchedule
from ._binomial import beta
from ._plan import DescentPlan, OnlinePlan, StridePlan


class AllSteps(AbstractCheckpointSchedule):
    """Keep the state before every step; going back, recompute each step's
    internals once (inside its pullback) and nothing else.

    Memory: one stored state (`y`, plus the step number or the controller's few
    scalars; `f(t, y)` is recomputed from them) per step — per step actually
    taken for constant steps known at trace time, else per `max_steps`. The
    fastest exact gradient short of storing every stage (`DirectAdjoint`).

    **Arguments:** none.

    Reference: A. Griewank and A. Walther, *Evaluating Derivatives* (2nd ed.,
    SIAM 2008), Chapter 12 (reversal schedules; this is the one that stores
    every state).
    """

    def plan(self, num_steps, max_steps):
        capacity = max_steps if num_steps is None else min(num_steps, max_steps)
        return StridePlan(outer_slots=max(capacity, 1), inner_slots=0, stride=1)


class EveryKSteps(AbstractCheckpointSchedule):
    """Keep the state before every `k`-th step; going back, re-run one segment of
    `k` steps at a time, storing its states, then reverse it.

    Memory: about `N / k + k` states; every step is re-run once. With
    `InterpolatedAdjoint(checkpoints=EveryKSteps(k))` the same segments are
    replayed to rebuild the forward interpolation, as SUNDIALS CVODES does.

    **Arguments:**

    - `k`: the segment length (≥ 1). `k ≈ sqrt(N)` minimises memory.

    References: A. Griewank and A. Walther, *Evaluating Derivatives* (2nd ed.,
    SIAM 2008), Chapter 12; T. Chen, B. Xu, C. Zhang and C. Guestrin, "Training
    deep nets with sublinear memory cost", arXiv:1604.06174, 2016 (the
    `sqrt(N)` choice).
    """

    k: int

    def __check_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(
                f"EveryKSteps: `k` must be a positive integer, got {self.k!r}."
            )

    def plan(self, num_steps, max_steps):
        capacity = max_steps if num_steps is None else min(num_steps, max_steps)
        return StridePlan(
            outer_slots=max(math.ceil(capacity / self.k), 1),
            inner_slots=self.k - 1,
            stride=self.k,
        )


def default_num_checkpoints(num_steps: int) -> int:
    """The default of `BinomialCheckpoints(None)`: the fewest states `c` with which
    `num_steps` steps are reversed re-running each at most twice, i.e. the least
    `c` with C(c + 2, 2) >= num_steps (about `sqrt(2 N)`; 44 for N = 1000)."""
    c = 2
    while beta(c, 2) < num_steps:
        c += 1
    return c


class BinomialCheckpoints(AbstractCheckpointSchedule):
    """Binomial checkpointing with at most `num_checkpoints` stored states.

    - **Steps known at trace time** (constant steps): Griewank--Walther's revolve.
      The forward pass is revolve's first sweep; the backward pass re-runs the
      fewest steps any schedule with that many states can,
      `r N - C(c + r, r - 1) - (steps of the first sweep)` with `r` the least
      integer with `N <= C(c + r, r)`.
    - **Adaptive steps** (the number of steps is only known at the end): online.
      Half the states keep every `s`-th step, the stride `s` doubling whenever they
      fill (so segments are at most about `4 N / c` steps); the other half reverse
      one segment at a time by revolve. Memory stays at `c` states for any
      number of steps up to `max_steps`; the recomputation is that of revolve on
      each segment, at most a few re-runs per step for the default `c` (see
      `OnlinePlan.num_recomputed_steps`, reported by the benchmarks). Compare
      Stumm and Walther's optimal online checkpointing (SIAM J. Sci. Comput. 32,
      2010), which places checkpoints better at the price of a more complex
      schedule.

    **Arguments:**

    - `num_checkpoints`: the number of stored states, at least 2. `None`: the
      fewest with which every step is re-run at most twice for the known number of
      steps (or `max_steps`): the least `c` with C(c + 2, 2) >= N, about
      `sqrt(2 N)` (see `default_num_checkpoints`).

    References: A. Griewank, Optim. Methods Softw. 1 (1992) 35--54; A. Griewank and
    A. Walther, "Algorithm 799: Revolve", ACM TOMS 26 (2000) 19--45.
    """

    num_checkpoints: int | None = None

    def __check_init__(self):
        c = self.num_checkpoints
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 2):
            raise ValueError(
                "BinomialCheckpoints: `num_checkpoints` must be an integer >= 2 (or "
                f"None for the default), got {c!r}."
            )

    def plan(self, num_steps, max_steps):
        if num_steps is not None:
            num_steps = min(num_steps, max_steps)
            c = self.num_checkpoints or default_num_checkpoints(num_steps)
            c = max(1, min(c, num_steps))
            return DescentPlan(num_steps, c)
        c = self.num_checkpoints or default_num_checkpoints(max_steps)
        outer = max(c // 2, 1)
        return OnlinePlan(outer_slots=outer, inner_slots=c - outer)
