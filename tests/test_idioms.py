"""Code written the way JAX and Equinox users write it works with every adjoint.

Specifications:

1. Parameters closed over by `f` (an array, a tracer, an Equinox model called
   inside a lambda) get the same gradient as when passed through `args`, with
   every adjoint, constant and adaptive steps, under `jax.jit`. The computation is
   the same either way, so the two agree to rounding (1e-12 relative).
2. `args` and `f` may be Equinox modules with non-array fields (an `eqx.nn.MLP`,
   whose activation is a function; a `str` field; a Python `int` used in
   `range()`); integer arrays get no cotangent.
3. A scalar state created inside a jitted loss (a literal in the trace) works.
4. A solve of zero length (`t0 == t1`, traced) has dy(t1)/dt1 = f(t1, y0) and
   dy(t1)/dt0 = -f(t0, y0) with every adjoint: the limit of one step of length
   t1 - t0, and the continuous solution's derivative.
5. `vmap` over `t1` with some `t1 < t0` and some `t1 > t0` gives each its own
   gradient, checked against the matrix exponential.

Tests marked "fails on the old code" were each seen to fail before the fix.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import adjointkit as ak
from helpers import A3, M2, Y2, Y3, crossed, rel_err, tanh_field


ADJOINTS = {
    "direct": ak.DirectAdjoint(),
    "binomial": ak.CheckpointedAdjoint(),
    "allsteps": ak.CheckpointedAdjoint(ak.AllSteps()),
    "everyk": ak.CheckpointedAdjoint(ak.EveryKSteps(3)),
    "backsolve": ak.BacksolveAdjoint(),
    "interpolated": ak.InterpolatedAdjoint(),
    "interpolated_k": ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(3)),
    "quadrature": ak.QuadratureAdjoint(),
}
STEPPING = {
    "constant": dict(dt0=0.05),
    "adaptive": dict(controller=ak.PIDController(rtol=1e-8, atol=1e-8)),
}
# Gradients computed by one algorithm on the same numbers, up to where the
# parameters sit in the pytree: a few ulps of accumulated rounding.
SAME = 1e-12


def _solve(f, args, adjoint, stepping, y0=Y3, t0=0.0, t1=1.0, **kwargs):
    return ak.solve(
        f, ak.Tsit5(), t0, t1, jnp.asarray(y0), args, adjoint=adjoint,
        **STEPPING[stepping], **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, stepping",
    crossed(
        list(ADJOINTS),
        list(STEPPING),
        # The property test covers closures for six more pairs (quadrature-
        # adaptive's among them: a continuous adjoint replaying adaptive steps);
        # the online checkpoints under PID are binomial-adaptive's.
        fast={("binomial", "adaptive"), ("backsolve", "constant")},
    ),
)
def test_closed_over_array_gets_the_gradient_it_gets_through_args(name, stepping):
    # Fails on the old code: UnexpectedTracerError for every custom-VJP adjoint.
    adjoint = ADJOINTS[name]
    A = jnp.asarray(A3)

    @jax.jit
    def through_closure(A):
        field = lambda t, y, args: tanh_field(t, y, {"A": A})  # noqa: E731
        return jnp.sum(_solve(field, None, adjoint, stepping).ys[-1] ** 2)

    @jax.jit
    def through_args(A):
        return jnp.sum(_solve(tanh_field, {"A": A}, adjoint, stepping).ys[-1] ** 2)

    g_closure = jax.grad(through_closure)(A)
    g_args = jax.grad(through_args)(A)
    assert rel_err(g_closure, g_args) < SAME
    assert float(jnp.max(jnp.abs(g_args))) > 0.1  # a gradient that can be wrong


class _Field(eqx.Module):
    """A model with a function, a string and a Python int among its fields."""

    weight: jax.Array
    bias: jax.Array
    index: jax.Array  # an integer array: no cotangent
    activation: callable = eqx.field(static=False, default=jnp.tanh)
    name: str = "field"
    depth: int = 2

    def __call__(self, t, y, args=None):
        for _ in range(self.depth):  # a Python int used as one
            y = self.activation(self.weight @ y + self.bias)
        return y[self.index] * 0.5


def _field():
    rng = np.random.default_rng(0)
    return _Field(
        weight=jnp.asarray(rng.normal(size=(3, 3)) / 2),
        bias=jnp.asarray(rng.normal(size=3) / 4),
        index=jnp.array([2, 0, 1]),
    )


@pytest.mark.parametrize(
    "name, stepping",
    crossed(
        list(ADJOINTS),
        list(STEPPING),
        # The continuous adjoints meet modules with static fields by default in
        # the property test (its quadrature-adaptive pair).
        fast={("direct", "adaptive"), ("allsteps", "constant")},
    ),
)
def test_equinox_modules_as_args_and_as_closures(name, stepping):
    # Fails on the old code: "Error interpreting argument ... as an abstract array"
    # (the activation function), for every adjoint.
    adjoint = ADJOINTS[name]
    model = _field()

    @eqx.filter_jit
    @eqx.filter_grad
    def as_args(model):
        sol = _solve(lambda t, y, m: m(t, y), model, adjoint, stepping)
        return jnp.sum(sol.ys[-1] ** 2)

    @eqx.filter_jit
    @eqx.filter_grad
    def as_closure(model):
        sol = _solve(lambda t, y, _: model(t, y), None, adjoint, stepping)
        return jnp.sum(sol.ys[-1] ** 2)

    @eqx.filter_jit
    @eqx.filter_grad
    def as_field(model):
        return jnp.sum(_solve(model, None, adjoint, stepping).ys[-1] ** 2)

    reference = as_args(model)
    assert reference.index is None  # integer arrays get no cotangent
    assert float(jnp.max(jnp.abs(reference.weight))) > 1e-3
    for grads in (as_closure(model), as_field(model)):
        assert grads.index is None
        assert (
            rel_err((grads.weight, grads.bias), (reference.weight, reference.bias))
            < SAME
        )


# An Equinox model (with a function among its fields) as `args`: by default in
# test_equinox_modules_as_args_and_as_closures and test_property (the binomial
# default against DirectAdjoint under PID steps).
@pytest.mark.slow
def test_mlp_args_match_direct_adjoint():
    # An `eqx.nn.MLP` as `args`: the exact discrete adjoints agree with
    # differentiating the loop (the same discrete gradient, to rounding).
    mlp = eqx.nn.MLP(3, 3, 8, 2, activation=jax.nn.softplus, key=jax.random.key(0))

    def loss(mlp, adjoint):
        sol = ak.solve(
            lambda t, y, m: m(y), ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y3), mlp,
            controller=ak.PIDController(rtol=1e-6, atol=1e-6), adjoint=adjoint,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    direct = grad(mlp, ak.DirectAdjoint())
    checkpointed = grad(mlp, ak.CheckpointedAdjoint())
    leaves = lambda m: jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))  # noqa: E731
    assert rel_err(leaves(checkpointed), leaves(direct)) < 1e-10


FAST_SCALAR = {"binomial", "allsteps", "backsolve", "interpolated", "quadrature"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n in FAST_SCALAR else pytest.mark.slow)
        for n in ADJOINTS
    ],
)
def test_scalar_state_made_inside_jit(name):
    # Fails on the old code for every adjoint but DirectAdjoint: under jit,
    # `jnp.array(1.0)` is a literal, which a custom VJP lost ("unexpected tree
    # structure"). y' = -k y: dy(1)/dk = -exp(-k).
    adjoint = ADJOINTS[name]

    @jax.jit
    def y1(k):
        y0 = jnp.array(1.0)
        sol = ak.solve(
            lambda t, y, k: -k * y, ak.Tsit5(), 0.0, 1.0, y0, k, dt0=0.01,
            adjoint=adjoint,
        )  # fmt: skip
        return sol.ys[-1]

    k = 0.7
    # Tsit5 with h = 0.01 is accurate to ~1e-12 here; the continuous adjoints
    # integrate the adjoint with the same steps.
    assert abs(float(jax.grad(y1)(k)) + np.exp(-k)) < 1e-9


@pytest.mark.parametrize(
    "name, stepping",
    crossed(
        list(ADJOINTS),
        list(STEPPING),
        # The property test covers zero length for six pairs; these are the
        # ones that were wrong.
        fast={
            ("binomial", "constant"),
            ("allsteps", "adaptive"),
            ("interpolated_k", "adaptive"),
        },
    ),
)
def test_zero_length_solve_has_the_derivatives_in_its_times(name, stepping):
    # Fails on the old code for the discrete adjoints (0 for dL/dt0 and dL/dt1),
    # and with InterpolatedAdjoint(checkpoints=...) and PIDController for dL/dy0.
    adjoint = ADJOINTS[name]
    weights = jnp.array([2.0, -1.0, 0.5])
    y0 = jnp.asarray(Y3)
    args = {"A": jnp.asarray(A3)}

    @jax.jit
    def loss(y0, t0, t1):
        sol = _solve(tanh_field, args, adjoint, stepping, y0=y0, t0=t0, t1=t1)
        return jnp.sum(sol.ys[-1] * weights)

    t = 0.5
    dy0, dt0, dt1 = jax.grad(loss, argnums=(0, 1, 2))(y0, t, t)
    f = tanh_field(t, y0, args)
    np.testing.assert_allclose(dy0, weights, rtol=1e-14)
    np.testing.assert_allclose(dt1, jnp.dot(weights, f), rtol=1e-12)
    np.testing.assert_allclose(dt0, -jnp.dot(weights, f), rtol=1e-12)


@pytest.mark.parametrize(
    # DirectAdjoint's zero-length solve: the property test draws t0 == t1.
    "name",
    [pytest.param("direct", marks=pytest.mark.slow), "binomial", "backsolve",
     "quadrature"],
)  # fmt: skip
def test_zero_length_solve_derivatives_at_saved_times(name):
    # ts all at t0 == t1: y(ts_i) = y0, dy(ts_i)/dts_i = f, dy(ts_i)/dt0 = -f.
    # Fails on the old code: NaN with DirectAdjoint (0/0 in the interpolation),
    # and 0 for dL/dts with the continuous adjoints.
    adjoint = ADJOINTS[name]
    args = {"A": jnp.asarray(A3)}
    y0 = jnp.asarray(Y3)

    def loss(t0, ts):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), t0, t0, y0, args, dt0=0.1,
            saveat=ak.SaveAt(ts=ts), adjoint=adjoint,
        )  # fmt: skip
        return jnp.sum(sol.ys[0]) + 2 * jnp.sum(sol.ys[1])

    dt0, dts = jax.jit(jax.grad(loss, argnums=(0, 1)))(0.5, jnp.array([0.5, 0.5]))
    s = float(jnp.sum(tanh_field(0.5, y0, args)))
    np.testing.assert_allclose(dts, [s, 2 * s], rtol=1e-12)
    np.testing.assert_allclose(dt0, -3 * s, rtol=1e-12)


@pytest.mark.parametrize(
    "name, stepping",
    crossed(
        ["direct", "binomial", "backsolve", "quadrature"],
        list(STEPPING),
        fast={("direct", "constant"), ("binomial", "adaptive")},
    ),
)
def test_vmap_over_end_times_on_both_sides_of_t0(name, stepping):
    adjoint = ADJOINTS[name]
    M, y0 = jnp.asarray(M2), jnp.asarray(Y2)

    def loss(t1):
        kwargs = dict(STEPPING[stepping])
        if "dt0" in kwargs:
            kwargs["dt0"] = jnp.where(t1 >= 0, 1.0, -1.0) * kwargs["dt0"]
        sol = ak.solve(
            lambda t, y, M: M @ y, ak.Tsit5(), 0.0, t1, y0, M, adjoint=adjoint,
            **kwargs,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    t1s = jnp.array([-0.7, 0.9, 0.0, 1.3])
    grads = jax.jit(jax.vmap(jax.grad(loss)))(t1s)
    # d/dt1 sum(expm(M t1) y0) = sum(M expm(M t1) y0).
    exact = [np.sum(M2 @ scipy.linalg.expm(M2 * t) @ Y2) for t in np.asarray(t1s)]
    # Tsit5 with h = 0.05 (error ~1e-8 over these intervals) or rtol 1e-8.
    np.testing.assert_allclose(grads, exact, rtol=1e-6)
