"""One engine for every explicit Runge--Kutta method: a new method is a tableau."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree, Real

from .._tree import tree_lincomb, tree_stack
from ..interpolation._base import step_fraction
from ._base import AbstractSolver, SolverStep, explicit_step
from ._tableau import ButcherTableau


class AbstractExplicitRungeKutta(AbstractSolver):
    """An explicit Runge--Kutta method defined by its `tableau` (a class attribute).

    Every method carries `f(t, y)` at the current point from one step to the next:
    for FSAL methods it is their last stage; for the others it is one extra
    evaluation at the end of the step that the next step uses as its first stage, so
    the cost per step is unchanged and cubic Hermite dense output is always
    available.

    `dense_info` is the stack of the stages (plus `f(t1, y1)` when not FSAL), each
    leaf with a leading stage axis.
    """

    tableau: eqx.AbstractClassVar[ButcherTableau]

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        e = self.tableau.embedded_order
        return None if e is None else e + 1

    @property
    def evals_per_step(self) -> int:
        # New stages 2..s, plus f(t1, y1) when the last stage is not already it.
        return self.tableau.num_stages - 1 + (0 if self.tableau.fsal else 1)

    def init(self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree):
        return f(t0, y0, args)

    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state,
    ) -> SolverStep:
        tab = self.tableau
        h = t1 - t0
        ks = [state]
        last = tab.num_stages - 1
        y1 = None
        for i in range(1, tab.num_stages):
            if i == last and tab.fsal:
                y1 = tree_lincomb(y0, h, tab.b[:-1], ks)
                ks.append(f(t1, y1, args))
            else:
                yi = tree_lincomb(y0, h, tab.a[i], ks)
                ks.append(f(t0 + tab.c[i] * h, yi, args))
        if tab.fsal:
            f1 = ks[-1]
        else:
            y1 = tree_lincomb(y0, h, tab.b, ks)
            f1 = f(t1, y1, args)
            ks.append(f1)
        if tab.b_error is None:
            y_error = None
        else:
            y_error = tree_lincomb(None, h, tab.b_error, ks[: tab.num_stages])
        dense_info = tree_stack(ks)
        return explicit_step(y1, y_error, dense_info, f1, self.evals_per_step)

    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        h = t1 - t0
        theta = step_fraction(t0, t1, t)
        P = self.tableau.dense_matrix()
        powers = theta ** np.arange(1, P.shape[1] + 1)
        weights = jnp.asarray(P, dtype=theta.dtype) @ powers

        def leaf(y, k):
            w = (h * weights).astype(k.dtype)
            return y + jnp.tensordot(w, k, axes=1)

        return jtu.tree_map(leaf, y0, dense_info)
