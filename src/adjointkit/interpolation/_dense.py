"""The solver's own continuous extension."""

from ._base import AbstractInterpolation


class DenseInterpolation(AbstractInterpolation):
    """The solver's own dense output (e.g. Tsitouras' for Tsit5).

    Keeps the state per grid point and the solver's `dense_info` per step (for the
    Runge--Kutta methods here, every stage): the most memory, and the interpolant
    whose accuracy matches the solver's.

    **Arguments:** none.

    References: each solver's docstring cites its continuous extension; for the
    theory, Hairer, Nørsett & Wanner I, Section II.6.
    """

    def point_data(self, y, f):
        del f
        return y

    def step_data(self, dense_info):
        return dense_info

    def evaluate(self, solver, t0, t1, left, right, step, t):
        del right
        return solver.interpolate(t0, t1, left, step, t)
