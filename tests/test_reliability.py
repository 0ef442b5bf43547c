"""The paths next to the tested ones give the right number or a clear error.

Specifications (each was a silent wrong number before its fix):

1. `jax.grad` run eagerly (no `jax.jit`) of a loss whose `f` closes over a
   Python float gives the gradient it gives under `jax.jit`, with every adjoint,
   constant and adaptive steps. (Eagerly, the tracer of a Python number holds a
   Python scalar, which a custom VJP took for a non-array leaf: the gradient was
   0.0.) The closed form is exact: y' = -c y, so L = sum(y(1)^2) = |y0|^2
   exp(-2c) and dL/dc = -2 |y0|^2 exp(-2c); each adjoint is within its own
   accuracy of it (Tsit5, 20 steps of 0.05: local error ~ (c h)^5 / 5! per
   step, so 1e-6 relative covers the discrete and continuous gradients alike).
2. Second derivatives through the implicit stages of an ESDIRK solver
   (`ImplicitEuler`, `Kvaerno5`) with `DirectAdjoint` are exact:
   `jax.jacfwd(jax.jacfwd(...))` and `jax.jacrev(jax.jacrev(...))` equal central
   differences of the gradient, and are symmetric. `jax.hessian` (forward over
   reverse), which JAX cannot take through the stages' loop, raises an error
   that names the solver and those two alternatives (it returned a wrong,
   asymmetric matrix: relative error 0.6-1.0). Forward mode (`jax.jvp`) through
   the stages works and equals the gradient along the tangent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak


Y0 = np.array([1.0, 0.5])
C = 2.0

REVERSE_ADJOINTS = {
    "direct": ak.DirectAdjoint(),
    "binomial": ak.CheckpointedAdjoint(),
    "allsteps": ak.CheckpointedAdjoint(ak.AllSteps()),
    "backsolve": ak.BacksolveAdjoint(),
    "interpolated": ak.InterpolatedAdjoint(),
    "quadrature": ak.QuadratureAdjoint(),
}
STEPPING = {
    "constant": dict(dt0=0.05),
    "adaptive": dict(controller=ak.PIDController(rtol=1e-8, atol=1e-8)),
}


def _closed_over_loss(adjoint, stepping):
    def loss(c):
        sol = ak.solve(
            lambda t, y, _: -c * y, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y0),
            adjoint=adjoint, **STEPPING[stepping],
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    return loss


@pytest.mark.parametrize("stepping", list(STEPPING))
@pytest.mark.parametrize("name", list(REVERSE_ADJOINTS))
def test_eager_grad_of_a_closed_over_python_float(name, stepping):
    # Fails on the old code: 0.0 eagerly for every custom-VJP adjoint.
    loss = _closed_over_loss(REVERSE_ADJOINTS[name], stepping)
    exact = -2 * np.sum(Y0**2) * np.exp(-2 * C)
    eager = float(jax.grad(loss)(C))
    jitted = float(jax.jit(jax.grad(loss))(C))
    np.testing.assert_allclose(eager, exact, rtol=1e-6)
    # The same computation eagerly and compiled: rounding only.
    np.testing.assert_allclose(eager, jitted, rtol=1e-10)


# --- 2. second derivatives through implicit stages ---------------------------------

ESDIRK = {
    "implicit_euler": ak.ImplicitEuler(rtol=1e-12, atol=1e-12),
    "kvaerno5": ak.Kvaerno5(rtol=1e-12, atol=1e-12),
}
P0 = np.array([5.0, 0.3])


def _cubic_loss(solver, adjoint=None):
    """The issue's example: y' = -p0 y^3 + p1, y(0) = 1.5, 20 steps of 0.05."""

    def loss(p):
        sol = ak.solve(
            lambda t, y, p: -p[0] * y**3 + p[1], solver, 0.0, 1.0, jnp.array(1.5),
            p, dt0=0.05, adjoint=adjoint or ak.DirectAdjoint(),
        )  # fmt: skip
        return sol.ys[-1]

    return loss


def _central_hessian(grad, p, step=1e-5):
    """Central differences of the gradient. Truncation ~ step^2 |g'''| ~ 1e-10;
    the gradient is that of the computed stages, which move with p by the chord
    iteration's tolerance (1e-12 here) at most: ~ 1e-12 / step = 1e-7 of noise
    at worst, so agreement to 1e-5 relative tells the exact Hessian from the old
    wrong one (off by 0.6-1.0)."""
    eye = np.eye(len(p))
    return np.stack(
        [(grad(p + step * e) - grad(p - step * e)) / (2 * step) for e in eye]
    )


@pytest.mark.parametrize("name", list(ESDIRK))
def test_second_derivatives_through_esdirk_stages(name):
    loss = _cubic_loss(ESDIRK[name])
    p = jnp.asarray(P0)
    reference = _central_hessian(jax.jit(jax.grad(loss)), p)
    scale = np.max(np.abs(reference))
    for how, hessian in {
        "forward over forward": jax.jacfwd(jax.jacfwd(loss)),
        "reverse over reverse": jax.jacrev(jax.jacrev(loss)),
    }.items():
        for mode, fn in {"eager": hessian, "jit": jax.jit(hessian)}.items():
            h = np.asarray(fn(p))
            np.testing.assert_allclose(
                h, reference, rtol=0, atol=1e-5 * scale, err_msg=f"{how}, {mode}"
            )
            # The same computation's rounding only.
            np.testing.assert_allclose(h, h.T, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "adjoint",
    [ak.DirectAdjoint(), ak.CheckpointedAdjoint()],
    ids=["direct", "checkpointed"],
)
def test_hessian_through_esdirk_stages_names_the_alternatives(adjoint, jit):
    # Fails on the old code: a wrong, asymmetric matrix with DirectAdjoint.
    hessian = jax.hessian(_cubic_loss(ESDIRK["kvaerno5"], adjoint))
    hessian = jax.jit(hessian) if jit else hessian
    with pytest.raises(TypeError, match=r"Kvaerno5.*jacfwd\(jax\.jacfwd.*Rodas5"):
        hessian(jnp.asarray(P0))


def test_forward_mode_through_esdirk_stages_equals_reverse_mode():
    # Fails on the old code: the stages had a reverse-mode rule only.
    loss = _cubic_loss(ESDIRK["kvaerno5"])
    p, v = jnp.asarray(P0), jnp.array([0.3, -1.0])
    _, eager = jax.jvp(loss, (p,), (v,))
    _, jitted = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(p, v)
    grad = jax.jit(jax.grad(loss))(p)
    # One linear map computed forward and transposed: rounding only.
    np.testing.assert_allclose(eager, jnp.dot(grad, v), rtol=1e-12)
    np.testing.assert_allclose(jitted, eager, rtol=1e-12)
