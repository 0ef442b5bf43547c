"""Tsitouras 5(4)."""

from typing import ClassVar

import numpy as np

from ._runge_kutta import AbstractExplicitRungeKutta
from ._tableau import ButcherTableau, polynomial_in_theta


# Ch. Tsitouras, "Runge--Kutta pairs of order 5(4) satisfying only the first column
# simplifying assumption", Computers & Mathematics with Applications 62(2), 2011,
# 770--775: Table 1 (the tableau, rounded to double precision) and the continuous
# extension b_i(θ) of Section 3, written there in factored form.
_b = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
_b_embedded = (
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.7077123499835256,
    1.866628418170587,
    1 / 66,
)
_dense = np.array(
    [
        polynomial_in_theta(
            [0, -1.0530884977290216],
            [-1.3299890189751412, 1],
            [0.7139816917074209, -1.4364028541716351, 1],
        ),
        polynomial_in_theta(
            [0, 0, 0.1017], [1.2949852507374631, -2.1966568338249754, 1]
        ),
        polynomial_in_theta(
            [0, 0, 2.490627285651252793], [1.57803468208092486, -2.38535645472061657, 1]
        ),
        polynomial_in_theta(
            [0, 0, -16.54810288924490272],
            [-1.21712927295533244, 1],
            [-0.61620406037800089, 1],
        ),
        polynomial_in_theta(
            [0, 0, 47.37952196281928122],
            [-1.203071208372362603, 1],
            [-0.658047292653547382, 1],
        ),
        polynomial_in_theta(
            [0, 0, -34.87065786149660974], [-1.2, 1], [-0.666666666666666667, 1]
        ),
        polynomial_in_theta([0, 0, 2.5], [-1, 1], [-0.6, 1]),
    ]
)
_tsit5 = ButcherTableau(
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (
            5.325864828439257,
            -11.748883564062828,
            7.4955393428898365,
            -0.09249506636175525,
        ),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        _b[:-1],
    ),
    b=_b,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    order=5,
    b_error=tuple(x - y for x, y in zip(_b, _b_embedded, strict=True)),
    embedded_order=4,
    dense=_dense,
    dense_order=4,
)


class Tsit5(AbstractExplicitRungeKutta):
    """Tsitouras' 5(4) method: fifth order, seven stages with FSAL (six evaluations
    per step), embedded fourth-order estimate, and Tsitouras' own continuous
    extension (fourth order, free: it uses only the step's stages).

    A good default for non-stiff problems, and for Neural ODEs.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller).

    Reference: Ch. Tsitouras, "Runge--Kutta pairs of order 5(4) satisfying only the
    first column simplifying assumption", Computers & Mathematics with Applications
    62(2), 2011.
    """

    tableau: ClassVar[ButcherTableau] = _tsit5
