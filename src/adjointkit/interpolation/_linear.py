"""Linear interpolation between grid points."""

import jax.tree_util as jtu

from ._base import AbstractInterpolation, step_fraction, step_rate


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
        theta = step_fraction(t0, t1, t)
        return jtu.tree_map(
            lambda a, b: a + theta.astype(a.dtype) * (b - a), left, right
        )

    def derivative(self, solver, t0, t1, left, right, step, t):
        del solver, step, t
        inv_h = step_rate(t0, t1)
        return jtu.tree_map(lambda a, b: inv_h.astype(a.dtype) * (b - a), left, right)
