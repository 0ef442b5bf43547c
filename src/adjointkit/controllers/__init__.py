"""Step-size controllers: constant steps, or PID control of the error estimate."""

from ._base import AbstractController as AbstractController
from ._constant import ConstantStepSize as ConstantStepSize
from ._initial_step import initial_step_size as initial_step_size
from ._norms import adjoint_seminorm as adjoint_seminorm, rms_norm as rms_norm
from ._pid import PIDController as PIDController
