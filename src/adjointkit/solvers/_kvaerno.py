"""Kværnø's stiffly accurate ESDIRK methods, and implicit Euler."""

from ._dirk import AbstractImplicitRungeKutta, ImplicitTableau


# Implicit Euler as an ESDIRK: the explicit first stage is the carried f(t0, y0),
# which costs nothing and gives the error estimate h (k1 - k0) / 2, the difference
# from the trapezoidal rule (local order 2).
_implicit_euler = ImplicitTableau(
    a=((0.0,), (0.0, 1.0)),
    b=(0.0, 1.0),
    c=(0.0, 1.0),
    order=1,
    b_error=(-0.5, 0.5),
    embedded_order=1,
)


class ImplicitEuler(AbstractImplicitRungeKutta):
    """Implicit (backward) Euler: first order, L-stable, with an error estimate
    from the trapezoidal rule. For stiff problems at loose tolerances, or as a
    baseline.

    **Arguments:** `rtol`, `atol`, `kappa`, `max_iterations`, `max_refreshes`,
    the stage iterations' settings (all optional; see
    `AbstractImplicitRungeKutta`).
    """

    tableau = _implicit_euler


# A. Kværnø, "Singly diagonally implicit Runge--Kutta methods with an explicit
# first stage", BIT Numerical Mathematics 44 (2004) 489--502: the 4-stage method
# of order 3 with an embedded method of order 2, γ the root of
# 6γ³ - 18γ² + 9γ - 1 = 0 near 0.4359 (L-stability), coefficients in closed form.
_g3 = 0.43586652150
_a31 = (-4 * _g3**2 + 6 * _g3 - 1) / (4 * _g3)
_a32 = (-2 * _g3 + 1) / (4 * _g3)
_a41 = (6 * _g3 - 1) / (12 * _g3)
_a42 = -1 / ((24 * _g3 - 12) * _g3)
_a43 = (-6 * _g3**2 + 6 * _g3 - 1) / (6 * _g3 - 3)
_kvaerno3 = ImplicitTableau(
    a=(
        (0.0,),
        (_g3, _g3),
        (_a31, _a32, _g3),
        (_a41, _a42, _a43, _g3),
    ),
    b=(_a41, _a42, _a43, _g3),
    c=(0.0, 2 * _g3, 1.0, 1.0),
    order=3,
    # The embedded solution is the third stage value (also at t1).
    b_error=(_a41 - _a31, _a42 - _a32, _a43 - _g3, _g3),
    embedded_order=2,
)


class Kvaerno3(AbstractImplicitRungeKutta):
    """Kværnø's 3(2) method: a stiffly accurate, L-stable ESDIRK of order 3 with
    an embedded order-2 estimate; 4 stages (3 implicit), first same as last.
    (A. Kværnø, BIT 44, 2004.)

    **Arguments:** `rtol`, `atol`, `kappa`, `max_iterations`, `max_refreshes`,
    the stage iterations' settings (all optional; see
    `AbstractImplicitRungeKutta`).
    """

    tableau = _kvaerno3


# Kværnø (2004), the 7-stage method of order 5 with an embedded method of order 4
# (γ = 0.26); the coefficients as published to 17 digits.
_g5 = 0.26
_a5 = (
    (0.0,),
    (_g5, _g5),
    (0.13, 0.84033320996790809, _g5),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _g5),
    (
        0.16648564323248321,
        0.10450018841591720,
        0.03631482272098715,
        -0.13090704451073998,
        _g5,
    ),
    (
        0.13855640231268224,
        0.0,
        -0.04245337201752043,
        0.02446657898003141,
        0.61943039072480676,
        _g5,
    ),
    (
        0.13659751177640291,
        0.0,
        -0.05496908796538376,
        -0.04118626728321046,
        0.62993304899016403,
        0.06962479448202728,
        _g5,
    ),
)
_kvaerno5 = ImplicitTableau(
    a=_a5,
    b=_a5[-1],
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    order=5,
    # The embedded solution is the sixth stage value (also at t1).
    b_error=tuple(x - y for x, y in zip(_a5[-1], _a5[-2] + (0.0,), strict=True)),
    embedded_order=4,
)


class Kvaerno5(AbstractImplicitRungeKutta):
    """Kværnø's 5(4) method: a stiffly accurate, L-stable ESDIRK of order 5 with
    an embedded order-4 estimate; 7 stages (6 implicit), first same as last.
    (A. Kværnø, BIT 44, 2004.)

    **Arguments:** `rtol`, `atol`, `kappa`, `max_iterations`, `max_refreshes`,
    the stage iterations' settings (all optional; see
    `AbstractImplicitRungeKutta`).
    """

    tableau = _kvaerno5
