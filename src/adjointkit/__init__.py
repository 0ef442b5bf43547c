"""adjointkit: differentiate through ODE solves in JAX with pluggable adjoints."""

from ._adjoint_state import AdjointState as AdjointState
from ._progress import (
    AbstractProgressMeter as AbstractProgressMeter,
    RichProgressMeter as RichProgressMeter,
    TextProgressMeter as TextProgressMeter,
)
from ._saveat import SaveAt as SaveAt
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solve import solve as solve
from ._version import __version__ as __version__
from .adjoints import (
    AbstractAdjoint as AbstractAdjoint,
    BacksolveAdjoint as BacksolveAdjoint,
    CheckpointedAdjoint as CheckpointedAdjoint,
    DirectAdjoint as DirectAdjoint,
    InterpolatedAdjoint as InterpolatedAdjoint,
    QuadratureAdjoint as QuadratureAdjoint,
    ReversibleAdjoint as ReversibleAdjoint,
    collect_backward_stats as collect_backward_stats,
)
from .checkpointing import (
    AbstractCheckpointSchedule as AbstractCheckpointSchedule,
    AllSteps as AllSteps,
    BinomialCheckpoints as BinomialCheckpoints,
    EveryKSteps as EveryKSteps,
)
from .controllers import (
    AbstractController as AbstractController,
    ConstantStepSize as ConstantStepSize,
    PIDController as PIDController,
    adjoint_seminorm as adjoint_seminorm,
    rms_norm as rms_norm,
)
from .interpolation import (
    AbstractInterpolation as AbstractInterpolation,
    DenseInterpolation as DenseInterpolation,
    HermiteInterpolation as HermiteInterpolation,
    LinearInterpolation as LinearInterpolation,
)
from .solvers import (
    RK4 as RK4,
    AbstractSolver as AbstractSolver,
    Bosh3 as Bosh3,
    Dopri5 as Dopri5,
    Dopri8 as Dopri8,
    Euler as Euler,
    Heun as Heun,
    ImplicitEuler as ImplicitEuler,
    Kvaerno3 as Kvaerno3,
    Kvaerno5 as Kvaerno5,
    Midpoint as Midpoint,
    Ralston as Ralston,
    Reversible as Reversible,
    ReversibleHeun as ReversibleHeun,
    Rodas5 as Rodas5,
    Tsit5 as Tsit5,
)
