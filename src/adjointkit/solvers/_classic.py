"""Classical low-order explicit Runge--Kutta methods.

Tableaus from Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations I*
(2nd ed., Springer 1993), Section II.1, and Ralston, "Runge--Kutta methods with
minimum error bounds", Math. Comp. 16 (1962). The embedded estimates of the
second-order methods compare against Euler's method (the first stage alone).
All of them use cubic Hermite interpolation for dense output.
"""

from typing import ClassVar

from ._runge_kutta import AbstractExplicitRungeKutta
from ._tableau import ButcherTableau


_euler = ButcherTableau(a=((),), b=(1.0,), c=(0.0,), order=1)

_heun = ButcherTableau(
    a=((), (1.0,)),
    b=(1 / 2, 1 / 2),
    c=(0.0, 1.0),
    order=2,
    b_error=(1 / 2 - 1, 1 / 2),
    embedded_order=1,
)

_midpoint = ButcherTableau(
    a=((), (1 / 2,)),
    b=(0.0, 1.0),
    c=(0.0, 1 / 2),
    order=2,
    b_error=(-1.0, 1.0),
    embedded_order=1,
)

_ralston = ButcherTableau(
    a=((), (2 / 3,)),
    b=(1 / 4, 3 / 4),
    c=(0.0, 2 / 3),
    order=2,
    b_error=(1 / 4 - 1, 3 / 4),
    embedded_order=1,
)

_rk4 = ButcherTableau(
    a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    order=4,
)


class Euler(AbstractExplicitRungeKutta):
    """Euler's method: first order, one evaluation per step, no error estimate
    (constant step sizes only). Cubic Hermite dense output.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations
    I* (2nd ed., Springer 1993), Section II.1.
    """

    tableau: ClassVar[ButcherTableau] = _euler


class Heun(AbstractExplicitRungeKutta):
    """Heun's method (the explicit trapezoidal rule): second order, two
    evaluations per step, with Euler's method embedded for an error estimate.
    Cubic Hermite dense output.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations
    I* (2nd ed., Springer 1993), Section II.1.
    """

    tableau: ClassVar[ButcherTableau] = _heun


class Midpoint(AbstractExplicitRungeKutta):
    """The explicit midpoint method: second order, two evaluations per step, with
    Euler's method embedded for an error estimate. Cubic Hermite dense output.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: Hairer, Nørsett & Wanner, *Solving Ordinary Differential Equations
    I* (2nd ed., Springer 1993), Section II.1.
    """

    tableau: ClassVar[ButcherTableau] = _midpoint


class Ralston(AbstractExplicitRungeKutta):
    """Ralston's second-order method (the two-stage method with the smallest
    error bound), two evaluations per step, with Euler's method embedded for an
    error estimate. Cubic Hermite dense output.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: A. Ralston, "Runge--Kutta methods with minimum error bounds", Math.
    Comp. 16, 1962.
    """

    tableau: ClassVar[ButcherTableau] = _ralston


class RK4(AbstractExplicitRungeKutta):
    """The classical fourth-order Runge--Kutta method: four evaluations per step,
    no error estimate (constant step sizes only). Cubic Hermite dense output.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    References: W. Kutta, "Beitrag zur näherungsweisen Integration totaler
    Differentialgleichungen", Z. Math. Phys. 46, 1901; Hairer, Nørsett & Wanner,
    *Solving Ordinary Differential Equations I* (2nd ed., Springer 1993), Section
    II.1.
    """

    tableau: ClassVar[ButcherTableau] = _rk4
