"""Interpolations: what to keep per step, and how to evaluate y(t) from it."""

from ._base import AbstractInterpolation as AbstractInterpolation
from ._dense import DenseInterpolation as DenseInterpolation
from ._hermite import HermiteInterpolation as HermiteInterpolation
from ._linear import LinearInterpolation as LinearInterpolation
from ._trajectory import Trajectory as Trajectory
