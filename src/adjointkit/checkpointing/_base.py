"""The checkpointing seam: which step states to keep, and how to recompute the rest."""

import abc

import equinox as eqx

from ._plan import AbstractCheckpointPlan


class AbstractCheckpointSchedule(eqx.Module):
    """Decides which step states a discrete adjoint keeps on the forward pass, and
    how many it may hold while recomputing the others on the backward pass.

    An implementation provides `plan(num_steps, max_steps)`, an
    `AbstractCheckpointPlan` (which owns how states are kept and the steps
    reversed): `num_steps` is the number of steps when known at trace time
    (constant steps), else `None` (the plan must then work online, for any
    number up to `max_steps`). `num_recomputed_steps(num_steps)` reports how
    many steps the backward pass re-runs when the number is known in advance.
    """

    @abc.abstractmethod
    def plan(self, num_steps: int | None, max_steps: int) -> AbstractCheckpointPlan:
        """The plan for a solve of `num_steps` steps (or at most `max_steps`).

        **Arguments:**

        - `num_steps`: the number of steps, when known at trace time; else `None`.
        - `max_steps`: the most steps the solve may take.

        **Returns:** a plan (`adjointkit.checkpointing.StridePlan`, `OnlinePlan`
        or `DescentPlan`, or another `AbstractCheckpointPlan`).
        """

    def num_recomputed_steps(self, num_steps: int) -> int:
        """Steps re-run by the backward pass for `num_steps` steps known in advance
        (beyond the single recomputation inside each step's pullback).

        **Arguments:**

        - `num_steps`: the number of steps of the solve.

        **Returns:** an integer: for `BinomialCheckpoints`, revolve's minimum less
        the steps its first sweep took during the forward pass.
        """
        return self.plan(num_steps, num_steps).num_recomputed_steps(num_steps)
