"""The checkpointing seam: which step states to keep, and how to recompute the rest."""

import abc

import equinox as eqx


class AbstractCheckpointSchedule(eqx.Module):
    """Decides which loop states a discrete adjoint keeps on the forward pass, and
    in what order the others are recomputed on the backward pass.

    An implementation provides `num_recomputed_steps(num_steps) -> int`: how many
    steps the backward pass re-runs for a solve of `num_steps` steps (used by the
    benchmarks, and tested against the theory of each schedule). The schedules
    themselves, and `CheckpointedAdjoint` that drives them, come with the
    checkpointed adjoint.
    """

    @abc.abstractmethod
    def num_recomputed_steps(self, num_steps: int) -> int:
        """Steps re-run on the backward pass for a solve of `num_steps` steps."""
