"""Dormand--Prince 5(4)."""

from typing import ClassVar

import numpy as np

from ._runge_kutta import AbstractExplicitRungeKutta
from ._tableau import ButcherTableau


# J. R. Dormand and P. J. Prince, "A family of embedded Runge--Kutta formulae",
# J. Comput. Appl. Math. 6 (1980) 19--26, method RK5(4)7M (also Hairer, Nørsett &
# Wanner I, Table II.5.2).
_b = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_b_embedded = (
    5179 / 57600,
    0.0,
    7571 / 16695,
    393 / 640,
    -92097 / 339200,
    187 / 2100,
    1 / 40,
)

# L. F. Shampine, "Some practical Runge--Kutta formulas", Math. Comp. 46 (1986)
# 135--150: the solution at the middle of the step, y(t0 + h/2) = y0 + h Σ m_i k_i.
_midpoint_weights = (
    np.array(
        [
            6025192743 / 30085553152,
            0.0,
            51252292925 / 65400821598,
            -2691868925 / 45128329728,
            187940372067 / 1594534317056,
            -1776094331 / 19743644256,
            11237099 / 235043384,
        ]
    )
    / 2
)


def _quartic_through_ends_and_midpoint() -> np.ndarray:
    """The continuous extension is the quartic in θ matching y0, f0, y1, f1 and the
    midpoint value. Written per stage, p_i(θ) = Σ_j P[i, j] θ^(j+1) solves
    p_i(1) = b_i, p_i'(0) = [i = 0], p_i'(1) = [i = 6], p_i(1/2) = m_i."""
    conditions = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],  # value at θ = 1
            [1.0, 0.0, 0.0, 0.0],  # derivative at θ = 0
            [1.0, 2.0, 3.0, 4.0],  # derivative at θ = 1
            [1 / 2, 1 / 4, 1 / 8, 1 / 16],  # value at θ = 1/2
        ]
    )
    rhs = np.stack(
        [np.array(_b), np.eye(7)[0], np.eye(7)[6], _midpoint_weights], axis=0
    )
    return np.linalg.solve(conditions, rhs).T


_dopri5 = ButcherTableau(
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _b[:-1],
    ),
    b=_b,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    b_error=tuple(x - y for x, y in zip(_b, _b_embedded, strict=True)),
    embedded_order=4,
    dense=_quartic_through_ends_and_midpoint(),
    dense_order=4,
)


class Dopri5(AbstractExplicitRungeKutta):
    """Dormand--Prince's 5(4) method: fifth order, seven stages with FSAL (six
    evaluations per step), embedded fourth-order estimate, and Shampine's
    fourth-order continuous extension.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    References: J. R. Dormand and P. J. Prince, "A family of embedded Runge--Kutta
    formulae", J. Comput. Appl. Math. 6, 1980; L. F. Shampine, "Some practical
    Runge--Kutta formulas", Math. Comp. 46, 1986.
    """

    tableau: ClassVar[ButcherTableau] = _dopri5
