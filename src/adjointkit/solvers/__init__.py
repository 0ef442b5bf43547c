"""Explicit Runge--Kutta solvers, all driven by one engine and a Butcher tableau."""

from ._base import AbstractSolver as AbstractSolver
from ._bosh3 import Bosh3 as Bosh3
from ._classic import (
    RK4 as RK4,
    Euler as Euler,
    Heun as Heun,
    Midpoint as Midpoint,
    Ralston as Ralston,
)
from ._dopri5 import Dopri5 as Dopri5
from ._dopri8 import Dopri8 as Dopri8
from ._runge_kutta import AbstractExplicitRungeKutta as AbstractExplicitRungeKutta
from ._tableau import ButcherTableau as ButcherTableau
from ._tsit5 import Tsit5 as Tsit5
