"""Cubic Hermite interpolation between grid points."""

import jax.tree_util as jtu

from ._base import AbstractInterpolation, step_fraction, step_rate


class HermiteInterpolation(AbstractInterpolation):
    """The cubic through the states and vector fields at both ends of each step.

    Keeps `(y, f(t, y))` per grid point: twice a state per step, whatever the
    solver. Error O(h⁴) per step, and continuously differentiable across steps.
    The default interpolation of `InterpolatedAdjoint` and `QuadratureAdjoint`,
    as in SUNDIALS CVODES.

    **Arguments:** none.

    References: Hairer, Nørsett & Wanner I, Section II.6 (Hermite interpolation
    as dense output); A. C. Hindmarsh et al., "SUNDIALS: Suite of nonlinear and
    differential/algebraic equation solvers", ACM TOMS 31, 2005 (its use in an
    adjoint's backward pass).
    """

    def point_data(self, y, f):
        return (y, f)

    def step_data(self, dense_info):
        del dense_info
        return None

    def evaluate(self, solver, t0, t1, left, right, step, t):
        del solver, step
        h = t1 - t0
        s = step_fraction(t0, t1, t)
        h00 = 1 - s * s * (3 - 2 * s)
        h01 = s * s * (3 - 2 * s)
        h10 = s * (1 - s) ** 2
        h11 = s * s * (s - 1)
        (y0, f0), (y1, f1) = left, right

        def leaf(a, fa, b, fb):
            c = [x.astype(a.dtype) for x in (h00, h01, h * h10, h * h11)]
            return c[0] * a + c[1] * b + c[2] * fa + c[3] * fb

        return jtu.tree_map(leaf, y0, f0, y1, f1)

    def derivative(self, solver, t0, t1, left, right, step, t):
        # d/dt of `evaluate`'s basis, s = (t - t0) / h: the value basis is divided
        # by h, the slope basis (already multiplied by h) is not.
        del solver, step
        s = step_fraction(t0, t1, t)
        inv_h = step_rate(t0, t1)
        d00 = 6 * s * (s - 1) * inv_h
        d01 = -d00
        d10 = (1 - s) * (1 - 3 * s)
        d11 = s * (3 * s - 2)
        (y0, f0), (y1, f1) = left, right

        def leaf(a, fa, b, fb):
            c = [x.astype(a.dtype) for x in (d00, d01, d10, d11)]
            return c[0] * a + c[1] * b + c[2] * fa + c[3] * fb

        return jtu.tree_map(leaf, y0, f0, y1, f1)
