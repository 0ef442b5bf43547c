"""`solve` as a user sees it: intervals, saving, pytrees, transformations, dtypes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import adjointkit as ak
from helpers import M2, Y2, linear_exact, linear_field


def decay(t, y, args):
    """y' = -k y, leaf by leaf: `args` is a pytree of rates shaped like `y`."""
    return jtu.tree_map(lambda k, x: -k * x, args, y)


def decay_exact(y0, rates, t):
    return jtu.tree_map(lambda k, x: np.asarray(x) * np.exp(-k * t), rates, y0)


def assert_tree_close(actual, expected, *, rtol=0.0, atol=0.0):
    jtu.tree_map(
        lambda a, e: np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=rtol, atol=atol
        ),
        actual,
        expected,
    )


def stats(sol):
    return {k: int(v) for k, v in sol.stats.items()}


Y0 = jnp.asarray(Y2)
M = jnp.asarray(M2)
PID = ak.PIDController(rtol=1e-8, atol=1e-8)

# ---------------------------------------------------------------------------
# Intervals: empty, backward
# ---------------------------------------------------------------------------


def _solve_empty_interval(kind, saveat):
    common = dict(saveat=saveat, max_steps=16)
    if kind == "constant":
        return ak.solve(linear_field, ak.RK4(), 1.0, 1.0, Y0, M, dt0=0.1, **common)
    if kind == "adaptive":
        return ak.solve(
            linear_field, ak.Tsit5(), 1.0, 1.0, Y0, M, controller=PID, **common
        )

    # kind == "constant, traced times": the loop path, not the scan of N steps.
    def run(t0, t1):
        return ak.solve(linear_field, ak.RK4(), t0, t1, Y0, M, dt0=0.1, **common)

    return jax.jit(run)(1.0, 1.0)


@pytest.mark.parametrize("kind", ["constant", "adaptive", "constant, traced times"])
def test_empty_interval_returns_y0(kind):
    saveat = ak.SaveAt(t0=True, ts=[1.0, 1.0], t1=True, dense=True)
    sol = _solve_empty_interval(kind, saveat)
    np.testing.assert_array_equal(sol.ts, [1.0, 1.0, 1.0, 1.0])
    # Nothing is integrated, so y0 comes back bit for bit.
    np.testing.assert_array_equal(sol.ys, np.broadcast_to(Y2, (4, 2)))
    np.testing.assert_array_equal(sol.evaluate(1.0), Y2)
    assert sol.result == ak.RESULTS.successful
    assert stats(sol)["num_steps"] == 0


@pytest.mark.parametrize("kind", ["constant", "adaptive"])
def test_backward_in_time_matches_exact_solution(kind):
    ts = [4.0, 2.5, 1.0]  # descending: ordered in the direction of integration
    saveat = ak.SaveAt(t0=True, ts=ts, t1=True, dense=True)
    if kind == "constant":
        sol = ak.solve(
            linear_field, ak.RK4(), 5.0, 0.0, Y0, M, dt0=-0.05, saveat=saveat
        )
        # RK4 on y' = M y: local error ~ (h |lambda|)^5 / 120 |y| = 0.1^5 / 120 ~ 1e-7
        # per step, 100 steps, growth e^{0.5} backward: ~ 1.4e-5; allow 2x.
        atol = 3e-5
    else:
        sol = ak.solve(
            linear_field,
            ak.Dopri5(),
            5.0,
            0.0,
            Y0,
            M,
            controller=PID,
            saveat=saveat,
            max_steps=256,
        )
        # Global error ~ T L sqrt(d) (1 + |y|) tol = 5 * 2 * 1.4 * 2.9 * 1e-8 (see
        # test_adaptive.KnownSolution).
        atol = 4e-7
    assert sol.result == ak.RESULTS.successful
    np.testing.assert_array_equal(sol.ts, [5.0, *ts, 0.0])  # in the user's time
    expected = linear_exact(M2, Y2, 5.0, [5.0, *ts, 0.0])
    np.testing.assert_allclose(sol.ys, expected, rtol=0, atol=atol)
    # Dense output is in the user's time too; same error budget (the continuous
    # extensions are of order >= 4, as accurate as the steps here).
    t_query = jnp.array([3.3, 0.7])
    np.testing.assert_allclose(
        sol.evaluate(t_query), linear_exact(M2, Y2, 5.0, [3.3, 0.7]), atol=atol
    )


def test_backward_adaptive_steps_descend_in_time():
    sol = ak.solve(
        linear_field,
        ak.Tsit5(),
        5.0,
        0.0,
        Y0,
        M,
        controller=ak.PIDController(rtol=1e-5, atol=1e-5),
        saveat=ak.SaveAt(steps=True),
        max_steps=64,
    )
    n = stats(sol)["num_accepted_steps"]
    step_ts = np.asarray(sol.ts[:n])
    assert np.all(np.diff(np.concatenate([[5.0], step_ts])) < 0)
    assert step_ts[-1] == 0.0


# ---------------------------------------------------------------------------
# SaveAt
# ---------------------------------------------------------------------------


def test_saveat_everything_in_documented_order():
    # 4 equal steps of 0.25 on [0, 1]: order is t0, ts, steps, t1.
    sol = ak.solve(
        linear_field,
        ak.RK4(),
        0.0,
        1.0,
        Y0,
        M,
        dt0=0.25,
        saveat=ak.SaveAt(t0=True, ts=[0.1, 0.6], steps=True, t1=True),
    )
    expected_ts = [0.0, 0.1, 0.6, 0.25, 0.5, 0.75, 1.0, 1.0]
    np.testing.assert_allclose(sol.ts, expected_ts, rtol=0, atol=1e-15)
    assert sol.ys.shape == (8, 2)
    # RK4 with h |lambda| = 0.5: ~ 0.5^5 / 120 |y| ~ 3e-4 per step, 4 steps ~ 1.2e-3;
    # the cubic Hermite values at ts are of the same order. Allow 2x.
    np.testing.assert_allclose(
        sol.ys, linear_exact(M2, Y2, 0.0, expected_ts), rtol=0, atol=2.5e-3
    )
    np.testing.assert_array_equal(sol.ys[0], Y2)  # t0 is y0 itself
    np.testing.assert_array_equal(sol.ys[-1], sol.ys[-2])  # last step ends at t1


@pytest.mark.parametrize(
    "saveat, expected_ts",
    [
        (ak.SaveAt(), [1.0]),  # nothing asked for: t1
        (ak.SaveAt(t0=True), [0.0]),
        (ak.SaveAt(t1=True), [1.0]),
        (ak.SaveAt(t0=True, t1=True), [0.0, 1.0]),
        (ak.SaveAt(ts=jnp.array([0.0, 0.3, 1.0])), [0.0, 0.3, 1.0]),
        (ak.SaveAt(steps=True), [0.5, 1.0]),
        (ak.SaveAt(ts=[0.2], steps=True), [0.2, 0.5, 1.0]),
        (ak.SaveAt(t0=True, steps=True, t1=True), [0.0, 0.5, 1.0, 1.0]),
    ],
)
def test_saveat_shapes_and_times(saveat, expected_ts):
    y0 = {"a": jnp.ones(()), "b": jnp.ones((3, 2))}
    rates = {"a": 1.0, "b": 2.0}
    sol = ak.solve(decay, ak.Euler(), 0.0, 1.0, y0, rates, dt0=0.5, saveat=saveat)
    n = len(expected_ts)
    np.testing.assert_allclose(sol.ts, expected_ts, rtol=0, atol=1e-15)
    assert sol.ys["a"].shape == (n,)
    assert sol.ys["b"].shape == (n, 3, 2)
    assert sol.dense is None


def test_saveat_dense_only():
    sol = ak.solve(
        linear_field,
        ak.Tsit5(),
        0.0,
        2.0,
        Y0,
        M,
        controller=PID,
        saveat=ak.SaveAt(dense=True),
        max_steps=128,
    )
    assert sol.ts is None and sol.ys is None
    times = jnp.array([[0.0, 0.37], [1.5, 2.0]])
    values = sol.evaluate(times)
    assert values.shape == (2, 2, 2)  # (*times.shape, *y0.shape)
    # Tsit5's continuous extension is 4th order, like its error estimate: same
    # budget as the steps, T L sqrt(d) (1 + |y|) tol = 2 * 2 * 1.4 * 2.1 * 1e-8.
    expected = linear_exact(M2, Y2, 0.0, np.ravel(times)).reshape(2, 2, 2)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1.5e-7)


def test_adaptive_saveat_steps_pads_with_inf_to_max_steps():
    max_steps = 64
    sol = ak.solve(
        linear_field,
        ak.Tsit5(),
        0.0,
        2.0,
        Y0,
        M,
        controller=ak.PIDController(rtol=1e-5, atol=1e-5),
        saveat=ak.SaveAt(steps=True),
        max_steps=max_steps,
    )
    assert sol.ts.shape == (max_steps,)
    assert sol.ys.shape == (max_steps, 2)
    n = stats(sol)["num_accepted_steps"]
    assert 0 < n < max_steps
    assert np.all(np.diff(sol.ts[:n]) > 0)
    assert sol.ts[n - 1] == 2.0
    assert np.all(np.isinf(sol.ts[n:])) and np.all(sol.ts[n:] > 0)
    assert np.all(np.isinf(sol.ys[n:]))
    # Values at the steps are the solution there, to the adaptive budget
    # (T L sqrt(d) (1 + |y|) tol = 2 * 2 * 1.4 * 2.1 * 1e-5).
    np.testing.assert_allclose(
        sol.ys[:n], linear_exact(M2, Y2, 0.0, sol.ts[:n]), rtol=0, atol=1.5e-4
    )


# ---------------------------------------------------------------------------
# Pytrees: states, args, and f as an equinox Module
# ---------------------------------------------------------------------------

PYTREE_Y0 = {
    "scalar": jnp.asarray(1.0),
    "vector": jnp.array([1.0, -2.0, 0.5]),
    "pair": (jnp.ones((2, 2)), jnp.array([3.0])),
}
PYTREE_RATES = {
    "scalar": jnp.asarray(0.5),
    "vector": jnp.array([1.0, 2.0, 3.0]),
    "pair": (jnp.array([[0.1, 0.2], [0.3, 0.4]]), jnp.array([1.5])),
}


@pytest.mark.parametrize("kind", ["constant", "adaptive"])
def test_pytree_state_and_args(kind):
    if kind == "constant":
        # Values at ts come from the recorded dense output, leaf by leaf.
        times = (0.5, 1.0)
        sol = ak.solve(
            decay,
            ak.RK4(),
            0.0,
            1.0,
            PYTREE_Y0,
            PYTREE_RATES,
            dt0=0.01,
            saveat=ak.SaveAt(ts=list(times)),
        )
        # RK4, h k <= 0.03: local error (h k)^5 / 120 |y| ~ 2e-10 |y| per step, x 100
        # steps, |y| <= 0.5 for the fastest-decaying leaf: ~ 1e-8.
        atol = 1e-8
    else:
        times = (0.0, 1.0)
        sol = ak.solve(
            decay,
            ak.Dopri5(),
            0.0,
            1.0,
            PYTREE_Y0,
            PYTREE_RATES,
            controller=PID,
            saveat=ak.SaveAt(t0=True, t1=True),
            max_steps=128,
        )
        # Adaptive budget: T L sqrt(d) (1 + |y|) tol = 1 * 3 * sqrt(9) * 4 * 1e-8.
        atol = 4e-7
    assert jtu.tree_structure(sol.ys) == jtu.tree_structure(PYTREE_Y0)
    assert sol.ys["pair"][0].shape == (2, 2, 2)
    assert sol.ys["pair"][1].shape == (2, 1)
    assert sol.ys["scalar"].shape == (2,)
    expected = jtu.tree_map(
        lambda *leaves: np.stack(leaves),
        *(decay_exact(PYTREE_Y0, PYTREE_RATES, t) for t in times),
    )
    assert_tree_close(sol.ys, expected, atol=atol)


class Decay(eqx.Module):
    """A vector field with its own parameters: y' = -rate * scale * y."""

    rate: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * args["scale"] * y


def test_module_vector_field_with_parameters():
    field = Decay(rate=jnp.array([0.5, 2.0]))
    args = {"scale": jnp.asarray(1.5)}
    y0 = jnp.array([1.0, -1.0])
    t1 = 2.0

    def final_value(field):
        sol = ak.solve(field, ak.RK4(), 0.0, t1, y0, args, dt0=0.01)
        return sol.ys[0]

    # RK4, h * rate * scale <= 0.03: local error (h k)^5 / 120 |y| ~ 2e-10 |y| per
    # step, x 200 steps, |y| <= 1: ~ 4e-8.
    exact = y0 * np.exp(-np.array([0.5, 2.0]) * 1.5 * t1)
    np.testing.assert_allclose(final_value(field), exact, rtol=0, atol=4e-8)
    # The module's parameters are differentiable like args:
    # d y_i(t1) / d rate_i = -scale * t1 * y_i(t1). The derivative of the RK4
    # solution converges at the same order: same budget, scaled by scale * t1 = 3.
    grads = eqx.filter_grad(lambda m: jnp.sum(final_value(m)))(field)
    np.testing.assert_allclose(grads.rate, -1.5 * t1 * exact, rtol=0, atol=1.2e-7)


def test_module_vector_field_under_jit_and_grad():
    """A module `f` whose parameters are traced, under `jit` and `grad`: once a
    TracerBoolConversionError on JAX 0.4.30, whose trace cache compared `f` with
    `==` (an array, for a module of tracers)."""
    args = {"scale": jnp.asarray(1.5)}
    y0 = jnp.array([1.0, -1.0])

    def loss(field):
        sol = ak.solve(field, ak.Tsit5(), 0.0, 1.0, y0, args, dt0=0.1)
        return jnp.sum(sol.ys[-1] ** 2)

    field = Decay(rate=jnp.array([0.5, 2.0]))
    grad = eqx.filter_grad(loss)
    jitted = eqx.filter_jit(grad)
    expected = grad(field).rate
    np.testing.assert_allclose(jitted(field).rate, expected, rtol=1e-12)
    np.testing.assert_allclose(jitted(field).rate, expected, rtol=1e-12)  # cached


# ---------------------------------------------------------------------------
# Transformations: jit, vmap
# ---------------------------------------------------------------------------


def _solve_linear(y0, m, controller=None, dt0=None, saveat=None):
    return ak.solve(
        linear_field,
        ak.Tsit5(),
        0.0,
        2.0,
        y0,
        m,
        dt0=dt0,
        controller=controller,
        saveat=saveat,
        max_steps=64,
    )


@pytest.mark.parametrize("kind", ["constant", "adaptive"])
def test_jit_matches_eager(kind):
    kwargs = (
        dict(dt0=0.1)
        if kind == "constant"
        else dict(controller=ak.PIDController(rtol=1e-6, atol=1e-6))
    )
    saveat = ak.SaveAt(ts=[0.5, 1.5], t1=True)
    eager = _solve_linear(Y0, M, saveat=saveat, **kwargs)
    jitted = jax.jit(lambda y0, m: _solve_linear(y0, m, saveat=saveat, **kwargs))(Y0, M)
    # Same operations, compiled together: agreement to rounding (~1e-16 per op over
    # ~100 ops), not to the solver's tolerance.
    np.testing.assert_allclose(jitted.ys, eager.ys, rtol=1e-13, atol=1e-14)
    assert stats(jitted) == stats(eager)


def test_vmap_over_y0():
    y0s = jnp.array([[1.0, 0.5], [-1.0, 2.0], [0.0, 0.1]])
    for kwargs in (dict(dt0=0.1), dict(controller=ak.PIDController(1e-6, 1e-6))):
        batched = jax.jit(jax.vmap(lambda y0, kw=kwargs: _solve_linear(y0, M, **kw)))(
            y0s
        )
        assert batched.ys.shape == (3, 1, 2)
        single = jax.jit(lambda y0, kw=kwargs: _solve_linear(y0, M, **kw))
        for i, y0 in enumerate(y0s):
            ref = single(y0)
            # Same arithmetic per batch element: agreement to rounding.
            np.testing.assert_allclose(batched.ys[i], ref.ys, rtol=1e-12, atol=1e-14)
            assert int(batched.stats["num_steps"][i]) == stats(ref)["num_steps"]


def test_vmap_over_args_adaptive_takes_per_element_steps():
    # Decay rates 0.1 to 3: faster dynamics need more steps, per batch element.
    decays = jnp.array([0.1, 1.0, 3.0])
    ms = jax.vmap(lambda d: M - (d - 0.1) * jnp.eye(2))(decays)
    controller = ak.PIDController(rtol=1e-6, atol=1e-6)
    batched = jax.jit(jax.vmap(lambda m: _solve_linear(Y0, m, controller=controller)))(
        ms
    )
    single = jax.jit(lambda m: _solve_linear(Y0, m, controller=controller))
    num_steps = [int(n) for n in batched.stats["num_steps"]]
    assert len(set(num_steps)) > 1  # the elements did not share one step sequence
    for i, m in enumerate(ms):
        ref = single(m)
        np.testing.assert_allclose(batched.ys[i], ref.ys, rtol=1e-12, atol=1e-14)
        assert num_steps[i] == stats(ref)["num_steps"]
        # ... and each is the exact solution to the adaptive budget
        # (T L sqrt(d) (1 + |y|) tol = 2 * 3.6 * 1.4 * 2.1 * 1e-6).
        np.testing.assert_allclose(
            batched.ys[i, 0],
            linear_exact(np.asarray(m), Y2, 0.0, 2.0)[0],
            rtol=0,
            atol=2.2e-5,
        )


# ---------------------------------------------------------------------------
# Dtypes and the types of times
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["constant", "adaptive"])
@pytest.mark.parametrize("times", ["python floats", "float32 arrays"])
def test_float32_in_float32_out(kind, times):
    y0 = jnp.asarray(Y2, dtype=jnp.float32)
    m = jnp.asarray(M2, dtype=jnp.float32)
    as_time = (lambda x: x) if times == "python floats" else jnp.float32
    kwargs = (
        dict(dt0=as_time(0.05))
        if kind == "constant"
        else dict(controller=ak.PIDController(rtol=1e-5, atol=1e-5))
    )
    sol = ak.solve(
        linear_field,
        ak.Tsit5(),
        as_time(0.0),
        as_time(2.0),
        y0,
        m,
        saveat=ak.SaveAt(t0=True, ts=[1.0], steps=True, t1=True, dense=True),
        max_steps=64,
        **kwargs,
    )
    assert sol.ys.dtype == jnp.float32
    assert sol.ts.dtype == jnp.float32
    assert sol.evaluate(0.5).dtype == jnp.float32
    # float32 rounding: eps ~ 1.2e-7 per operation, ~ 40 steps of ~ 10 ops on O(1)
    # values -> ~ 5e-5 at worst; the adaptive solve's own budget is
    # T L sqrt(d) (1 + |y|) tol = 2 * 2 * 1.4 * 2.1 * 1e-5 ~ 1.2e-4.
    np.testing.assert_allclose(
        sol.ys[-1], linear_exact(M2, Y2, 0.0, 2.0)[0], rtol=0, atol=1.5e-4
    )


def test_array_times_equal_python_floats():
    as_floats = ak.solve(
        linear_field, ak.RK4(), 0.0, 1.0, Y0, M, dt0=0.1, saveat=ak.SaveAt(steps=True)
    )
    as_arrays = ak.solve(
        linear_field,
        ak.RK4(),
        jnp.asarray(0.0),
        jnp.asarray(1.0),
        Y0,
        M,
        dt0=jnp.asarray(0.1),
        saveat=ak.SaveAt(steps=True),
    )
    # Same dtype (float64), same grid, same operations: bit-identical.
    np.testing.assert_array_equal(as_arrays.ts, as_floats.ts)
    np.testing.assert_array_equal(as_arrays.ys, as_floats.ys)


@pytest.mark.parametrize("t0, t1, dt0", [(0.0, 1.0, 0.1), (1.0, -0.5, -0.2)])
def test_traced_times_match_the_scan_path(t0, t1, dt0):
    # Concrete times: a lax.scan of exactly N steps. Times traced under jit: the
    # loop bounded by max_steps (for backward solves, with a traced direction).
    n = int(np.ceil(round((t1 - t0) / dt0, 12)))
    saveat = ak.SaveAt(t0=True, steps=True, t1=True)

    def run(t0, t1):
        return ak.solve(
            linear_field, ak.RK4(), t0, t1, Y0, M, dt0=dt0, saveat=saveat, max_steps=32
        )

    scan = run(t0, t1)
    loop = jax.jit(run)(t0, t1)
    assert stats(scan) == stats(loop)
    assert stats(scan)["num_steps"] == n
    # The loop's step buffer has max_steps rows (unused: +-inf); the first N agree.
    rows = 1 + n  # t0, then the N steps
    # Same grid (computed as fractions of t1 - t0 either way) and the same steps:
    # agreement to rounding.
    np.testing.assert_allclose(loop.ts[:rows], scan.ts[:rows], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(loop.ys[:rows], scan.ys[:rows], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(loop.ys[-1], scan.ys[-1], rtol=1e-13, atol=1e-14)
    assert not np.any(np.isfinite(loop.ts[rows:-1]))


# ---------------------------------------------------------------------------
# Statistics of constant-step solves
# ---------------------------------------------------------------------------

# f evaluations per step of the constant-step methods: s stages, not FSAL, plus
# f(t1, y1) carried to the next step as its first stage -> s evaluations.
CONSTANT_SOLVERS = [(ak.Euler, 1), (ak.Midpoint, 2), (ak.Ralston, 2), (ak.RK4, 4)]


@pytest.mark.parametrize(
    "t1, dt0, n",
    [
        (1.0, 0.3, 4),  # ceil(3.33): the steps shrink to 0.25 to end at t1
        (1.0, 0.1, 10),  # 1 / 0.1 is 10 up to rounding: no sliver step
        (1.0, 0.25, 4),
        (2.0, 0.7, 3),
    ],
)
def test_constant_step_count_is_ceil_of_interval_over_dt0(t1, dt0, n):
    sol = ak.solve(
        linear_field, ak.RK4(), 0.0, t1, Y0, M, dt0=dt0, saveat=ak.SaveAt(steps=True)
    )
    assert stats(sol) == {
        "num_steps": n,
        "num_accepted_steps": n,
        "num_rejected_steps": 0,
        "num_f_evals": 1 + n * 4,
    }
    # N equal steps ending exactly at t1.
    np.testing.assert_allclose(sol.ts, t1 * np.arange(1, n + 1) / n, rtol=0, atol=1e-15)
    assert sol.ts[-1] == t1


@pytest.mark.parametrize(
    "solver, evals", CONSTANT_SOLVERS, ids=[s.__name__ for s, _ in CONSTANT_SOLVERS]
)
def test_constant_step_f_evals(solver, evals):
    sol = ak.solve(linear_field, solver(), 0.0, 1.0, Y0, M, dt0=0.3)
    assert stats(sol) == {
        "num_steps": 4,
        "num_accepted_steps": 4,
        "num_rejected_steps": 0,
        "num_f_evals": 1 + 4 * evals,
    }


def test_constant_steps_with_an_error_estimate_never_reject():
    # Heun has an error estimate, but ConstantStepSize ignores it.
    sol = ak.solve(linear_field, ak.Heun(), 0.0, 5.0, Y0, M, dt0=1.0)
    assert stats(sol) == {
        "num_steps": 5,
        "num_accepted_steps": 5,
        "num_rejected_steps": 0,
        "num_f_evals": 1 + 5 * 2,
    }
