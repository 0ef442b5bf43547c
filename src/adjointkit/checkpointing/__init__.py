"""Checkpoint schedules: which step states to keep, and how to recompute the rest."""

from ._base import AbstractCheckpointSchedule as AbstractCheckpointSchedule
from ._binomial import min_forward_steps as min_forward_steps
from ._plan import (
    AbstractCheckpointPlan as AbstractCheckpointPlan,
    AbstractSegmentedPlan as AbstractSegmentedPlan,
    DescentPlan as DescentPlan,
    OnlinePlan as OnlinePlan,
    StridePlan as StridePlan,
)
from ._schedules import (
    AllSteps as AllSteps,
    BinomialCheckpoints as BinomialCheckpoints,
    EveryKSteps as EveryKSteps,
    default_num_checkpoints as default_num_checkpoints,
)
