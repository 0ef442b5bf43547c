"""Dense output: each solver's continuous extension, the three interpolation classes,
and `Solution.evaluate`.

Orders here are those of the *local* interpolation error: on a step of size h
started from a point on the exact solution, a q-th order continuous extension of a
p-th order method is within O(h^(min(p, q) + 1)) of the exact solution everywhere in
the step. (The global error of `sol.evaluate(t)` adds the solution's own O(h^p)
error; measuring against the exact solution through each step's computed start
isolates the interpolant.)
"""

from math import factorial

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak
from helpers import A3, Y3, convergence_slope, rel_err, tanh_field


def ids(cls):
    return cls.__name__


# solver class: (order p, documented order q of its continuous extension). Tsit5,
# Dopri5 and Dopri8 have their own extensions; the others use cubic Hermite (q = 3).
# Dopri8's published free extension satisfies the order conditions only to order 5.
DENSE_SPEC = {
    ak.Euler: (1, 3),
    ak.Heun: (2, 3),
    ak.Midpoint: (2, 3),
    ak.Ralston: (2, 3),
    ak.RK4: (4, 3),
    ak.Bosh3: (3, 3),
    ak.Tsit5: (5, 4),
    ak.Dopri5: (5, 4),
    ak.Dopri8: (8, 5),
}
SOLVERS = list(DENSE_SPEC)
HERMITE_SOLVERS = [ak.Euler, ak.Heun, ak.Midpoint, ak.Ralston, ak.RK4, ak.Bosh3]

# How exactly each extension's coefficients reproduce what they must (b at θ = 1,
# the order conditions): Tsitouras' factored-form coefficients are given to ~16
# digits and expand to magnitudes ~90 (measured 1.2e-14); Dopri8's table (taken from
# Diffrax) has entries up to ~120 and reproduces b only to ~1e-12 (measured 9.7e-13),
# a property of the published digits. The rest are exact rationals rounded to double
# (measured <= 3.3e-16).
COEFFICIENT_PRECISION = {ak.Tsit5: 1e-13, ak.Dopri8: 2e-12}
EXACT_RATIONALS = 2e-15


def coefficient_precision(cls):
    return COEFFICIENT_PRECISION.get(cls, EXACT_RATIONALS)


# ---------------------------------------------------------------------------
# The test problem (as in test_solvers.py): a nonlinear, non-autonomous 2-d field
# with a closed-form solution through any point. x' = a(t) M x with eigenvalues
# -0.1 +- 2i and a(t) = 1 + cos(t)/2, seen through y = (x1, x2 + 0.3 x1^2).
# ---------------------------------------------------------------------------

WARP = 0.3
M2 = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
Y0_WARPED = jnp.array([1.0, 0.5])


def warped_field(t, y, args):
    x = jnp.stack([y[0], y[1] - WARP * y[0] ** 2])
    dx = (1 + 0.5 * jnp.cos(t)) * (M2 @ x)
    return jnp.stack([dx[0], dx[1] + 2 * WARP * x[0] * dx[0]])


def warped_exact(y, s, t):
    """The exact solution at time `t` through the point `y` at time `s`
    (broadcasting over leading axes)."""
    x1, x2 = y[..., 0], y[..., 1] - WARP * y[..., 0] ** 2
    tau = (t + 0.5 * jnp.sin(t)) - (s + 0.5 * jnp.sin(s))
    decay, cos, sin = jnp.exp(-0.1 * tau), jnp.cos(2 * tau), jnp.sin(2 * tau)
    z1 = decay * (cos * x1 + sin * x2)
    z2 = decay * (-sin * x1 + cos * x2)
    return jnp.stack([z1, z2 + WARP * z1**2], axis=-1)


# Interior points of a step, avoiding θ = 1/2 (where some extensions are more
# accurate than elsewhere) so that the maximum sees the generic error.
THETAS = jnp.array([0.1, 0.25, 0.4, 0.6, 0.75, 0.9])


# ---------------------------------------------------------------------------
# The continuous extensions as tableaus
# ---------------------------------------------------------------------------


def extended_tableau(tab):
    """`(P, A, c)` over the stages the continuous extension combines: the method's
    stages, followed (when not FSAL) by f(t1, y1), the stage with c = 1 and row b."""
    s = tab.num_stages
    m = tab.num_dense_stages
    A = np.zeros((m, m))
    for i, row in enumerate(tab.a):
        A[i, : len(row)] = row
    c = np.zeros(m)
    c[:s] = tab.c
    if m > s:
        A[s, :s] = tab.b
        c[s] = 1.0
    return tab.dense_matrix(), A, c


def extension_weights(P, theta):
    """b_i(θ) = Σ_j P[i, j] θ^(j+1), for each θ (rows) and stage (columns)."""
    theta = np.asarray(theta, float)[:, None]
    return theta ** np.arange(1, P.shape[1] + 1) @ P.T


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_continuous_extension_matches_the_step_at_both_ends(cls):
    """At θ = 1 the extension's weights are the method's weights b (so it ends on
    y1); at θ = 0 its derivative is f0 (dy/dθ = h f0)."""
    P, _, _ = extended_tableau(cls.tableau)
    b = np.zeros(P.shape[0])
    b[: cls.tableau.num_stages] = cls.tableau.b
    np.testing.assert_allclose(
        extension_weights(P, [1.0])[0], b, rtol=0, atol=coefficient_precision(cls)
    )
    # d b_i / dθ at 0 is P[i, 0]: one for the first stage f0, zero for the others.
    np.testing.assert_allclose(
        P[:, 0], np.eye(P.shape[0])[0], rtol=0, atol=coefficient_precision(cls)
    )


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_interpolate_at_step_ends(cls):
    """The same through `solver.interpolate` on a real step: y0 at t0, y1 at t1,
    and d/dt at t0 equal to f(t0, y0)."""
    solver = cls()
    t0, t1 = jnp.asarray(0.3), jnp.asarray(0.55)
    y0 = Y0_WARPED
    f0 = solver.init(warped_field, t0, y0, None)
    out = solver.step(warped_field, t0, t1, y0, None, f0)
    y1, dense_info = out.y1, out.dense_info

    def at(t):
        return solver.interpolate(t0, t1, y0, dense_info, t)

    np.testing.assert_array_equal(at(t0), y0)
    # |h k| ~ 0.5 multiplies the weight error at θ = 1.
    assert rel_err(at(t1), y1) < coefficient_precision(cls)
    _, slope_at_t0 = jax.jvp(at, (t0,), (jnp.ones_like(t0),))
    assert rel_err(slope_at_t0, f0) < coefficient_precision(cls)


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_continuous_extension_order_conditions(cls):
    """A continuous extension of order q satisfies, for every θ in [0, 1], the order
    conditions up to q with θ^(k+1) on the right: Σ b_i(θ) c_i^k = θ^(k+1)/(k+1)
    (bushy trees) and Σ b_i(θ) (A^k 1)_i = θ^(k+1)/(k+1)! (tall trees), for
    k < min(p, q)."""
    p, q = DENSE_SPEC[cls]
    P, A, c = extended_tableau(cls.tableau)
    thetas = np.linspace(0.1, 1.0, 10)
    W = extension_weights(P, thetas)
    ones = np.ones(P.shape[0])
    for k in range(min(p, q)):
        np.testing.assert_allclose(
            W @ c**k,
            thetas ** (k + 1) / (k + 1),
            rtol=0,
            atol=coefficient_precision(cls),
            err_msg=f"bushy tree of order {k + 1}",
        )
        np.testing.assert_allclose(
            W @ np.linalg.matrix_power(A, k) @ ones,
            thetas ** (k + 1) / factorial(k + 1),
            rtol=0,
            atol=coefficient_precision(cls),
            err_msg=f"tall tree of order {k + 1}",
        )


# ---------------------------------------------------------------------------
# Measured order of `sol.evaluate`
# ---------------------------------------------------------------------------

# Steps h = 2/N on [0, 2], chosen where each interpolant is asymptotic (measured
# local slopes within ~0.1 of the expected one) and its error (>= 1e-10) is far above
# rounding (~1e-16: a local error does not accumulate over steps). For Dopri8 the
# errors are 1e-6 .. 1e-8 and an eighth-order extension would still be far above
# rounding; the slope measured today is 5.9, consistent with the order conditions
# its coefficients actually meet (test_continuous_extension_order_conditions).
T_DENSE = 2.0
DENSE_STEPS = {
    ak.Euler: [2 / n for n in (64, 128, 256, 512)],
    ak.Heun: [2 / n for n in (16, 32, 64, 128)],
    ak.Midpoint: [2 / n for n in (16, 32, 64, 128)],
    ak.Ralston: [2 / n for n in (16, 32, 64, 128)],
    ak.RK4: [2 / n for n in (32, 64, 128, 256)],
    ak.Bosh3: [2 / n for n in (16, 32, 64, 128)],
    ak.Tsit5: [2 / n for n in (32, 64, 128)],
    ak.Dopri5: [2 / n for n in (32, 64, 128)],
    ak.Dopri8: [2 / n for n in (8, 12, 16)],
}


@pytest.mark.parametrize("cls", SOLVERS, ids=ids)
def test_dense_output_order(cls):
    """Inside every step, `sol.evaluate(t)` is within O(h^(min(p, q) + 1)) of the
    exact solution through that step's computed start: the log-log slope of the
    maximum error is within 0.3 of min(p, q) + 1."""
    p, q = DENSE_SPEC[cls]
    steps = DENSE_STEPS[cls]
    max_steps = int(round(T_DENSE / min(steps)))

    @jax.jit
    def max_local_error(dt0):
        sol = ak.solve(
            warped_field,
            cls(),
            0.0,
            T_DENSE,
            Y0_WARPED,
            dt0=dt0,
            saveat=ak.SaveAt(t0=True, steps=True, dense=True),
            max_steps=max_steps,
        )
        # Row j of ts/ys is the start of step j (t0 first), row j + 1 its end;
        # rows past the steps taken are inf and are masked out.
        taken = jnp.arange(max_steps) < sol.stats["num_accepted_steps"]
        start = jnp.where(taken, sol.ts[:-1], 0.0)
        end = jnp.where(taken, sol.ts[1:], 0.0)
        t = start[:, None] + THETAS * (end - start)[:, None]
        exact = warped_exact(sol.ys[:-1][:, None, :], start[:, None], t)
        error = jnp.abs(sol.evaluate(t) - exact)
        return jnp.max(jnp.where(taken[:, None, None], error, 0.0))

    # |y| is O(1) on this problem, so absolute errors are relative ones.
    errors = [float(max_local_error(jnp.asarray(h))) for h in steps]
    assert min(errors) > 1e-13, errors
    slope = convergence_slope(steps, errors)
    # +-0.3: asymptotic slopes measured within ~0.1; one order lower is 0.7+ away.
    assert slope == pytest.approx(min(p, q) + 1, abs=0.3), (slope, errors)


# ---------------------------------------------------------------------------
# The interpolation classes, one step at a time
# ---------------------------------------------------------------------------


def one_step_data(solver, t0, t1):
    """A step of `solver` from the exact solution at t0, and the exact point data
    `(y, f)` at both ends."""
    y0 = warped_exact(Y0_WARPED, 0.0, t0)
    y1 = warped_exact(Y0_WARPED, 0.0, t1)
    f0 = warped_field(t0, y0, None)
    f1 = warped_field(t1, y1, None)
    dense_info = solver.step(warped_field, t0, t1, y0, None, f0).dense_info
    return (y0, f0), (y1, f1), dense_info


def halvings(*ks):
    return [2.0**-k for k in ks]


# (interpolation, solver, expected local order, step sizes). Linear and Hermite
# interpolate the exact solution between exact end values: O(h^2) and O(h^4).
# DenseInterpolation is the solver's own extension from an exact start: O(h^5) for
# Tsit5's and Dopri5's fourth-order extensions. Step sizes: asymptotic (measured
# slopes within ~0.15), errors >= 1e-12.
CLASS_CASES = {
    "linear": (ak.LinearInterpolation(), ak.Tsit5(), 2, halvings(5, 6, 7, 8)),
    "hermite": (ak.HermiteInterpolation(), ak.Tsit5(), 4, halvings(4, 5, 6, 7)),
    "dense-tsit5": (ak.DenseInterpolation(), ak.Tsit5(), 5, halvings(4, 5, 6, 7)),
    "dense-dopri5": (ak.DenseInterpolation(), ak.Dopri5(), 5, halvings(4, 5, 6, 7)),
}


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_interpolation_class_order(case):
    """`evaluate(solver, t0, t1, left, right, step, t)` on a single step of a known
    solution converges at the interpolation's order."""
    interpolation, solver, expected, steps = CLASS_CASES[case]
    t0 = jnp.asarray(0.3)

    @jax.jit
    def max_error(h):
        t1 = t0 + h
        (y0, f0), (y1, f1), dense_info = one_step_data(solver, t0, t1)
        left = interpolation.point_data(y0, f0)
        right = interpolation.point_data(y1, f1)
        step = interpolation.step_data(dense_info)
        ts = t0 + THETAS * h
        approx = jax.vmap(
            lambda t: interpolation.evaluate(solver, t0, t1, left, right, step, t)
        )(ts)
        return jnp.max(jnp.abs(approx - warped_exact(y0, t0, ts)))

    errors = [float(max_error(jnp.asarray(h))) for h in steps]
    assert min(errors) > 1e-12, errors
    slope = convergence_slope(steps, errors)
    # +-0.3: measured within ~0.15 of the expected order.
    assert slope == pytest.approx(expected, abs=0.3), (slope, errors)


@pytest.mark.parametrize(
    "interpolation",
    [ak.LinearInterpolation(), ak.HermiteInterpolation()],
    ids=["linear", "hermite"],
)
def test_interpolation_ends_on_its_data(interpolation):
    """Linear and Hermite interpolation pass through the end points exactly."""
    t0, t1 = jnp.asarray(0.3), jnp.asarray(0.7)
    (y0, f0), (y1, f1), _ = one_step_data(ak.Tsit5(), t0, t1)
    left, right = interpolation.point_data(y0, f0), interpolation.point_data(y1, f1)

    def at(t):
        return interpolation.evaluate(None, t0, t1, left, right, None, t)

    np.testing.assert_array_equal(at(t0), y0)
    # θ = (t1 - t0)/(t1 - t0) is exactly 1; the basis then sums in one rounding.
    np.testing.assert_allclose(at(t1), y1, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "interpolation",
    [ak.LinearInterpolation(), ak.HermiteInterpolation(), ak.DenseInterpolation()],
    ids=["linear", "hermite", "dense"],
)
def test_interpolation_on_a_zero_length_step(interpolation):
    """A step with t0 == t1 (the empty solve) gives the left value, not NaN."""
    solver = ak.Tsit5()
    t0 = jnp.asarray(0.3)
    (y0, f0), _, dense_info = one_step_data(solver, t0, t0)
    point = interpolation.point_data(y0, f0)
    step = interpolation.step_data(dense_info)
    y = interpolation.evaluate(solver, t0, t0, point, point, step, t0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("cls", HERMITE_SOLVERS, ids=ids)
def test_hermite_solvers_interpolate_as_hermite_interpolation(cls):
    """The solvers without their own extension interpolate with the cubic Hermite
    through y0, y1, f(t0, y0), f(t1, y1): the same polynomial as
    HermiteInterpolation fed with the step's data. DenseInterpolation is the
    solver's interpolation itself."""
    solver = cls()
    t0, t1 = jnp.asarray(0.3), jnp.asarray(0.55)
    y0 = Y0_WARPED
    f0 = solver.init(warped_field, t0, y0, None)
    out = solver.step(warped_field, t0, t1, y0, None, f0)
    y1, dense_info, f1 = out.y1, out.dense_info, out.state
    ts = t0 + jnp.linspace(0.0, 1.0, 7) * (t1 - t0)

    own = jax.vmap(lambda t: solver.interpolate(t0, t1, y0, dense_info, t))(ts)
    hermite = ak.HermiteInterpolation()
    via_class = jax.vmap(
        lambda t: hermite.evaluate(solver, t0, t1, (y0, f0), (y1, f1), None, t)
    )(ts)
    # The same cubic written in two bases (stage weights vs Hermite basis): a few
    # roundings of O(1) terms.
    assert rel_err(own, via_class) < 1e-14

    dense = ak.DenseInterpolation()
    via_dense = jax.vmap(
        lambda t: dense.evaluate(solver, t0, t1, y0, y1, dense_info, t)
    )(ts)
    np.testing.assert_array_equal(via_dense, own)


# ---------------------------------------------------------------------------
# Solution.evaluate
# ---------------------------------------------------------------------------

ARGS3 = {"A": jnp.asarray(A3)}
# (t0, t1, dt0, times inside [t0, t1] in a deliberately unordered (2, 4) array, which
# includes t0, t1 and step ends).
EVAL_CASES = {
    "forward": (0.0, 1.0, 0.1, [[0.35, 0.0, 1.0, 0.5], [0.123, 0.9, 0.77, 0.3]]),
    "backward": (2.0, 0.0, -0.25, [[1.3, 2.0, 0.0, 1.5], [0.1, 0.75, 1.9, 0.6]]),
}


def dense_tsit5(t0, t1, dt0, saveat):
    return ak.solve(
        tanh_field, ak.Tsit5(), t0, t1, jnp.asarray(Y3), ARGS3, dt0=dt0, saveat=saveat
    )


# Backward in time, `evaluate` runs by default in
# test_evaluate_matches_diffrax_dense_output (an array of times against Diffrax)
# and test_solution_derivative: these two cases on demand.
_BACKWARD_ON_DEMAND = [
    "forward",
    pytest.param("backward", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("direction", _BACKWARD_ON_DEMAND)
def test_evaluate_is_vectorised_and_agrees_with_saveat_ts(direction):
    """`sol.evaluate` maps over an array of times of any shape (in any order), and
    gives the values SaveAt(ts=...) saves at the same times."""
    t0, t1, dt0, times = EVAL_CASES[direction]
    times = jnp.asarray(times)
    sol = dense_tsit5(t0, t1, dt0, ak.SaveAt(dense=True))
    values = sol.evaluate(times)
    assert values.shape == (*times.shape, 3)

    one_by_one = jnp.stack([sol.evaluate(t) for t in times.reshape(-1)])
    # The same interpolant on the same data, vectorised or not; XLA may order the
    # sums differently in the two programs: a few ulps of O(1) values.
    assert rel_err(values.reshape(-1, 3), one_by_one) < 1e-14

    # SaveAt(ts) wants the times ordered in the direction of integration.
    ordered = jnp.sort(times.reshape(-1))
    ordered = ordered if t1 > t0 else ordered[::-1]
    saved = dense_tsit5(t0, t1, dt0, ak.SaveAt(ts=ordered)).ys
    # Same interpolant, same steps; only XLA's evaluation order may differ (ulps).
    assert rel_err(sol.evaluate(ordered), saved) < 1e-14


@pytest.mark.parametrize("direction", _BACKWARD_ON_DEMAND)
def test_evaluate_at_the_grid(direction):
    """At t0 `sol.evaluate` is y0 exactly; at each step end it is the step's value
    (the extension's weights at θ = 1 are b, up to Tsitouras' published digits)."""
    t0, t1, dt0, _ = EVAL_CASES[direction]
    sol = dense_tsit5(t0, t1, dt0, ak.SaveAt(steps=True, dense=True))
    np.testing.assert_array_equal(sol.evaluate(jnp.asarray(t0)), jnp.asarray(Y3))
    # Tsit5's weights at θ = 1 match b to 1.2e-14, times |h k| < 1.
    assert rel_err(sol.evaluate(sol.ts), sol.ys) < 1e-13


@pytest.mark.parametrize("direction", list(EVAL_CASES))
def test_evaluate_matches_diffrax_dense_output(direction):
    """Tsit5's dense output is Diffrax's, forward and backward in time."""
    t0, t1, dt0, times = EVAL_CASES[direction]
    times = jnp.asarray(times).reshape(-1)
    sol = dense_tsit5(t0, t1, dt0, ak.SaveAt(dense=True))
    n = int(round((t1 - t0) / dt0))
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(tanh_field),
        diffrax.Tsit5(),
        t0,
        t1,
        dt0,
        jnp.asarray(Y3),
        ARGS3,
        saveat=diffrax.SaveAt(dense=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=n,
    )
    expected = jax.vmap(ref.evaluate)(times)
    # Same steps, same interpolant; the tableau sums and Tsitouras' polynomials are
    # evaluated in different orders (~1e-15 per step over <= 10 steps).
    assert rel_err(sol.evaluate(times), expected) < 1e-12


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 16, 50])
def test_grid_search_counts_the_grid_points_below_a_time(n):
    # `evaluate` finds a time's step by a blocked search; it must agree with a
    # binary search, also on the `inf` padding of unused steps and at grid points.
    from adjointkit.interpolation._trajectory import _count_below

    rng = np.random.default_rng(n)
    filled = np.sort(rng.uniform(0.0, 1.0, size=n // 2 + n % 2))
    grid = np.concatenate([filled, np.full(n - filled.size, np.inf)])
    probes = np.concatenate([[-1.0, 0.0, 0.5, 2.0, np.inf], filled])
    for t in probes:
        expected = np.searchsorted(grid, t, side="left")
        assert int(_count_below(jnp.asarray(grid), jnp.asarray(t))) == expected, t
