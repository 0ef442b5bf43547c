"""Norms used to measure a step's error estimate."""

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Real


def rms_norm(x: PyTree) -> Real[Array, ""]:
    """Root mean square over every entry of every leaf of `x`.

    The default error norm of `PIDController` (Hairer, Nørsett & Wanner I, eq.
    II.4.11): an error is acceptable when the RMS of
    `error / (atol + rtol * |y|)` is at most one.
    """
    leaves = jtu.tree_leaves(x)
    if not leaves:
        return jnp.array(0.0)
    total = sum(jnp.sum(jnp.square(jnp.abs(leaf))) for leaf in leaves)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(total / max(size, 1))
