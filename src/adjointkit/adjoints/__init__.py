"""Adjoints: how the pullback of a solve is obtained."""

from ._base import AbstractAdjoint as AbstractAdjoint
from ._checkpointed import CheckpointedAdjoint as CheckpointedAdjoint
from ._direct import DirectAdjoint as DirectAdjoint
