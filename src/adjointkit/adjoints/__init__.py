"""Adjoints: how the pullback of a solve is obtained."""

from ._backsolve import BacksolveAdjoint as BacksolveAdjoint
from ._base import AbstractAdjoint as AbstractAdjoint
from ._checkpointed import CheckpointedAdjoint as CheckpointedAdjoint
from ._continuous import collect_backward_stats as collect_backward_stats
from ._direct import DirectAdjoint as DirectAdjoint
from ._interpolated import InterpolatedAdjoint as InterpolatedAdjoint
from ._quadrature import QuadratureAdjoint as QuadratureAdjoint
from ._reversible import ReversibleAdjoint as ReversibleAdjoint
