"""SaveAt(fn=...): saving fn(t, y, args) instead of y, with every adjoint.

The reference for each adjoint is the same adjoint with `SaveAt(ts=...)` and `fn`
applied by hand to its output: the loss is the same function of the same computed
solution, so values and gradients must agree to rounding.
"""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak
from helpers import A3, Y3, rel_err, tanh_field


ARGS = {"A": jnp.asarray(A3)}
TS = jnp.array([0.0, 0.15, 0.4, 0.55, 0.9, 1.0])
WEIGHTS = jnp.array([0.5, -1.0, 2.0, 0.25, 1.5, -0.75])

ADJOINTS = {
    "direct": (ak.DirectAdjoint(), True),
    "binomial": (ak.CheckpointedAdjoint(ak.BinomialCheckpoints(3)), True),
    "allsteps": (ak.CheckpointedAdjoint(ak.AllSteps()), True),
    "everyk": (ak.CheckpointedAdjoint(ak.EveryKSteps(3)), True),
    "reversible": (ak.ReversibleAdjoint(), True),
    "backsolve": (ak.BacksolveAdjoint(), False),
    "interpolated": (ak.InterpolatedAdjoint(), False),
    "quadrature": (ak.QuadratureAdjoint(), False),
}
STEPS = {
    "constant": dict(dt0=0.1),
    "adaptive": dict(controller=ak.PIDController(rtol=1e-6, atol=1e-8)),
}


def _solver(adjoint, base=None):
    base = ak.Tsit5() if base is None else base
    return ak.Reversible(base) if isinstance(adjoint, ak.ReversibleAdjoint) else base


def _fn(w):
    """A function of (t, y, args) that closes over an array `w` and uses all three:
    its gradient must reach `w`, `args`, `y` and the save times."""

    def fn(t, y, args):
        return jnp.stack([jnp.sum(w * jnp.tanh(y)) * jnp.cos(t), args["A"][0] @ y])

    return fn


def _losses(adjoint, steps, t1=1.0, ts=TS, solver=None):
    def run(y0, args, w, ts, t1, inside):
        fn = _fn(w)
        saveat = ak.SaveAt(t0=True, ts=ts, t1=True, fn=fn if inside else None)
        sol = ak.solve(
            tanh_field, _solver(adjoint, solver), 0.0, t1, y0, args,
            saveat=saveat, adjoint=adjoint, **steps,
        )  # fmt: skip
        values = (
            sol.ys if inside else jax.vmap(lambda t, y: fn(t, y, args))(sol.ts, sol.ys)
        )
        weights = jnp.concatenate([jnp.array([0.3]), WEIGHTS, jnp.array([-0.6])])
        return jnp.sum(weights[:, None] * values**2), sol.ys

    inputs = (jnp.asarray(Y3), ARGS, jnp.array([0.7, -0.4, 1.1]), ts, jnp.asarray(t1))

    def both(*inputs):
        # One compilation for both ways (the cost of these tests is compiling).
        def loss_in(*a):
            return run(*a, True)[0]

        def loss_out(*a):
            return run(*a, False)[0]

        grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2, 3, 4))
        return {True: grad(loss_in)(*inputs), False: grad(loss_out)(*inputs)}

    out = jax.jit(both)(*inputs)
    shape = jax.eval_shape(lambda *a: run(*a, True)[1], *inputs).shape
    return {k: (*v, shape) for k, v in out.items()}


def _check_inside_equals_outside(out):
    (v_in, g_in, shape_in), (v_out, g_out, _) = out[True], out[False]
    # Only fn's values are returned: 8 saves of fn's 2 numbers, not of the 3-d state.
    assert shape_in == (8, 2)
    # The same function of the same computed solution, both ways: the discrete
    # adjoints pull back through fn inside their own backward pass, in another
    # order of floating-point operations; about 100 steps of O(1) cotangents in
    # float64 leave ~1e-13; 1e-11 is a margin of 100 on that. (The continuous
    # adjoints apply fn outside their custom VJP in both cases.)
    assert rel_err(v_in, v_out) < 1e-11
    for a, b in zip(jax.tree.leaves(g_in), jax.tree.leaves(g_out), strict=True):
        assert jnp.all(jnp.isfinite(a))
        assert rel_err(a, b) < 1e-11
    # Every input got a gradient (none silently zero).
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_in))


# Interpolated, quadrature and the other checkpoint schedules share their code
# paths with backsolve and binomial (the continuous adjoints' raw-save path, the
# checkpointed pullback): slow here, to keep the default suite's compile time down.
SHARED_PATHS = {"allsteps", "everyk", "interpolated", "quadrature"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SHARED_PATHS else n
        for n in ADJOINTS
    ],
)
def test_fn_inside_equals_fn_applied_outside(name):
    """Every adjoint, on a cheap-to-compile solve: Heun, 4 constant steps."""
    adjoint, _ = ADJOINTS[name]
    _check_inside_equals_outside(_losses(adjoint, dict(dt0=0.25), solver=ak.Heun()))


@pytest.mark.slow
@pytest.mark.parametrize("steps", list(STEPS))
@pytest.mark.parametrize("name", list(ADJOINTS))
def test_fn_inside_equals_fn_applied_outside_tsit5(name, steps):
    """Every adjoint with Tsit5, constant and adaptive steps."""
    adjoint, _ = ADJOINTS[name]
    _check_inside_equals_outside(_losses(adjoint, STEPS[steps]))


@pytest.mark.parametrize(
    # The custom pullbacks of saved steps by default; DirectAdjoint (plain
    # reverse mode through the loop) on demand: test_fn_inside_equals_fn_applied_
    # outside[direct] runs fn inside its loop by default.
    "name",
    [pytest.param("direct", marks=pytest.mark.slow), "binomial", "reversible"],
)
def test_fn_with_steps_saving(name):
    """SaveAt(steps=True, fn=...) (discrete adjoints only: the continuous ones
    refuse `steps`): the value at every accepted step is fn's, gradients equal."""
    adjoint, _ = ADJOINTS[name]
    w = jnp.array([0.7, -0.4, 1.1])

    def loss(y0, w, inside):
        fn = _fn(w)
        sol = ak.solve(
            tanh_field, _solver(adjoint, ak.Heun()), 0.0, 1.0, y0, ARGS, dt0=0.25,
            saveat=ak.SaveAt(steps=True, fn=fn if inside else None), adjoint=adjoint,
        )  # fmt: skip
        vals = (
            sol.ys if inside else jax.vmap(lambda t, y: fn(t, y, ARGS))(sol.ts, sol.ys)
        )
        return jnp.sum(jnp.arange(1.0, 5.0)[:, None] * vals**2)

    @jax.jit
    def both(y0, w):
        return [
            jax.value_and_grad(functools.partial(loss, inside=i), argnums=(0, 1))(y0, w)
            for i in (True, False)
        ]

    (v_in, g_in), (v_out, g_out) = both(jnp.asarray(Y3), w)
    # As above: the same computation in another order, 4 steps.
    assert rel_err(v_in, v_out) < 1e-12
    for a, b in zip(g_in, g_out, strict=True):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("name", ["binomial", "backsolve"])
def test_fn_gets_the_users_time_backward_in_time(name):
    """Integrating from 1 to 0, fn is called with the user's (descending) times."""
    adjoint, _ = ADJOINTS[name]
    seen = ak.solve(
        tanh_field, ak.Tsit5(), 1.0, 0.0, jnp.asarray(Y3), ARGS, dt0=-0.1,
        saveat=ak.SaveAt(ts=TS[::-1], t1=True, fn=lambda t, y, args: t),
        adjoint=adjoint,
    )  # fmt: skip
    np.testing.assert_array_equal(seen.ys, jnp.concatenate([TS[::-1], jnp.zeros(1)]))
    np.testing.assert_array_equal(seen.ys, seen.ts)


def test_fn_on_a_zero_length_solve_has_its_time_derivative():
    """t0 == t1: no step is taken; d fn(t1, y(t1))/dt1 = ∂fn/∂t + ∂fn/∂y · f(t0, y0),
    as when fn is applied to the saved state by hand."""
    fn = _fn(jnp.array([0.7, -0.4, 1.1]))

    def loss(t1, inside):
        sol = ak.solve(
            tanh_field, ak.Heun(), 0.0, t1, jnp.asarray(Y3), ARGS, dt0=0.1,
            saveat=ak.SaveAt(ts=jnp.array([0.0]), t1=True, fn=fn if inside else None),
            adjoint=ak.CheckpointedAdjoint(),
        )  # fmt: skip
        vals = (
            sol.ys if inside else jax.vmap(lambda t, y: fn(t, y, ARGS))(sol.ts, sol.ys)
        )
        return jnp.sum(vals[-1] ** 2) + jnp.sum(vals[0])

    g_in, g_out = jax.jit(
        lambda t: [
            jax.grad(functools.partial(loss, inside=i))(t) for i in (True, False)
        ]
    )(jnp.asarray(0.0))
    assert float(jnp.abs(g_out)) > 0
    # A handful of operations on O(1) values.
    assert rel_err(g_in, g_out) < 1e-14


def test_only_fns_values_are_stored():
    """The memory point: with a scalar fn, the compiled gradient of a solve saving at
    200 times no longer holds 200 copies of a 256-number state."""
    n_ts, width = 200, 256
    ts = jnp.linspace(0.0, 1.0, n_ts)

    def temp_bytes(fn):
        def loss(y0):
            sol = ak.solve(
                lambda t, y, args: -jnp.tanh(y), ak.Heun(), 0.0, 1.0, y0, dt0=0.25,
                saveat=ak.SaveAt(ts=ts, fn=fn), adjoint=ak.CheckpointedAdjoint(),
            )  # fmt: skip
            return jnp.sum(sol.ys**2) if fn is None else jnp.sum(sol.ys)

        compiled = jax.jit(jax.grad(loss)).lower(jnp.ones(width)).compile()  # no run
        return compiled.memory_analysis().temp_size_in_bytes

    full = temp_bytes(None)
    small = temp_bytes(lambda t, y, args: jnp.sum(y**2))
    # Saving y stores n_ts * width float64s (400 KiB) for the output and again for
    # its cotangent; saving the scalar stores n_ts of them. Require at least one
    # copy's worth of difference.
    assert full - small >= n_ts * width * 8


@pytest.mark.parametrize("steps", ["constant", "adaptive"])
def test_values_match_diffrax_saveat_fn(steps):
    """Diffrax reference: `diffeqsolve(ODETerm(f), Tsit5(), ..., saveat=
    SaveAt(ts=ts, fn=fn))` with the same step-size settings (ConstantStepSize with
    dt0=0.1, or PIDController(rtol=1e-6, atol=1e-8) with dt0=None), default
    adjoint (RecursiveCheckpointAdjoint)."""
    fn = _fn(jnp.array([0.7, -0.4, 1.1]))
    if steps == "constant":
        ours = dict(dt0=0.1)
        theirs = dict(dt0=0.1, stepsize_controller=diffrax.ConstantStepSize())
    else:
        ours = dict(controller=ak.PIDController(rtol=1e-6, atol=1e-8))
        theirs = dict(
            dt0=None, stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8)
        )
    sol = ak.solve(
        tanh_field, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), ARGS,
        saveat=ak.SaveAt(ts=TS, fn=fn), **ours,
    )  # fmt: skip
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(tanh_field), diffrax.Tsit5(), 0.0, 1.0, y0=jnp.asarray(Y3),
        args=ARGS, saveat=diffrax.SaveAt(ts=TS, fn=fn), **theirs,
    )  # fmt: skip
    if steps == "constant":
        # Same steps and interpolant, summed in another order: ~1e-15 per step.
        assert rel_err(sol.ys, ref.ys) < 1e-12
    else:
        # The two PID controllers choose different steps (each within rtol=1e-6 of
        # the true solution per step); over ~10 steps the solutions differ by a few
        # times the tolerance.
        assert rel_err(sol.ys, ref.ys) < 2e-5


def test_saveat_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn"):
        ak.SaveAt(ts=TS, fn=3.0)


def test_fn_in_an_equinox_module_closure():
    """fn closing over an Equinox module's weights: they get their gradient."""
    model = eqx.nn.Linear(3, 1, key=jax.random.key(0))

    def loss(model, inside):
        fn = lambda t, y, args: model(y)  # noqa: E731
        sol = ak.solve(
            tanh_field, ak.Heun(), 0.0, 1.0, jnp.asarray(Y3), ARGS, dt0=0.25,
            saveat=ak.SaveAt(ts=TS, fn=fn if inside else None),
            adjoint=ak.CheckpointedAdjoint(),
        )  # fmt: skip
        vals = sol.ys if inside else jax.vmap(model)(sol.ys)
        return jnp.sum(vals**2)

    g_in, g_out = eqx.filter_jit(
        lambda m: [
            eqx.filter_grad(functools.partial(loss, inside=i))(m) for i in (True, False)
        ]
    )(model)
    for a, b in zip(jax.tree.leaves(g_in), jax.tree.leaves(g_out), strict=True):
        # 4 steps, same computation in another order.
        assert rel_err(a, b) < 1e-12
