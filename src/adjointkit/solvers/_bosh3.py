"""Bogacki--Shampine 3(2)."""

from typing import ClassVar

from ._runge_kutta import AbstractExplicitRungeKutta
from ._tableau import ButcherTableau


# Bogacki & Shampine, "A 3(2) pair of Runge--Kutta formulas", Appl. Math. Lett. 2
# (1989) 321--325. FSAL; the embedded second-order weights are (7/24, 1/4, 1/3, 1/8).
_bosh3 = ButcherTableau(
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    embedded_order=2,
    # Its continuous extension is the cubic Hermite interpolant through both ends
    # (the paper's free third-order interpolant, using the FSAL stage).
    dense=None,
    dense_order=3,
)


class Bosh3(AbstractExplicitRungeKutta):
    """Bogacki--Shampine's 3(2) method: third order, four stages with FSAL (three
    evaluations per step), embedded second-order estimate, cubic Hermite dense
    output (third order).

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: P. Bogacki and L. F. Shampine, "A 3(2) pair of Runge--Kutta
    formulas", Applied Mathematics Letters 2(4), 1989.
    """

    tableau: ClassVar[ButcherTableau] = _bosh3
