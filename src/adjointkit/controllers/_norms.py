"""Norms used to measure a step's error estimate."""

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Real

from .._adjoint_state import AdjointState


def rms_norm(x: PyTree) -> Real[Array, ""]:
    """Root mean square over every entry of every leaf of `x`.

    The default error norm of `PIDController` (Hairer, Nørsett & Wanner I, eq.
    II.4.11): an error is acceptable when the RMS of
    `error / (atol + rtol * |y|)` is at most one.

    **Arguments:**

    - `x`: a pytree of arrays (real or complex).

    **Returns:** a scalar, `sqrt(sum |x_i|^2 / n)` over all `n` entries (0 for an
    empty tree).
    """
    leaves = jtu.tree_leaves(x)
    if not leaves:
        return jnp.array(0.0)
    total = sum(jnp.sum(jnp.square(jnp.abs(leaf))) for leaf in leaves)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(total / max(size, 1))


def adjoint_seminorm(x: PyTree) -> Real[Array, ""]:
    """`rms_norm` of a continuous adjoint's state without its parameter part.

    The parameter cotangent `a_params` of an `AdjointState` is an integral of the
    other components whose error does not feed back into them, so leaving it out
    of step-size control often allows larger backward steps (P. Kidger,
    R. T. Q. Chen and T. Lyons, "'Hey, that's not an ODE': faster ODE adjoints via
    seminorms", ICML 2021). The price: `a_params` is no longer error-controlled,
    and is wrong where `df/dθ` varies faster than the rest of the state. Also,
    being an RMS over fewer components, it can take *more* steps than `rms_norm`,
    whose average the many parameter components dilute. Anything that is not an
    `AdjointState` gets the plain `rms_norm`.

    **Arguments:**

    - `x`: the scaled error of a backward step, an `AdjointState` (or any pytree).

    **Returns:** a scalar, `rms_norm((x.y, x.a))` for an `AdjointState`, else
    `rms_norm(x)`.

    Used by `BacksolveAdjoint(seminorm=True)` and
    `InterpolatedAdjoint(seminorm=True)`, or directly as
    `PIDController(..., norm=adjoint_seminorm)` for their backward solve.
    """
    if isinstance(x, AdjointState):
        return rms_norm((x.y, x.a))
    return rms_norm(x)
