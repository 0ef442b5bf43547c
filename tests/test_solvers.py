"""The explicit Runge--Kutta solvers: their tableaus, their measured order of
convergence, and step-for-step agreement with Diffrax and with a hand-written RK4.

Everything runs in float64 (see conftest). Dense output is tested in
`test_dense_output.py`.
"""

from math import factorial

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import adjointkit as ak
from helpers import A3, Y3, convergence_slope, rel_err, tanh_field


# ---------------------------------------------------------------------------
# What each solver promises (from its documentation and the literature).
# ---------------------------------------------------------------------------

# solver class: (order, error_order, fsal, evals_per_step). `error_order` is the
# local order of the embedded estimate (embedded order + 1); `None` without one.
SPEC = {
    ak.Euler: (1, None, False, 1),
    ak.Heun: (2, 2, False, 2),
    ak.Midpoint: (2, 2, False, 2),
    ak.Ralston: (2, 2, False, 2),
    ak.RK4: (4, None, False, 4),
    ak.Bosh3: (3, 3, True, 3),
    ak.Tsit5: (5, 5, True, 6),
    ak.Dopri5: (5, 5, True, 6),
    ak.Dopri8: (8, 8, True, 13),
}
SOLVERS = list(SPEC)


def ids(cls):
    return cls.__name__


def tableau_arrays(tab):
    """`(A, b, c)` of a tableau as dense numpy arrays."""
    s = tab.num_stages
    A = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        A[i, : len(row)] = row
    return A, np.asarray(tab.b), np.asarray(tab.c)


# ---------------------------------------------------------------------------
# Tableaus
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_tableau_is_consistent(cls):
    """Each row of `a` sums to its node `c_i`, and the weights `b` sum to one."""
    A, b, c = tableau_arrays(cls.tableau)
    # The coefficients are rationals rounded to double; a row holds at most 13
    # terms of magnitude <= ~40, so its sum is exact to well under 1e-14.
    np.testing.assert_allclose(A.sum(axis=1), c, rtol=0, atol=1e-14)
    assert b.sum() == pytest.approx(1.0, rel=0, abs=1e-14)
    assert c[0] == 0.0


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_tableau_satisfies_its_order_conditions(cls):
    """Two families of order conditions up to the nominal order p: the quadrature
    conditions `b . c^k = 1/(k+1)` (bushy trees) and `b . A^k 1 = 1/(k+1)!` (tall
    trees), k = 0 .. p-1. Necessary for order p; a mistyped coefficient almost
    always breaks one of them."""
    order = SPEC[cls][0]
    A, b, c = tableau_arrays(cls.tableau)
    ones = np.ones_like(b)
    for k in range(order):
        # Double-precision coefficients, sums of <= 14 products: ~1e-15 at worst.
        assert b @ c**k == pytest.approx(1 / (k + 1), rel=0, abs=1e-14), k
        tall = b @ np.linalg.matrix_power(A, k) @ ones
        assert tall == pytest.approx(1 / factorial(k + 1), rel=0, abs=1e-14), k


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_solver_properties(cls):
    """Order, error order, FSAL detection and cost per step are as documented."""
    order, error_order, fsal, evals = SPEC[cls]
    solver = cls()
    assert solver.order == order
    assert solver.error_order == error_order
    assert cls.tableau.fsal is fsal
    assert solver.evals_per_step == evals


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_f_evaluations_counted_and_reported(cls):
    """`evals_per_step` is the true number of calls of `f` per step, and
    `stats["num_f_evals"]` reports the calls really made: one at t0, then
    `evals_per_step` per step."""
    calls = []

    def count():
        calls.append(1)
        return np.int32(0)

    def f(t, y, args):
        io_callback(count, jax.ShapeDtypeStruct((), jnp.int32), ordered=True)
        return -y

    n = 5
    sol = ak.solve(f, cls(), 0.0, 1.0, jnp.ones(2), dt0=1 / n)
    jax.block_until_ready(sol.ys)
    expected = 1 + n * SPEC[cls][3]
    assert len(calls) == expected
    assert int(sol.stats["num_f_evals"]) == expected


# ---------------------------------------------------------------------------
# Order of convergence
# ---------------------------------------------------------------------------

# A nonlinear, non-autonomous 2-d problem with a closed-form solution. The linear
# rotation x' = a(t) M x (eigenvalues -0.1 +- 2i, rate a(t) = 1 + cos(t)/2) is solved
# by x(t) = e^{-0.1 tau} R(2 tau) x(s), tau = a_int(t) - a_int(s); the smooth,
# invertible change of variables y = (x1, x2 + 0.3 x1^2) makes the field nonlinear in
# y (f_yy != 0), so every kind of order condition matters. (A purely linear
# autonomous problem does not: Dopri8 shows order 9 on y' = M y.)
WARP = 0.3
M2 = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
Y0_WARPED = jnp.array([1.0, 0.5])


def _rate(t):
    return 1 + 0.5 * jnp.cos(t)


def _rate_integral(t):
    return t + 0.5 * jnp.sin(t)


def warped_field(t, y, args):
    x = jnp.stack([y[0], y[1] - WARP * y[0] ** 2])
    dx = _rate(t) * (M2 @ x)
    return jnp.stack([dx[0], dx[1] + 2 * WARP * x[0] * dx[0]])


def warped_exact(y, s, t):
    """The exact solution at time `t` through the point `y` at time `s`
    (broadcasting over leading axes of `y`, `s`, `t`)."""
    x1, x2 = y[..., 0], y[..., 1] - WARP * y[..., 0] ** 2
    tau = _rate_integral(t) - _rate_integral(s)
    decay, cos, sin = jnp.exp(-0.1 * tau), jnp.cos(2 * tau), jnp.sin(2 * tau)
    z1 = decay * (cos * x1 + sin * x2)
    z2 = decay * (-sin * x1 + cos * x2)
    return jnp.stack([z1, z2 + WARP * z1**2], axis=-1)


# On [0, 32] (about ten turns): the long interval keeps the global error of the
# fifth- and eighth-order methods at 1e-11 .. 1e-6 for the steps below, while
# rounding after <= 10^4 steps stays near 1e-14; the step ranges start where each
# method is already asymptotic (the h^(p+1) term no longer bends the slope; measured
# local slopes are within 0.05 of p). Steps are 32/N, so dt0 divides the interval.
T_ORDER = 32.0
ORDER_STEPS = {
    ak.Euler: [2.0**-k for k in (10, 11, 12, 13)],
    ak.Heun: [2.0**-k for k in (5, 6, 7, 8)],
    ak.Midpoint: [2.0**-k for k in (5, 6, 7, 8)],
    ak.Ralston: [2.0**-k for k in (5, 6, 7, 8)],
    ak.RK4: [2.0**-k for k in (3, 4, 5, 6)],
    ak.Bosh3: [2.0**-k for k in (4, 5, 6, 7)],
    ak.Tsit5: [2.0**-k for k in (5, 6, 7)],
    ak.Dopri5: [2.0**-k for k in (5, 6, 7)],
    ak.Dopri8: [1 / 4, 1 / 6, 1 / 8],
}


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_order_of_convergence(cls):
    """The global error at t1 with constant steps h decays like h^p, p the nominal
    order: the least-squares log-log slope is within 0.3 of p."""
    steps = ORDER_STEPS[cls]
    max_steps = int(round(T_ORDER / min(steps)))

    # dt0 traced: one compilation for every step size.
    @jax.jit
    def final_state(dt0):
        sol = ak.solve(
            warped_field, cls(), 0.0, T_ORDER, Y0_WARPED, dt0=dt0, max_steps=max_steps
        )
        return sol.ys[-1]

    exact = warped_exact(Y0_WARPED, 0.0, T_ORDER)
    errors = [rel_err(final_state(jnp.asarray(h)), exact) for h in steps]
    # Well above rounding, so the slope measures truncation error only.
    assert min(errors) > 1e-12, errors
    slope = convergence_slope(steps, errors)
    # +-0.3: the measured slopes sit within 0.05 of p; a method one order off (or a
    # wrong coefficient, which typically costs orders) lands >= 0.7 away.
    assert slope == pytest.approx(SPEC[cls][0], abs=0.3), (slope, errors)


# ---------------------------------------------------------------------------
# Agreement with Diffrax, step for step
# ---------------------------------------------------------------------------

DIFFRAX = {
    ak.Euler: diffrax.Euler,
    ak.Heun: diffrax.Heun,
    ak.Midpoint: diffrax.Midpoint,
    ak.Ralston: diffrax.Ralston,
    ak.Bosh3: diffrax.Bosh3,
    ak.Tsit5: diffrax.Tsit5,
    ak.Dopri5: diffrax.Dopri5,
    ak.Dopri8: diffrax.Dopri8,
}
# Solvers whose dense output is the same interpolant as Diffrax's. (The others use
# cubic Hermite with the true f(t1, y1); Diffrax uses their last stage instead.)
SAME_INTERPOLANT = {ak.Bosh3, ak.Tsit5, ak.Dopri5, ak.Dopri8}

# (t0, t1, dt0, ts). dt0 divides t1 - t0 exactly, so both libraries take the same
# steps (Diffrax's first step is exactly dt0, adjointkit's are (t1 - t0)/N). The ts
# hold t0 and t1 themselves, a repeated time, and a step end (0.35 = 7 steps of 0.05;
# 1.0 = 4 steps of -0.25 from 2).
DIRECTIONS = {
    "forward": (0.0, 1.0, 0.05, [0.0, 0.13, 0.13, 0.35, 0.5, 0.77, 1.0]),
    "backward": (2.0, 0.0, -0.25, [2.0, 1.6, 1.6, 1.0, 0.3, 0.0]),
}
ARGS3 = {"A": jnp.asarray(A3)}


# Every solver forward in time; backward in time, one with Diffrax's interpolant
# (Tsit5) and one with cubic Hermite (Heun) by default, the others on demand: the
# direction is handled by the loop, not by the tableau.
_BACKWARD_BY_DEFAULT = {ak.Tsit5, ak.Heun}


@pytest.mark.parametrize(
    "cls, direction",
    [
        pytest.param(
            cls,
            direction,
            id=f"{cls.__name__}-{direction}",
            marks=pytest.mark.slow
            if direction == "backward" and cls not in _BACKWARD_BY_DEFAULT
            else (),
        )  # fmt: skip
        for cls in DIFFRAX
        for direction in DIRECTIONS
    ],
)
def test_matches_diffrax(cls, direction):
    """With the same constant steps, adjointkit and Diffrax compute the same
    solution at every step end and at t1, forward and backward in time; where the
    interpolants are the same, also at SaveAt(ts=...)."""
    t0, t1, dt0, ts = DIRECTIONS[direction]
    ts = jnp.asarray(ts)
    with_ts = cls in SAME_INTERPOLANT
    y0 = jnp.asarray(Y3)
    n = int(round((t1 - t0) / dt0))

    sol = ak.solve(
        tanh_field,
        cls(),
        t0,
        t1,
        y0,
        ARGS3,
        dt0=dt0,
        saveat=ak.SaveAt(ts=ts if with_ts else None, steps=True, t1=True),
    )
    subs = [diffrax.SubSaveAt(steps=True), diffrax.SubSaveAt(t1=True)]
    if with_ts:
        subs.append(diffrax.SubSaveAt(ts=ts))
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(tanh_field),
        DIFFRAX[cls](),
        t0,
        t1,
        dt0,
        y0,
        ARGS3,
        saveat=diffrax.SaveAt(subs=subs),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=n,
    )
    # adjointkit's saved values come in the order ts, steps, t1.
    k = len(ts) if with_ts else 0
    assert sol.ts.shape == (k + n + 1,)
    ref_steps, ref_t1 = ref.ys[0], ref.ys[1]
    np.testing.assert_array_equal(sol.ts[k : k + n], ref.ts[0])
    # Same tableau, same stage order: only the order of floating-point sums differs
    # (~1e-16 per step, <= 20 steps of a non-expanding field, so <~1e-14); any wrong
    # coefficient shows up at 1e-8 or more.
    assert rel_err(sol.ys[k : k + n], ref_steps) < 1e-12
    assert rel_err(sol.ys[-1], ref_t1[0]) < 1e-12
    if with_ts:
        np.testing.assert_array_equal(sol.ts[:k], ts)
        # Same interpolant, same data: same rounding argument as above.
        assert rel_err(sol.ys[:k], ref.ys[2]) < 1e-12


# ---------------------------------------------------------------------------
# RK4 against the textbook loop
# ---------------------------------------------------------------------------


def rk4_by_hand(f, t0, t1, y0, args, n):
    """The classical fourth-order Runge--Kutta method, n equal steps, written out."""
    h = (t1 - t0) / n
    ys, y = [], y0
    for i in range(n):
        t = t0 + (t1 - t0) * i / n
        k1 = f(t, y, args)
        k2 = f(t + h / 2, y + h / 2 * k1, args)
        k3 = f(t + h / 2, y + h / 2 * k2, args)
        k4 = f(t + h, y + h * k3, args)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return jnp.stack(ys)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_rk4_matches_hand_written_loop(direction):
    t0, t1, dt0, _ = DIRECTIONS[direction]
    n = int(round((t1 - t0) / dt0))
    y0 = jnp.asarray(Y3)
    sol = ak.solve(
        tanh_field, ak.RK4(), t0, t1, y0, ARGS3, dt0=dt0, saveat=ak.SaveAt(steps=True)
    )
    expected = rk4_by_hand(tanh_field, t0, t1, y0, ARGS3, n)
    # The same arithmetic up to the association of the weighted stage sum (a few
    # ulps per step) over <= 20 steps of a non-expanding field: <~1e-14, so 1e-13.
    assert rel_err(sol.ys, expected) < 1e-13
