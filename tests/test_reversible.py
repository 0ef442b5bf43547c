"""Reversible solvers and ReversibleAdjoint: exact reconstruction, the gradient of
DirectAdjoint through the same solver, memory flat in the number of steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak
from helpers import A3, Y3, convergence_slope, rel_err, tanh_field


EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
ARGS = {"A": jnp.asarray(A3)}
ADAPTIVE = dict(controller=ak.PIDController(rtol=1e-7, atol=1e-9))
# The reconstructed states differ from the forward pass's by rounding amplified
# over the steps (at most ~N eps λ^-N e^(L T), about 1e-13 here); the gradient
# inherits that relative error, well inside the 1e-10.
GRAD_RTOL = 1e-10


def _grads(adjoint, solver, t0, t1, steps, *, traced_times):
    """Gradients with respect to y0, args and the save times (and t0, t1 when
    `traced_times`: then the number of steps is not known at trace time)."""
    ts = t0 + (t1 - t0) * jnp.array([0.0, 0.3, 0.55, 1.0])

    def loss(y0, args, ts, t0, t1):
        sol = ak.solve(
            tanh_field, solver, t0, t1, y0, args, adjoint=adjoint,
            saveat=ak.SaveAt(ts=ts, t1=True), **steps,
        )  # fmt: skip
        return jnp.sum(sol.ys**2) + jnp.sum(jnp.sin(sol.ys))

    inputs = (jnp.asarray(Y3), ARGS, ts)
    if traced_times:
        inputs += (jnp.asarray(t0), jnp.asarray(t1))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*inputs)
    return jax.jit(
        jax.grad(lambda y0, a, ts: loss(y0, a, ts, t0, t1), argnums=(0, 1, 2))
    )(*inputs)


HEUN_ADAPTIVE = dict(controller=ak.PIDController(rtol=1e-5, atol=1e-7))
CASES = {
    "tsit5-const": (ak.Reversible(ak.Tsit5()), dict(dt0=0.1), 0.0, 2.0, False),
    "rk4-backward": (ak.Reversible(ak.RK4(), 0.9), dict(dt0=-0.1), 2.0, 0.0, False),
    "heun-const": (ak.ReversibleHeun(), dict(dt0=0.05), 0.0, 2.0, False),
    "tsit5-adaptive": (ak.Reversible(ak.Tsit5()), ADAPTIVE, 0.0, 2.0, True),
    "tsit5-const-traced": (ak.Reversible(ak.Tsit5()), dict(dt0=0.1), 0.0, 2.0, True),
    "tsit5-adaptive-backward": (ak.Reversible(ak.Tsit5()), ADAPTIVE, 2.0, -0.5, True),
    "heun-adaptive": (ak.ReversibleHeun(), HEUN_ADAPTIVE, 0.0, 2.0, True),
}
# DirectAdjoint through a loop whose length is a value (traced t0, t1) takes
# ~10-40 s to compile on a shared 2-core CPU: those cases run with `-m slow`.
# So does tsit5-const: rk4-backward wraps an explicit RK solver in Reversible
# with save times, and test_vmap_and_float32 compares Reversible(Tsit5()) with
# DirectAdjoint, by default.
_SLOW = {
    "tsit5-const",
    "tsit5-adaptive",
    "tsit5-const-traced",
    "tsit5-adaptive-backward",
    "heun-adaptive",
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[pytest.mark.slow] if c in _SLOW else []) for c in CASES],
)
def test_gradient_matches_direct(case):
    """y0, args, the save times (and t0, t1), through values saved at ts and t1."""
    solver, steps, t0, t1, traced = CASES[case]
    ours = _grads(ak.ReversibleAdjoint(), solver, t0, t1, steps, traced_times=traced)
    direct = _grads(ak.DirectAdjoint(), solver, t0, t1, steps, traced_times=traced)
    for mine, ref in zip(ours, direct, strict=True):
        assert rel_err(mine, ref) < GRAD_RTOL


@pytest.mark.slow
@pytest.mark.parametrize("saveat", ["steps", "dense"])
def test_saved_steps_and_dense_output_pull_back(saveat):
    solver = ak.Reversible(ak.Tsit5())

    def loss(adjoint, args):
        sol = ak.solve(
            tanh_field, solver, 0.0, 2.0, jnp.asarray(Y3), args, adjoint=adjoint,
            saveat=ak.SaveAt(**{saveat: True, "t1": saveat == "dense"}), **ADAPTIVE,
        )  # fmt: skip
        ys = jnp.where(jnp.isfinite(sol.ys), sol.ys, 0.0)
        extra = jnp.sum(sol.evaluate(0.77) ** 2) if saveat == "dense" else 0.0
        return jnp.sum(ys**2) + extra

    ours = jax.grad(lambda a: loss(ak.ReversibleAdjoint(), a))(ARGS)
    direct = jax.grad(lambda a: loss(ak.DirectAdjoint(), a))(ARGS)
    assert rel_err(ours, direct) < GRAD_RTOL


def test_vmap_and_float32():
    solver = ak.Reversible(ak.Tsit5())

    def grad(adjoint, y0, dtype):
        args = {"A": jnp.asarray(A3, dtype)}

        def loss(y0):
            sol = ak.solve(tanh_field, solver, 0.0, 2.0, y0, args, dt0=0.05,
                           adjoint=adjoint)  # fmt: skip
            return jnp.sum(sol.ys**2)

        return jax.jit(jax.vmap(jax.grad(loss)))(y0.astype(dtype))

    y0 = jnp.asarray(Y3) * jnp.array([[1.0], [2.0], [-0.5]])
    for dtype, tol in [(jnp.float64, GRAD_RTOL), (jnp.float32, 1e3 * EPS32)]:
        # float32: rounding of 40 steps, each a few ulps, forward and back.
        ours = grad(ak.ReversibleAdjoint(), y0, dtype)
        assert ours.dtype == dtype
        assert rel_err(ours, grad(ak.DirectAdjoint(), y0, dtype)) < tol


def test_checkpointed_adjoint_through_reversible_solver():
    """A checkpoint keeps the carried second solution: it cannot be recomputed
    from (t, y), and restoring it with `init` would give wrong gradients."""
    solver = ak.Reversible(ak.Tsit5())

    def grad(adjoint):
        def loss(args):
            sol = ak.solve(tanh_field, solver, 0.0, 2.0, jnp.asarray(Y3), args,
                           dt0=0.05, adjoint=adjoint)  # fmt: skip
            return jnp.sum(sol.ys**2)

        return jax.jit(jax.grad(loss))(ARGS)  # times stay Python numbers

    direct = grad(ak.DirectAdjoint())
    for schedule in [ak.BinomialCheckpoints(4)]:
        assert rel_err(grad(ak.CheckpointedAdjoint(schedule)), direct) < 1e-13


def test_errors():
    with pytest.raises(TypeError, match="reversible solver"):
        ak.solve(tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), ARGS,
                 dt0=0.1, adjoint=ak.ReversibleAdjoint())  # fmt: skip
    with pytest.raises(TypeError, match="explicit Runge--Kutta"):
        ak.Reversible(ak.Kvaerno3())
    with pytest.raises(TypeError, match="explicit Runge--Kutta"):
        ak.Reversible(ak.ReversibleHeun())
    for bad in [0.0, -0.5, 1.5]:
        with pytest.raises(ValueError, match="coupling"):
            ak.Reversible(ak.Tsit5(), coupling=bad)


def _round_trip(solver, num_steps, dtype=jnp.float64):
    """Relative error of y0 after `num_steps` steps forward and as many undone."""
    y0 = jnp.asarray(Y3, dtype)
    args = {"A": jnp.asarray(A3, dtype)}
    ts = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=dtype)

    def forward(carry, i):
        y, s = carry
        out = solver.step(tanh_field, ts[i], ts[i + 1], y, args, s)
        return (out.y1, out.state), None

    def backward(carry, i):
        y, s = carry
        return solver.backward_step(tanh_field, ts[i], ts[i + 1], y, args, s), None

    state = solver.init(tanh_field, ts[0], y0, args)
    steps = jnp.arange(num_steps)
    carry, _ = jax.lax.scan(forward, (y0, state), steps)
    (y_back, state_back), _ = jax.lax.scan(backward, carry, steps[::-1])
    return rel_err(y_back, y0)


@pytest.mark.parametrize(
    "num_steps, coupling",
    [
        pytest.param(
            n,
            c,
            id=f"{n}-{c}",
            # Every coupling over 50 steps, where λ^-N grows most; over 10, the
            # smallest coupling by default and the others on demand.
            marks=pytest.mark.slow if n == 10 and c != 0.5 else (),
        )  # fmt: skip
        for n in (10, 50)
        for c in (0.5, 0.9, 0.99, 0.999, 1.0)
    ],
)
def test_reconstruction_error_is_bounded(coupling, num_steps):
    """Each undone step rounds at a few ulps, and later undone steps amplify that
    by at most 1/λ (the parasitic mode) times e^(h L) (L = |A| <= 1.5, the field's
    Lipschitz constant): after N steps over [0, 1], at most ~N eps λ^-N e^L.
    The factor 10 covers e^1.5 and the few ulps per step."""
    err = _round_trip(ak.Reversible(ak.Tsit5(), coupling), num_steps)
    bound = 10 * num_steps * EPS64 * coupling ** (-num_steps)
    assert err <= bound


def test_reconstruction_default_coupling_and_heun():
    """The default coupling over many steps, in float64 and float32."""
    assert _round_trip(ak.Reversible(ak.Tsit5()), 200) < 2000 * EPS64
    assert _round_trip(ak.ReversibleHeun(), 200) < 2000 * EPS64
    assert _round_trip(ak.Reversible(ak.Tsit5()), 200, jnp.float32) < 2000 * EPS32


@pytest.mark.parametrize(
    "solver,order", [(ak.Reversible(ak.Tsit5()), 5), (ak.ReversibleHeun(), 2)]
)
def test_convergence_order(solver, order):
    ref = ak.solve(tanh_field, ak.Dopri8(), 0.0, 4.0, jnp.asarray(Y3), ARGS,
                   dt0=1e-3, adjoint=ak.DirectAdjoint()).ys[-1]  # fmt: skip
    sizes = [4.0 / n for n in (10, 20, 40, 80)]
    errors = [
        float(jnp.max(jnp.abs(
            ak.solve(tanh_field, solver, 0.0, 4.0, jnp.asarray(Y3), ARGS, dt0=h,
                     adjoint=ak.DirectAdjoint()).ys[-1] - ref
        )))
        for h in sizes
    ]  # fmt: skip
    # Measured: 5.2 for Reversible(Tsit5()), 2.3 for ReversibleHeun.
    assert convergence_slope(sizes, errors) > order - 0.5


def test_dense_output_is_continuous_and_accurate():
    """The dense output meets the step values and is as accurate as the steps."""
    ts = jnp.linspace(0.0, 2.0, 37)
    sol = ak.solve(tanh_field, ak.Reversible(ak.Tsit5()), 0.0, 2.0,
                   jnp.asarray(Y3), ARGS, dt0=0.1,
                   saveat=ak.SaveAt(ts=ts, steps=True))  # fmt: skip
    ref = ak.solve(tanh_field, ak.Dopri8(), 0.0, 2.0, jnp.asarray(Y3), ARGS,
                   dt0=1e-3, saveat=ak.SaveAt(ts=ts))  # fmt: skip
    step_err = float(jnp.max(jnp.abs(sol.ys[37:][-1] - ref.ys[-1])))
    dense_err = float(jnp.max(jnp.abs(sol.ys[:37] - ref.ys)))
    # Tsitouras' interpolant is 4th order against 5th-order steps: within a
    # factor ~1/h of the step error at h = 0.1.
    assert dense_err < 20 * max(step_err, 1e-9)


def _dissipative(t, y, theta):
    # Decay rates 0.2 and 4 in a rotated basis, plus a nonlinear term, so the
    # gradient depends on the trajectory.
    q = jnp.array([[1.0, 1.0], [-1.0, 1.0]]) / jnp.sqrt(2.0)
    m = q @ jnp.diag(jnp.array([-0.2, -4.0])) @ q.T
    return m @ y + theta * jnp.tanh(y) ** 2


@pytest.mark.slow
def test_dissipative_problem_backsolve_loses_accuracy_reversible_does_not():
    """Over [0, 4] the fast mode decays by e^-16 relative to the slow one: solving
    y backward (BacksolveAdjoint) amplifies its errors by that, while undoing
    reversible steps amplifies only rounding. The coupling is chosen for the
    decay (λ = e^(-2 h), between the modes' e^(-0.2 h) and e^(-4 h)), which keeps
    the parasitic mode bounded both ways (see `Reversible`'s docstring)."""
    y0, theta = jnp.array([1.0, 0.5]), jnp.asarray(0.3)

    def grad(solver, adjoint, **steps):
        def loss(y0, theta):
            sol = ak.solve(_dissipative, solver, 0.0, 4.0, y0, theta,
                           adjoint=adjoint, max_steps=10_000, **steps)  # fmt: skip
            return jnp.sum(sol.ys[-1])

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(y0, theta)

    true = grad(ak.Dopri8(), ak.DirectAdjoint(), dt0=0.004)
    h = 0.01
    reversible = ak.Reversible(ak.Tsit5(), coupling=float(np.exp(-2 * h)))
    ours = grad(reversible, ak.ReversibleAdjoint(), dt0=h)
    # Measured: ReversibleAdjoint 5e-7 from the truth (its discretisation error;
    # 3e-10 from DirectAdjoint through the same solver), BacksolveAdjoint 6e-2:
    # its y solved backward misses y0 by 1e6 times the tolerance, and so it
    # refuses the gradient (tests/test_reliability_continuous.py).
    assert rel_err(ours, true) < 1e-5
    assert rel_err(ours, grad(reversible, ak.DirectAdjoint(), dt0=h)) < 1e-8
    controller = ak.PIDController(rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="BacksolveAdjoint: the primal ODE"):
        jax.block_until_ready(
            grad(ak.Tsit5(), ak.BacksolveAdjoint(), controller=controller)
        )


def _gradient_temp_bytes(num_steps: int) -> int:
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)) / 64)

    def loss(w):
        sol = ak.solve(
            lambda t, y, w: jnp.tanh(y @ w), ak.Reversible(ak.Tsit5()), 0.0, 1.0,
            jnp.ones((4, 64)), w, dt0=1.0 / num_steps,
            adjoint=ak.ReversibleAdjoint(), max_steps=num_steps,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    compiled = jax.jit(jax.grad(loss)).lower(w).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_is_flat_in_the_number_of_steps():
    small, large = _gradient_temp_bytes(500), _gradient_temp_bytes(4000)
    assert large <= 1.25 * small


@pytest.mark.parametrize("adaptive", [False, True], ids=["constant", "adaptive"])
def test_parameters_closed_over_in_an_equinox_model(adaptive):
    # The path Neural ODE users walk: the weights live in an Equinox module that
    # f closes over, not in `args`. ReversibleAdjoint must give them the same
    # gradient DirectAdjoint gives through the same Reversible(Tsit5()) solve
    # (float64: equal up to rounding, asserted at GRAD_RTOL).
    import equinox as eqx

    class Field(eqx.Module):
        A: jax.Array

        def __call__(self, t, y, args):
            del args
            return tanh_field(t, y, {"A": self.A})

    step_options = ADAPTIVE if adaptive else dict(dt0=0.05)

    def grad(adjoint):
        @eqx.filter_jit
        @eqx.filter_grad
        def loss(model):
            sol = ak.solve(
                lambda t, y, args: model(t, y, args), ak.Reversible(ak.Tsit5()),
                0.0, 1.0, jnp.asarray(Y3), None, adjoint=adjoint, max_steps=256,
                **step_options,
            )  # fmt: skip
            return jnp.sum(sol.ys[-1] ** 2)

        return loss(Field(jnp.asarray(A3))).A

    ours, direct = grad(ak.ReversibleAdjoint()), grad(ak.DirectAdjoint())
    assert jnp.all(ours != 0)
    assert rel_err(ours, direct) < GRAD_RTOL


def _mlp_temp_bytes(adjoint, num_steps=100, saveat=None):
    """XLA temp bytes of the gradient of a solve whose field is a one-hidden-layer
    MLP, 256 wide on a batch of 32 four-dimensional states: each evaluation's
    hidden activations (32 KiB) dwarf the state (0.5 KiB)."""
    rng = np.random.default_rng(0)
    params = (
        jnp.asarray(rng.normal(size=(4, 256)) / 2),
        jnp.asarray(rng.normal(size=(256, 4)) / 16),
    )

    def field(t, y, p):
        return jnp.tanh(y @ p[0]) @ p[1]

    def loss(params):
        sol = ak.solve(
            field, ak.Reversible(ak.Tsit5()), 0.0, 1.0, jnp.ones((32, 4)), params,
            dt0=1.0 / num_steps, adjoint=adjoint, max_steps=num_steps,
            saveat=saveat or ak.SaveAt(t1=True),
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()


@pytest.mark.parametrize(
    # With SaveAt(ts), the same gradient is checked by default (tsit5-ts-args).
    "saveat",
    ["t1", pytest.param("ts", marks=pytest.mark.slow)],
)
def test_recomputed_stages_hold_one_evaluation_at_a_time(saveat):
    """`recompute_stages=True` keeps the hidden activations of one evaluation of f
    instead of a base step's six (Tsit5 without its FSAL stage), whether or not
    the steps saved something."""
    save = None if saveat == "t1" else ak.SaveAt(ts=jnp.linspace(0.0, 1.0, 5))
    whole = _mlp_temp_bytes(ak.ReversibleAdjoint(), saveat=save).temp_size_in_bytes
    staged = _mlp_temp_bytes(
        ak.ReversibleAdjoint(recompute_stages=True), saveat=save
    ).temp_size_in_bytes
    assert staged < 0.5 * whole, (staged, whole)


STAGE_CASES = {
    # SaveAt(ts): the pullback of what the step saved enters the stages
    # (including the dense output's last evaluation, f(t1, phi)).
    "tsit5-ts-args": (ak.Reversible(ak.Tsit5()), dict(dt0=0.1), 0.0, 2.0, False),
    # Not FSAL, backward in time, traced t0 and t1.
    "rk4-backward-traced": (
        ak.Reversible(ak.RK4(), 0.9),
        dict(dt0=-0.1),
        2.0,
        0.0,
        True,
    ),
}


@pytest.mark.parametrize(
    # A base method without FSAL, backward in time, traced times: on demand.
    # By default the times' gradient is checked in the closed-over model's test
    # (t1), and the stage loop runs both base steps of every step in each test.
    "case",
    ["tsit5-ts-args", pytest.param("rk4-backward-traced", marks=pytest.mark.slow)],
)
def test_recomputed_stages_give_the_same_gradient(case):
    """Pulling a step back stage by stage is the same chain rule in another order:
    equal to the whole-step pullback up to rounding (float64)."""
    solver, steps, t0, t1, traced = STAGE_CASES[case]
    staged = _grads(
        ak.ReversibleAdjoint(recompute_stages=True), solver, t0, t1, steps,
        traced_times=traced,
    )  # fmt: skip
    whole = _grads(ak.ReversibleAdjoint(), solver, t0, t1, steps, traced_times=traced)
    for mine, ref in zip(staged, whole, strict=True):
        assert rel_err(mine, ref) < GRAD_RTOL


@pytest.mark.parametrize("adaptive", [False, True], ids=["constant", "adaptive"])
def test_recomputed_stages_with_a_closed_over_model(adaptive):
    """Weights in an Equinox module that f closes over, saving only y(t1) (the
    path on which nothing saved enters the steps), and the gradient with respect
    to t1: equal to the whole-step pullback up to rounding."""
    import equinox as eqx

    class Field(eqx.Module):
        A: jax.Array

        def __call__(self, t, y, args):
            return tanh_field(t, y, {"A": self.A}) * (1.0 + 0.1 * t)

    step_options = ADAPTIVE if adaptive else dict(dt0=0.05)

    def grad(adjoint):
        @eqx.filter_grad
        def loss(inputs):
            model, t1 = inputs
            sol = ak.solve(
                model, ak.Reversible(ak.Tsit5()), 0.0, t1, jnp.asarray(Y3), None,
                adjoint=adjoint, max_steps=256, **step_options,
            )  # fmt: skip
            return jnp.sum(sol.ys[-1] ** 2)

        model_grad, t1_grad = loss((Field(jnp.asarray(A3)), jnp.asarray(1.0)))
        return model_grad.A, t1_grad

    staged = grad(ak.ReversibleAdjoint(recompute_stages=True))
    whole = grad(ak.ReversibleAdjoint())
    assert jnp.all(staged[0] != 0) and staged[1] != 0
    for mine, ref in zip(staged, whole, strict=True):
        assert rel_err(mine, ref) < GRAD_RTOL
