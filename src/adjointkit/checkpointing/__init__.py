"""Checkpoint schedules: which step states to keep, and how to recompute the rest."""

from ._base import AbstractCheckpointSchedule as AbstractCheckpointSchedule
