"""Runge--Kutta solvers: explicit ones driven by one engine and a Butcher tableau,
diagonally implicit ones by another and an implicit tableau."""

from ._base import AbstractSolver as AbstractSolver, SolverStep as SolverStep
from ._bosh3 import Bosh3 as Bosh3
from ._classic import (
    RK4 as RK4,
    Euler as Euler,
    Heun as Heun,
    Midpoint as Midpoint,
    Ralston as Ralston,
)
from ._dirk import (
    AbstractImplicitRungeKutta as AbstractImplicitRungeKutta,
    ImplicitTableau as ImplicitTableau,
)
from ._dopri5 import Dopri5 as Dopri5
from ._dopri8 import Dopri8 as Dopri8
from ._kvaerno import (
    ImplicitEuler as ImplicitEuler,
    Kvaerno3 as Kvaerno3,
    Kvaerno5 as Kvaerno5,
)
from ._reversible import (
    AbstractReversibleSolver as AbstractReversibleSolver,
    Reversible as Reversible,
    ReversibleHeun as ReversibleHeun,
)
from ._rosenbrock import (
    AbstractRosenbrock as AbstractRosenbrock,
    Rodas5 as Rodas5,
    RosenbrockTableau as RosenbrockTableau,
)
from ._runge_kutta import AbstractExplicitRungeKutta as AbstractExplicitRungeKutta
from ._tableau import ButcherTableau as ButcherTableau
from ._tsit5 import Tsit5 as Tsit5
