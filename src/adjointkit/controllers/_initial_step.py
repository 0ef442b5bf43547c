"""Automatic choice of the first step size."""

from collections.abc import Callable

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Real


def initial_step_size(
    f: Callable,
    t0: Real[Array, ""],
    y0: PyTree,
    args: PyTree,
    f0: PyTree,
    error_order: int,
    rtol,
    atol,
    norm: Callable[[PyTree], Real[Array, ""]],
) -> Real[Array, ""]:
    """A first step size from the local behaviour of `f` at `(t0, y0)`.

    The algorithm of Hairer, Nørsett & Wanner, *Solving ODEs I*, Section II.4
    ("Starting step size"): with `sc = atol + rtol |y0|`, d0 = ‖y0/sc‖,
    d1 = ‖f0/sc‖, an Euler step of `h0 = 0.01 d0/d1` estimates the second
    derivative d2 = ‖(f(t0 + h0, y0 + h0 f0) - f0)/sc‖ / h0, and the step is
    `min(100 h0, (0.01 / max(d1, d2))^(1/error_order))`. Costs one evaluation of `f`.
    """

    def scaled(x, y):
        return jtu.tree_map(lambda a, b: a / (atol + rtol * jnp.abs(b)), x, y)

    d0 = norm(scaled(y0, y0))
    d1 = norm(scaled(f0, y0))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)).astype(t0.dtype)
    y_probe = jtu.tree_map(lambda y, k: y + h0.astype(y.dtype) * k, y0, f0)
    f_probe = f(t0 + h0, y_probe, args)
    d2 = norm(scaled(jtu.tree_map(jnp.subtract, f_probe, f0), y0)) / h0
    d_max = jnp.maximum(d1, d2)
    h1 = jnp.where(
        d_max <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(d_max <= 1e-15, 1.0, d_max)) ** (1.0 / error_order),
    )
    return jnp.minimum(100 * h0, h1).astype(t0.dtype)
