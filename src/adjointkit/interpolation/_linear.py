"""Linear interpolation between grid points."""

import jax.numpy as jnp
import jax.tree_util as jtu

from ._base import AbstractInterpolation


class LinearInterpolation(AbstractInterpolation):
    """Straight lines between the states at the grid points.

    Keeps one state per grid point. Second order: error O(h²) per step, whatever
    the solver. The cheapest choice; usually too inaccurate for an adjoint.

    **Arguments:** none.

    Reference: e.g. Hairer, Nørsett & Wanner I, Section II.6 (dense output); the
    error bound is that of polynomial interpolation through two points.
    """

    def point_data(self, y, f):
        del f
        return y

    def step_data(self, dense_info):
        del dense_info
        return None

    def evaluate(self, solver, t0, t1, left, right, step, t):
        del solver, step
        h = t1 - t0
        theta = jnp.where(h == 0, 0.0, (t - t0) / jnp.where(h == 0, 1.0, h))
        return jtu.tree_map(
            lambda a, b: a + theta.astype(a.dtype) * (b - a), left, right
        )

    def derivative(self, solver, t0, t1, left, right, step, t):
        del solver, step, t
        h = t1 - t0
        inv_h = jnp.where(h == 0, 0.0, 1 / jnp.where(h == 0, 1.0, h))
        return jtu.tree_map(lambda a, b: inv_h.astype(a.dtype) * (b - a), left, right)
