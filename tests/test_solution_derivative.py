"""Solution.evaluate(t0, t1) (an increment) and Solution.derivative(t), and each
interpolation's `derivative`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak
from adjointkit.interpolation import Trajectory
from helpers import A3, Y3, rel_err, tanh_field


ARGS3 = {"A": jnp.asarray(A3)}


def _dense(t0=0.0, t1=1.0, dt0=0.1, solver=None):
    return ak.solve(
        tanh_field, solver or ak.Tsit5(), t0, t1, jnp.asarray(Y3), ARGS3, dt0=dt0,
        saveat=ak.SaveAt(dense=True),
    )  # fmt: skip


def test_evaluate_with_t1_is_the_increment():
    sol = _dense()
    a, b = jnp.array([0.05, 0.3, 0.9]), jnp.array([0.6, 0.3, 0.1])
    inc = sol.evaluate(a, b)
    # The same two interpolations subtracted: exact.
    np.testing.assert_array_equal(inc, sol.evaluate(b) - sol.evaluate(a))
    np.testing.assert_array_equal(inc[1], jnp.zeros(3))
    # Broadcast: one t0 against several t1.
    np.testing.assert_array_equal(
        sol.evaluate(0.0, b), sol.evaluate(b) - sol.evaluate(0.0)
    )


def test_evaluate_and_derivative_need_dense_output():
    sol = ak.solve(tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), ARGS3, dt0=0.1)
    with pytest.raises(ValueError, match=r"SaveAt\(dense=True\)"):
        sol.evaluate(0.5, 0.7)
    with pytest.raises(ValueError, match=r"derivative.*SaveAt\(dense=True\)"):
        sol.derivative(0.5)


SOLVERS = {
    "tsit5": ak.Tsit5(),
    "dopri5": ak.Dopri5(),
    "bosh3": ak.Bosh3(),
    "heun": ak.Heun(),
    "kvaerno3": ak.Kvaerno3(),
    "reversible": ak.Reversible(ak.Tsit5()),
}


# Times inside the steps of the solves below, none within 1e-5 of a step's end.
INSIDE = jnp.array([0.03, 0.27, 0.55, 0.71, 0.96])


def _central_differences(sol, ts, h=1e-5):
    """`(y(t + h) - y(t - h)) / 2h` at each of `ts`, from the `evaluate` of a
    solution or a trajectory."""
    return (sol.evaluate(ts + h) - sol.evaluate(ts - h)) / (2 * h)


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("direction", [1, -1])
def test_derivative_matches_central_differences(name, direction):
    """dy/dt of the dense output against central differences of `evaluate` inside
    steps (the interpolant is smooth there)."""
    t0, t1 = (0.0, 1.0) if direction == 1 else (1.0, 0.0)
    sol = _dense(t0, t1, 0.1 * direction, SOLVERS[name])
    # Inside steps, away from the grid points (multiples of 0.1).
    ts = INSIDE
    fd = _central_differences(sol, ts)
    # Central differences: error h^2 |y'''| / 6 ~ 1e-11, plus rounding
    # eps |y| / h ~ 2e-11; 1e-8 is a wide margin on both.
    assert rel_err(sol.derivative(ts), fd) < 1e-8
    # And close to the vector field itself: dense output of order >= 2 matches
    # f(t, y(t)) to O(h^2) = 1e-2 or better at dt = 0.1.
    f_at = jax.vmap(lambda t, y: tanh_field(t, y, ARGS3))(ts, sol.evaluate(ts))
    assert rel_err(sol.derivative(ts), f_at) < 2e-2


def test_derivative_of_a_polynomial_solution_is_exact():
    """y' = 3 t^2 (y = t^3): Tsit5's dense output is a polynomial of degree 4 in
    θ on each step that reproduces cubics exactly, so its derivative is 3 t^2 to
    rounding."""
    f = lambda t, y, args: 3 * t**2 * jnp.ones_like(y)  # noqa: E731
    sol = ak.solve(
        f, ak.Tsit5(), 0.0, 2.0, jnp.zeros(1), dt0=0.25, saveat=ak.SaveAt(dense=True)
    )
    ts = jnp.linspace(0.0, 2.0, 17) + 0.01
    ts = ts.at[-1].set(2.0)
    # Values up to 12 built from sums of stage values up to 12: a few ulps of 12
    # absolute (~1e-14), and 1e-13 relative.
    np.testing.assert_allclose(
        sol.derivative(ts)[:, 0], 3 * ts**2, rtol=1e-13, atol=1e-14
    )
    np.testing.assert_allclose(sol.evaluate(ts)[:, 0], ts**3, rtol=1e-13, atol=1e-15)


def _trajectory(interpolation, f, y_of_t, dy_of_t, grid):
    """A trajectory of the exact solution at `grid`, interpolated by
    `interpolation` (the dense solver data are not needed by linear/Hermite)."""
    grid = jnp.asarray(grid)
    ys = jax.vmap(y_of_t)(grid)
    fs = jax.vmap(dy_of_t)(grid)
    points = jax.vmap(interpolation.point_data)(ys, fs)
    n = grid.shape[0] - 1
    return Trajectory(
        times=grid,
        points=points,
        steps=None if interpolation.step_data(None) is None else None,
        count=jnp.asarray(n, jnp.int32),
        interpolation=interpolation,
        solver=ak.Tsit5(),
    )


def test_hermite_derivative_is_exact_on_cubics():
    # The cubic Hermite interpolant reproduces any cubic, so its derivative is the
    # cubic's derivative (to rounding).
    y = lambda t: jnp.array([t**3 - 2 * t, 0.5 * t**2])  # noqa: E731
    dy = lambda t: jnp.array([3 * t**2 - 2, t])  # noqa: E731
    traj = _trajectory(ak.HermiteInterpolation(), None, y, dy, [0.0, 0.3, 0.7, 1.5])
    ts = jnp.array([0.0, 0.1, 0.3, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(
        traj.derivative(ts), jax.vmap(dy)(ts), rtol=1e-13, atol=1e-14
    )


def test_linear_derivative_is_the_slope_of_each_step():
    y = lambda t: jnp.array([t**2])  # noqa: E731
    dy = lambda t: jnp.array([2 * t])  # noqa: E731
    traj = _trajectory(ak.LinearInterpolation(), None, y, dy, [0.0, 0.5, 2.0])
    # Step [0, 0.5]: slope 0.5; step [0.5, 2]: slope (4 - 0.25) / 1.5 = 2.5. A grid
    # point belongs to the step that ends there.
    got = traj.derivative(jnp.array([0.0, 0.2, 0.5, 1.0, 2.0]))[:, 0]
    np.testing.assert_allclose(got, [0.5, 0.5, 0.5, 2.5, 2.5], rtol=1e-15)


@pytest.mark.parametrize("interp", ["hermite", "linear"])
def test_interpolation_derivative_matches_finite_differences(interp):
    interpolation = {
        "hermite": ak.HermiteInterpolation(),
        "linear": ak.LinearInterpolation(),
    }[interp]
    y = lambda t: jnp.array([jnp.sin(3 * t), jnp.exp(-t)])  # noqa: E731
    dy = lambda t: jnp.array([3 * jnp.cos(3 * t), -jnp.exp(-t)])  # noqa: E731
    traj = _trajectory(interpolation, None, y, dy, jnp.linspace(0.0, 1.0, 6))
    ts = jnp.array([0.05, 0.33, 0.51, 0.93])
    fd = _central_differences(traj, ts, h=1e-6)
    # The interpolants are polynomials of degree <= 3 within a step: central
    # differences err by h^2 |p'''| / 6 (< 1e-10) plus rounding eps / h ~ 1e-10.
    assert rel_err(traj.derivative(ts), fd) < 1e-8


def test_derivative_is_differentiable():
    """d/dargs of the derivative at a point: through the dense output, as
    evaluate is."""

    def g(scale):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3),
            {"A": scale * ARGS3["A"]}, dt0=0.1, saveat=ak.SaveAt(dense=True),
        )  # fmt: skip
        return jnp.sum(sol.derivative(0.45))

    h = 1e-6
    g_jit = jax.jit(g)
    fd = (g_jit(1.0 + h) - g_jit(1.0 - h)) / (2 * h)
    # Central difference of a smooth function of `scale`: ~1e-10 absolute.
    np.testing.assert_allclose(jax.jit(jax.grad(g))(1.0), fd, rtol=1e-7)


def test_derivative_under_adaptive_steps_with_a_closed_over_module():
    # The path users walk: PIDController steps, and the parameters in an
    # Equinox module that `f` closes over instead of passing through `args`.
    class Field(eqx.Module):
        A: jax.Array

        def __call__(self, t, y, args):
            return tanh_field(t, y, {"A": self.A})

    field = Field(jnp.asarray(A3))
    sol = ak.solve(
        lambda t, y, args: field(t, y, args), ak.Tsit5(), 0.0, 1.0,
        jnp.asarray(Y3), controller=ak.PIDController(rtol=1e-6, atol=1e-8),
        saveat=ak.SaveAt(dense=True),
    )  # fmt: skip
    ts = INSIDE
    fd = _central_differences(sol, ts)
    # As with constant steps: central differences inside a step are within
    # ~1e-11 (truncation and rounding); none of these points lies within h of a
    # step end for this solve's steps, so 1e-8 is a wide margin.
    assert rel_err(sol.derivative(ts), fd) < 1e-8
    # And the vector field along the solution: Tsit5's dense output is 4th order
    # and the steps hold the local error near rtol, so 1e-4 is generous.
    f_along = jax.vmap(lambda t, y: field(t, y, None))(ts, sol.evaluate(ts))
    assert rel_err(sol.derivative(ts), f_along) < 1e-4
