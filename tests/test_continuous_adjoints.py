"""Continuous adjoints: `BacksolveAdjoint`, `InterpolatedAdjoint`, `QuadratureAdjoint`.

They approximate the gradient of the *continuous* problem to the accuracy of the
forward and backward solves. Specifications:

1. Against DirectAdjoint on an accurate discretisation (Dopri8, 200 steps: the
   exact continuous gradient to ~1e-14), the relative error is at most C·rtol,
   C = 50: the forward and backward global errors are each about
   T·L·sqrt(d)·(1 + |y|)·tol <= 5·tol here (T = 1, L ~ 1.5, d = 3, |y| ~ 1), and
   the loss touches both through O(1) weights; 50 leaves a factor 5 of margin.
   Hermite interpolation adds its own error, O(h⁴) with h ~ tol^(1/5) for
   Tsit5's steps: C·tol^(4/5).
2. On y' = M y they give the matrix exponential's Fréchet derivative.
3. They agree with Diffrax's BacksolveAdjoint (both continuous, to C·rtol).
4. The t0, t1 and ts cotangents obey the formulas of the adjoint method.
5. The seminorm saves backward steps at equal accuracy.
6. Memory: Backsolve flat in N, Interpolated linear in N, with EveryKSteps(k)
   like k + N/k.
7. jit, vmap, float32, integration backward in time; clear errors for what
   cannot be differentiated.
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import adjointkit as ak
from helpers import (
    A3,
    BIG,
    M2,
    Y2,
    Y3,
    crossed,
    gradient_temp_mib,
    rel_err,
    tanh_field,
)


RTOL = 1e-10
C = 50
TS = jnp.array([0.0, 0.123, 0.5, 0.5, 0.8642, 1.0])
W = jnp.linspace(-1.0, 1.0, 18).reshape(6, 3)

ADJOINTS = {
    "backsolve": ak.BacksolveAdjoint(),
    "interpolated-dense": ak.InterpolatedAdjoint(ak.DenseInterpolation()),
    "interpolated-dense-every-3": ak.InterpolatedAdjoint(
        ak.DenseInterpolation(), checkpoints=ak.EveryKSteps(3)
    ),
    "quadrature-dense": ak.QuadratureAdjoint(ak.DenseInterpolation()),
}
HERMITE = {
    "interpolated-hermite": ak.InterpolatedAdjoint(),
    "quadrature-hermite-every-4": ak.QuadratureAdjoint(checkpoints=ak.EveryKSteps(4)),
}


def _loss(adjoint, controller, dt0, solver, y0, args, t0, t1, ts):
    sol = ak.solve(
        tanh_field, solver, t0, t1, y0, args, dt0=dt0, controller=controller,
        saveat=ak.SaveAt(ts=ts, t1=True), adjoint=adjoint, max_steps=512,
    )  # fmt: skip
    return jnp.sum(W * sol.ys[:6]) + jnp.sum(jnp.sin(sol.ys[-1]))


@functools.cache  # shared by the tests of one adjoint in a process
def _grads(adjoint, backward=False, rtol=RTOL):
    if adjoint is None:  # the reference: Dopri8, 200 steps, differentiated exactly
        loss = functools.partial(_loss, ak.DirectAdjoint(), None, None, ak.Dopri8())
        loss = functools.partial(_fixed_steps, loss)
    else:
        controller = ak.PIDController(rtol=rtol, atol=rtol)
        loss = functools.partial(_loss, adjoint, controller, None, ak.Tsit5())
    t0, t1 = (1.0, 0.0) if backward else (0.0, 1.0)
    ts = TS[::-1] if backward else TS
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return grad(jnp.asarray(Y3), {"A": jnp.asarray(A3)}, t0, t1, ts)


def _fixed_steps(loss, y0, args, t0, t1, ts):
    return loss.func(
        *loss.args[:2], (t1 - t0) / 200, loss.args[3], y0, args, t0, t1, ts
    )


@functools.cache
def _reference(backward):
    return _grads(None, backward)


@pytest.mark.parametrize(
    ("name", "backward"),
    crossed(
        list(ADJOINTS),
        {"forward": False, "backward": True},
        # Backward in time on demand: test_property's backsolve-constant and
        # quadrature-adaptive draw it (half their examples) against DirectAdjoint
        # by default. Interpolation with every step kept: its EveryKSteps(3)
        # case rebuilds the same interpolation, and the Hermite one runs below.
        slow={
            ("backsolve", "backward"),
            ("interpolated-dense", "forward"),
            ("interpolated-dense", "backward"),
            ("interpolated-dense-every-3", "backward"),
            ("quadrature-dense", "backward"),
        },
    ),
)
def test_matches_the_continuous_gradient_to_the_tolerance(name, backward):
    got = _grads(ADJOINTS[name], backward)
    for g, e in zip(got, _reference(backward), strict=True):
        assert rel_err(g, e) < C * RTOL


@pytest.mark.parametrize(
    # The quadrature shares the interpolation: its case on demand.
    "name",
    [
        "interpolated-hermite",
        pytest.param("quadrature-hermite-every-4", marks=pytest.mark.slow),
    ],
)
def test_hermite_interpolation_adds_its_own_error(name):
    got = _grads(HERMITE[name])
    for g, e in zip(got, _reference(False), strict=True):
        assert rel_err(g, e) < C * RTOL ** (4 / 5)


@pytest.mark.parametrize(
    "adjoint",
    [
        ak.BacksolveAdjoint(),
        # The other two meet the continuous gradient by default in
        # test_matches_the_continuous_gradient_to_the_tolerance: on demand here.
        pytest.param(
            ak.InterpolatedAdjoint(ak.DenseInterpolation()), marks=pytest.mark.slow
        ),
        pytest.param(
            ak.QuadratureAdjoint(ak.DenseInterpolation()), marks=pytest.mark.slow
        ),
    ],
    ids=["backsolve", "interpolated", "quadrature"],
)
def test_linear_ode_gives_the_frechet_derivative(adjoint):
    """L = c·y(T) for y' = M y: dL/dM_ij = c·expm_frechet(M T, E_ij T) y0."""
    T, c = 1.3, np.array([0.7, -1.1])

    def loss(m):
        sol = ak.solve(
            lambda t, y, m: m @ y, ak.Tsit5(), 0.0, T, jnp.asarray(Y2), m,
            controller=ak.PIDController(rtol=RTOL, atol=RTOL), adjoint=adjoint,
        )  # fmt: skip
        return jnp.dot(jnp.asarray(c), sol.ys[-1])

    got = jax.jit(jax.grad(loss))(jnp.asarray(M2))
    expected = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            e = np.zeros((2, 2))
            e[i, j] = 1.0
            _, frechet = scipy.linalg.expm_frechet(M2 * T, e * T)
            expected[i, j] = c @ frechet @ Y2
    assert rel_err(got, expected) < C * RTOL


def test_agrees_with_diffrax_backsolve():
    """Diffrax: BacksolveAdjoint(solver=Tsit5(), stepsize_controller=
    PIDController(rtol=1e-10, atol=1e-10)), Tsit5 forward with the same
    controller, SaveAt(ts=..., t1=True), float64. Both approximate the continuous
    gradient, so they agree to C·rtol, not to rounding."""
    ts = TS[1:-1]
    w = W[1:5]

    def dfx_loss(y0, args):
        controller = diffrax.PIDController(rtol=RTOL, atol=RTOL)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(tanh_field), diffrax.Tsit5(), 0.0, 1.0, None, y0, args,
            saveat=diffrax.SaveAt(ts=ts, t1=True), stepsize_controller=controller,
            adjoint=diffrax.BacksolveAdjoint(
                solver=diffrax.Tsit5(), stepsize_controller=controller
            ),
        )  # fmt: skip
        return jnp.sum(w * sol.ys[:4]) + jnp.sum(jnp.sin(sol.ys[-1]))

    def ak_loss(y0, args):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, y0, args,
            saveat=ak.SaveAt(ts=ts, t1=True), adjoint=ak.BacksolveAdjoint(),
            controller=ak.PIDController(rtol=RTOL, atol=RTOL),
        )  # fmt: skip
        return jnp.sum(w * sol.ys[:4]) + jnp.sum(jnp.sin(sol.ys[-1]))

    inputs = (jnp.asarray(Y3), {"A": jnp.asarray(A3)})
    got = jax.jit(jax.grad(ak_loss, argnums=(0, 1)))(*inputs)
    expected = jax.jit(jax.grad(dfx_loss, argnums=(0, 1)))(*inputs)
    for g, e in zip(got, expected, strict=True):
        assert rel_err(g, e) < C * RTOL


@functools.cache
def _forward_at_ts():
    """The forward solve of `_grads`' adjoints, saving at TS and t1 (jitted: one
    compilation)."""
    return jax.jit(
        lambda y0, args: ak.solve(
            tanh_field,
            ak.Tsit5(),
            0.0,
            1.0,
            y0,
            args,
            controller=ak.PIDController(rtol=RTOL, atol=RTOL),
            saveat=ak.SaveAt(ts=TS, t1=True),
        )  # fmt: skip
    )(jnp.asarray(Y3), {"A": jnp.asarray(A3)})


@pytest.mark.parametrize("name", ["backsolve", "quadrature-dense"])
def test_time_cotangents_follow_the_adjoint_formulas(name):
    """dL/dt1 = <dL/dy(t1), f(t1, y(t1))>, dL/dt0 = -<a(t0), f(t0, y0)> with
    a(t0) = dL/dy0, and dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>."""
    y0, args = jnp.asarray(Y3), {"A": jnp.asarray(A3)}
    # The gradients of test_matches_the_continuous_gradient_to_the_tolerance.
    g_y0, _, g_t0, g_t1, g_ts = _grads(ADJOINTS[name], False)
    sol = _forward_at_ts()
    y1 = sol.ys[-1]
    assert g_t1 == pytest.approx(
        float(jnp.dot(jnp.cos(y1), tanh_field(1.0, y1, args))), rel=1e-12
    )
    assert g_t0 == pytest.approx(
        -float(jnp.dot(g_y0, tanh_field(0.0, y0, args))), rel=1e-12
    )
    # A repeated save time (0.5 twice) gets each of its own terms.
    # (t_5 = t1 is a save time too: there the final value's term goes to dL/dt1.)
    for i, t in enumerate(TS):
        expected = float(jnp.dot(W[i], tanh_field(t, sol.ys[i], args)))
        # Both forms use the forward values: agreement to rounding (and to the
        # forward solve's tolerance, where y(t_i) is interpolated): C·rtol.
        assert g_ts[i] == pytest.approx(expected, rel=C * RTOL, abs=C * RTOL)


K = 50


def _forced(freqs):
    """y' = -y/2 + tanh(w · sin(freqs t)): 150 parameters, the adjoint smooth."""

    def field(t, y, w):
        return -0.5 * y + jnp.tanh(w @ jnp.sin(freqs * t))

    return field


def _forced_grad(field, adjoint, tol=None, dt0=None, solver=None):
    solver = ak.Tsit5() if solver is None else solver
    controller = None if tol is None else ak.PIDController(rtol=tol, atol=tol)

    def loss(w):
        sol = ak.solve(
            field, solver, 0.0, 10.0, jnp.ones(3), w, dt0=dt0, controller=controller,
            adjoint=adjoint, max_steps=20000,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    w0 = jax.random.normal(jax.random.PRNGKey(0), (3, K)) / K * 5
    with ak.collect_backward_stats() as stats:
        grad = jax.jit(jax.grad(loss))(w0)
    return grad, (int(stats[-1]["num_steps"]) if stats else None)


@pytest.mark.slow  # test_seminorm_can_miss_a_fast_parameter_integrand runs by default
def test_seminorm_saves_backward_steps_at_equal_accuracy():
    """Where df/dθ varies no faster than the adjoint (frequencies <= 1), leaving the
    150 parameter components out of the error norm saves backward steps, and both
    gradients stay within C·tol of the continuous one."""
    field, tol = _forced(jnp.linspace(0.1, 1.0, K)), 1e-8
    exact, _ = _forced_grad(
        field, ak.CheckpointedAdjoint(), dt0=0.005, solver=ak.Dopri8()
    )
    semi, n_semi = _forced_grad(field, ak.InterpolatedAdjoint(seminorm=True), tol)
    full, n_full = _forced_grad(field, ak.InterpolatedAdjoint(seminorm=False), tol)
    assert n_semi < n_full, (n_semi, n_full)
    assert rel_err(semi, exact) < C * tol
    assert rel_err(full, exact) < C * tol


@pytest.mark.slow  # documents a pitfall of the seminorm, not a feature
def test_seminorm_can_miss_a_fast_parameter_integrand():
    """Why the seminorm is off by default: with df/dθ oscillating up to frequency
    50 while the adjoint stays smooth, steps chosen for `a` alone (24 of them)
    integrate a^T df/dθ with a wrong result (observed 200% off); the full norm
    controls it (observed 2e-6)."""
    field, tol = _forced(jnp.arange(1.0, K + 1)), 1e-8
    exact, _ = _forced_grad(
        field, ak.CheckpointedAdjoint(), dt0=0.0025, solver=ak.Dopri8()
    )
    semi, _ = _forced_grad(field, ak.InterpolatedAdjoint(seminorm=True), tol)
    full, _ = _forced_grad(field, ak.InterpolatedAdjoint(), tol)
    assert rel_err(semi, exact) > 0.1
    assert rel_err(full, exact) < 1e-4


def test_quadrature_controls_the_error_of_its_integral():
    """With df/dθ oscillating up to frequency 50 while the adjoint stays smooth,
    the backward steps that suit `a` are far too long for ∫ a^T df/dθ: the
    quadrature's own error estimate must shorten them."""
    field, tol = _forced(jnp.arange(1.0, K + 1)), 1e-8
    exact, _ = _forced_grad(
        field, ak.CheckpointedAdjoint(), dt0=0.0025, solver=ak.Dopri8()
    )
    got, steps = _forced_grad(field, ak.QuadratureAdjoint(), tol)
    # Frequency 50 over 10 time units: ~80 oscillations, each needing a few steps.
    assert steps > 100
    assert rel_err(got, exact) < C * tol


def test_seminorm_is_off_by_default():
    assert ak.BacksolveAdjoint().seminorm is False
    assert ak.InterpolatedAdjoint().seminorm is False


# --- memory ----------------------------------------------------------------------


def test_backsolve_memory_is_flat_in_the_number_of_steps():
    small, large = (gradient_temp_mib(ak.BacksolveAdjoint(), n) for n in (500, 4000))
    assert large <= 1.25 * small, (small, large)


def test_interpolated_memory_grows_linearly():
    adjoint = ak.InterpolatedAdjoint()  # Hermite: y and f per grid point
    m100, m400 = (gradient_temp_mib(adjoint, n) for n in (100, 400))
    kept_point = 2 * 4 * BIG * 8 / 2**20  # two (4, 256) float64 arrays
    assert (m400 - m100) / 300 == pytest.approx(kept_point, rel=0.05)


def test_interpolated_with_checkpoints_memory_is_k_plus_n_over_k():
    n = 400
    mem = {
        k: gradient_temp_mib(ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(k)), n)
        for k in (5, 20, 80)
    }
    # N/k kept states plus k interpolation points while one segment is rebuilt.
    assert mem[20] < mem[5] and mem[20] < mem[80]


# --- transformations and errors ----------------------------------------------------


def test_vmap_gives_per_example_gradients():
    adjoint = ak.InterpolatedAdjoint()

    def loss(y0):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, y0, {"A": jnp.asarray(A3)},
            controller=ak.PIDController(rtol=1e-8, atol=1e-8), adjoint=adjoint,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    y0s = jnp.asarray(Y3) * jnp.array([[1.0], [0.5], [-2.0]])
    batched = jax.jit(jax.vmap(jax.grad(loss)))(y0s)
    single = jax.jit(jax.grad(loss))
    for i in range(3):
        assert rel_err(batched[i], single(y0s[i])) < 1e-12


@pytest.mark.slow  # float32 runs in the default suite for the discrete adjoints
def test_float32_gradients_approximate_float64():
    def grad(dtype):
        def loss(a):
            sol = ak.solve(
                tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3, dtype), {"A": a},
                dt0=jnp.asarray(0.05, dtype), adjoint=ak.QuadratureAdjoint(),
            )  # fmt: skip
            return jnp.sum(sol.ys[-1] ** 2)

        with jax.default_matmul_precision("float32"):
            return jax.jit(jax.grad(loss))(jnp.asarray(A3, dtype))

    g32, g64 = grad(jnp.float32), grad(jnp.float64)
    assert g32.dtype == jnp.float32
    # float32 rounding (6e-8) through 20 forward and 20 backward steps: ~1e-6.
    assert rel_err(g32, g64) < 1e-5


@pytest.mark.parametrize("save", [dict(steps=True), dict(dense=True)])
@pytest.mark.parametrize(
    "adjoint",
    [ak.BacksolveAdjoint(), ak.InterpolatedAdjoint(), ak.QuadratureAdjoint()],
    ids=repr,
)
def test_undifferentiable_saves_are_refused_at_trace_time(adjoint, save):
    with pytest.raises(ValueError, match="cannot differentiate SaveAt"):
        ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), {"A": jnp.asarray(A3)},
            dt0=0.1, saveat=ak.SaveAt(**save), adjoint=adjoint,
        )  # fmt: skip


def test_checkpoints_must_be_a_schedule():
    with pytest.raises(TypeError, match="checkpoint schedule"):
        ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), {"A": jnp.asarray(A3)},
            dt0=0.1, adjoint=ak.InterpolatedAdjoint(checkpoints=4),
        )  # fmt: skip


# --- adaptive steps: storage follows the steps taken, not max_steps -------------


def test_online_stretches_fit_the_rebuild_buffer():
    """With adaptive steps the forward pass keeps every s-th state in c slots,
    doubling s when they fill; the backward pass rebuilds the interpolation from
    a kept state into a buffer of `OnlinePlan.segment_capacity` steps. Every gap
    between kept states (and from the last one to the end) must fit that buffer, for
    every number of steps up to max_steps; and the buffer is no more than twice
    the longest gap can be (max_steps / c, rounded up)."""
    from adjointkit.checkpointing._plan import OnlinePlan, online_positions

    for slots in (2, 3, 7, 89):
        for max_steps in (1, 5, 64, 300):
            plan = OnlinePlan(outer_slots=slots, inner_slots=0)
            capacity = plan.segment_capacity(max_steps)
            assert capacity <= max(1, 2 * -(-max_steps // slots))
            for n in range(1, max_steps + 1):
                kept = online_positions(n, slots)
                assert max(np.diff(kept + [n])) <= capacity, (slots, max_steps, n)


def _adaptive_big_temp_mib(adjoint, max_steps) -> float:
    """XLA temp memory (MiB) of the compiled gradient of the (4, BIG) float64 solve
    of `gradient_temp_mib`, with PID control and `max_steps`."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(BIG, BIG)) / BIG)

    def loss(w):
        sol = ak.solve(
            lambda t, y, w: jnp.tanh(y @ w), ak.Tsit5(), 0.0, 1.0,
            jnp.ones((4, BIG)), w, controller=ak.PIDController(rtol=1e-6, atol=1e-6),
            adjoint=adjoint, max_steps=max_steps,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    compiled = jax.jit(jax.grad(loss)).lower(w).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


@pytest.mark.parametrize(
    # One storage path for both: the quadrature's run on demand.
    "name",
    [
        # A memory law, as benchmarks/adaptive.py reports it: on demand.
        pytest.param("interpolated", marks=pytest.mark.slow),
        pytest.param("quadrature", marks=pytest.mark.slow),
    ],
)
def test_adaptive_storage_grows_like_the_square_root_of_max_steps(name):
    """By default, with adaptive steps, the interpolating adjoints keep c states
    (c ~ sqrt(2 max_steps)) and rebuild at most `OnlinePlan.segment_capacity`
    (about max_steps / c) steps at a time: storage c·(state) + capacity·(Hermite
    point: y and f), about sqrt(max_steps). Keeping every step's data
    (`AllSteps()`) stores max_steps points. From max_steps 256 to 4096 the
    default's temp memory may grow by at most twice what that storage predicts;
    `AllSteps()`'s grows by at least 90% of its 3840 more points (so the test can
    tell them apart)."""
    from adjointkit.checkpointing import default_num_checkpoints
    from adjointkit.checkpointing._plan import OnlinePlan

    state_mib = 4 * BIG * 8 / 2**20
    point_mib = 2 * state_mib

    def storage(max_steps):
        c = default_num_checkpoints(max_steps)
        plan = OnlinePlan(outer_slots=c, inner_slots=0)
        return c * state_mib + plan.segment_capacity(max_steps) * point_mib

    make = ak.InterpolatedAdjoint if name == "interpolated" else ak.QuadratureAdjoint
    small, large = (_adaptive_big_temp_mib(make(), m) for m in (256, 4096))
    assert 0 < large - small < 2 * (storage(4096) - storage(256))
    all_small, all_large = (
        _adaptive_big_temp_mib(make(checkpoints=ak.AllSteps()), m) for m in (256, 4096)
    )
    assert all_large - all_small > 0.9 * (4096 - 256) * point_mib


@pytest.mark.parametrize(
    # The property test checks the default against DirectAdjoint on every run.
    "name",
    [
        pytest.param("interpolated", marks=pytest.mark.slow),
        pytest.param("quadrature", marks=pytest.mark.slow),
    ],
)
def test_adaptive_default_equals_every_step_kept(name):
    """When the steps taken fit one rebuilt stretch, the default's backward pass
    is the one of `AllSteps()` (every step's data kept): replays retrace the
    forward steps, so the gradients agree to rounding. With a few slots
    (`BinomialCheckpoints(3)`, max_steps 40: stretches of at most 16 steps) the
    backward solve restarts its step-size control at each stretch, and the
    gradient agrees to the tolerance (both approximate the continuous one to
    C·rtol, spec 1), across save times too."""
    make = ak.InterpolatedAdjoint if name == "interpolated" else ak.QuadratureAdjoint
    controller = ak.PIDController(rtol=1e-6, atol=1e-6)

    def grad(adjoint, max_steps):
        def loss(y0, A):
            sol = ak.solve(
                tanh_field, ak.Tsit5(), 0.0, 1.0, y0, {"A": A}, controller=controller,
                saveat=ak.SaveAt(ts=TS), adjoint=adjoint, max_steps=max_steps,
            )  # fmt: skip
            return jnp.sum(W * sol.ys)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(Y3), jnp.asarray(A3))

    every = grad(make(checkpoints=ak.AllSteps()), 6)
    assert rel_err(grad(make(), 512), every) < 1e-12
    few = grad(make(checkpoints=ak.BinomialCheckpoints(2)), 6)
    assert 0 < rel_err(few, every) < C * 1e-6


def test_invalid_quadrature_order():
    with pytest.raises(ValueError, match="quadrature_order"):
        ak.QuadratureAdjoint(quadrature_order=0)


def test_failed_backward_solve_raises():
    """A backward solve that cannot reach t0 within max_steps is an error, never a
    gradient."""
    adjoint = ak.BacksolveAdjoint(controller=ak.PIDController(rtol=1e-13, atol=1e-13))

    def loss(y0):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, y0, {"A": jnp.asarray(A3)},
            controller=ak.PIDController(rtol=1e-3, atol=1e-3), adjoint=adjoint,
            max_steps=16,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    with pytest.raises(Exception, match="backward"):
        jax.block_until_ready(jax.jit(jax.grad(loss))(jnp.asarray(Y3)))


def test_forward_mode_is_refused():
    def loss(y0):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, y0, {"A": jnp.asarray(A3)}, dt0=0.1,
            adjoint=ak.BacksolveAdjoint(),
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(loss, (jnp.asarray(Y3),), (jnp.ones(3),))


def test_float32_segment_replays_retrace_the_forward_steps():
    # With checkpoints, each segment's interpolation is rebuilt by replaying its
    # steps; they reuse the forward pass's recorded step-size decisions, so the
    # result equals that of the stored trajectory up to float32 rounding (a
    # replay that re-decided could take other steps near float32's resolution).
    from adjointkit import benchmarking as bench

    problem = bench.lotka_volterra(dtype=jnp.float32)

    def grad(checkpoints):
        adjoint = ak.InterpolatedAdjoint(checkpoints=checkpoints)
        loss = bench.adjointkit_loss(problem, adjoint, 1024, 1e-6)
        return jax.jit(jax.grad(lambda p: loss(p)[0]))(problem.params)

    assert rel_err(grad(ak.EveryKSteps(8)), grad(None)) < 1e-4


def _lotka_volterra(t, y, p):
    a, b, c, d = p
    return jnp.stack([a * y[0] - b * y[0] * y[1], c * y[0] * y[1] - d * y[1]])


LV_P = jnp.array([1.5, 1.0, 1.0, 3.0])
LV_CONTROLLER = ak.PIDController(rtol=1e-3, atol=1e-3)


def _lv_loss(adjoint, max_steps, throw=True):
    def loss(p):
        sol = ak.solve(
            _lotka_volterra, ak.Tsit5(), 0.0, 5.0, jnp.array([1.0, 1.0]), p,
            controller=LV_CONTROLLER, adjoint=adjoint, max_steps=max_steps,
            throw=throw,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    return loss


def test_backward_solve_has_a_budget_of_its_own():
    # The forward solve just fits its max_steps; Backsolve's backward solve, of
    # (y, a, a_θ), needs more steps (20 against 15 here). Fails on the old code,
    # which gave the backward solve the forward's max_steps.
    sol = ak.solve(
        _lotka_volterra, ak.Tsit5(), 0.0, 5.0, jnp.array([1.0, 1.0]), LV_P,
        controller=LV_CONTROLLER,
    )  # fmt: skip
    n = int(sol.stats["num_steps"])
    with ak.collect_backward_stats() as stats:
        grad = jax.block_until_ready(
            jax.jit(jax.grad(_lv_loss(ak.BacksolveAdjoint(), n)))(LV_P)
        )
    assert int(stats[0]["num_steps"]) > n  # it did need more than the forward's
    assert stats[0]["result"] == ak.RESULTS[ak.RESULTS.successful]
    reference = jax.jit(jax.grad(_lv_loss(ak.DirectAdjoint(), n)))(LV_P)
    # Both approximate the continuous gradient to about the tolerance, 1e-3; the
    # loss has O(1) weights and the interval is five time units: C = 50 again.
    assert rel_err(grad, reference) < C * 1e-3
    # A budget too small for it is an error naming the backward solve ...
    with pytest.raises(Exception, match="backward \\(adjoint\\) solve failed"):
        jax.block_until_ready(
            jax.jit(jax.grad(_lv_loss(ak.BacksolveAdjoint(max_steps=n), n)))(LV_P)
        )


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_backward_failure_honours_throw_false(jit):
    # ... and with throw=False a NaN gradient, the cause readable from the
    # backward statistics. Fails on the old code, which raised (under jit as a
    # raw runtime error from a callback).
    grad = jax.grad(_lv_loss(ak.BacksolveAdjoint(max_steps=5), 64, throw=False))
    if jit:
        grad = jax.jit(grad)
    with ak.collect_backward_stats() as stats:
        g = jax.block_until_ready(grad(LV_P))
    assert bool(jnp.all(jnp.isnan(g)))
    assert stats[0]["result"] == ak.RESULTS[ak.RESULTS.max_steps_reached]
