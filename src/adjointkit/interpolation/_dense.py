"""The solver's own continuous extension."""

import jax
import jax.numpy as jnp

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

    def derivative(self, solver, t0, t1, left, right, step, t):
        # Each solver's continuous extension is a polynomial in t; its forward-mode
        # derivative in t is the exact derivative of that polynomial.
        del right
        t = jnp.asarray(t)
        _, dy = jax.jvp(
            lambda s: solver.interpolate(t0, t1, left, step, s),
            (t,),
            (jnp.ones_like(t),),
        )
        return dy
