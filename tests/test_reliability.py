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
