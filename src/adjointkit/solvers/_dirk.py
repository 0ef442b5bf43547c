"""One engine for every diagonally implicit Runge--Kutta method with an explicit
first stage (ESDIRK, and implicit Euler): a new method is a tableau."""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Real

from .._solution import RESULTS
from ..interpolation._base import step_fraction
from ._base import AbstractSolver, SolverStep
from ._newton import (
    NewtonSettings,
    _stop_gradient,
    factorise,
    flat_field,
    jacobian,
    solve_stage,
)
from ._stage_rows import stage_rows
from ._tableau import hermite_dense_matrix


@dataclasses.dataclass(frozen=True, eq=False)
class ImplicitTableau:
    """A singly diagonally implicit Runge--Kutta method with an explicit first
    stage, as data.

    The stages are `k_0 = f(t0, y0)` and, for `i >= 1`,
    `k_i = f(t0 + c[i] h, y0 + h sum_{j<i} a[i][j] k_j + h γ k_i)`: each an
    implicit equation in `k_i` alone, all with the same diagonal `γ`, so one
    factorisation of `I - hγ J` serves the whole step. The step is
    `y1 = y0 + h sum_i b[i] k_i`.

    **Arguments:**

    - `a`: the lower triangle with the diagonal, row `i` with `i + 1` entries;
      `a[0] == (0,)` (the first stage is `f(t0, y0)`, carried from the previous
      step) and `a[i][i] == γ` for every `i >= 1`.
    - `b`, `c`, `order`, `b_error`, `embedded_order`: as for `ButcherTableau`.

    A stiffly accurate method (`c[-1] == 1` and `a[-1] == b`) ends on `y1`, so its
    last stage is `f(t1, y1)`, carried to the next step for free. Dense output is
    cubic Hermite through `y0, y1, f(t0, y0), f(t1, y1)`.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    embedded_order: int | None = None

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError("`a`, `b` and `c` must all have one entry per stage.")
        if s < 2 or tuple(self.a[0]) != (0,) or self.c[0] != 0:
            raise ValueError(
                "the first stage must be explicit, at t0: `a[0] == (0,)`, `c[0] == 0`."
            )
        for i, row in enumerate(self.a):
            if len(row) != i + 1:
                raise ValueError(f"row {i} of `a` must have {i + 1} entries.")
            if not np.isclose(sum(row), self.c[i], rtol=0, atol=1e-10):
                raise ValueError(f"row {i} of `a` does not sum to c[{i}].")
        diagonal = {row[i] for i, row in enumerate(self.a) if i > 0}
        if len(diagonal) != 1 or self.gamma <= 0:
            raise ValueError(
                "the implicit stages must share one positive diagonal entry γ "
                f"(singly diagonally implicit); got {sorted(diagonal)}."
            )
        if not np.isclose(sum(self.b), 1.0, rtol=0, atol=1e-10):
            raise ValueError("`b` must sum to one (consistency).")
        if (self.b_error is None) != (self.embedded_order is None):
            raise ValueError("give `b_error` and `embedded_order` together.")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError("`b_error` must have one entry per stage.")

    @property
    def num_stages(self) -> int:
        return len(self.b)

    @property
    def gamma(self) -> float:
        return self.a[1][1]

    @property
    def stiffly_accurate(self) -> bool:
        """Whether the last stage value is `y1` (so the last stage is `f(t1, y1)`)."""
        return self.c[-1] == 1 and tuple(self.a[-1]) == tuple(self.b)

    def dense_matrix(self) -> np.ndarray:
        """`P` of the Hermite continuous extension (see `ButcherTableau`)."""
        return hermite_dense_matrix(np.asarray(self.b), self.stiffly_accurate)


def _lincomb(y0, h, coeffs, ks):
    """`y0 + h sum_i coeffs[i] ks[i]` on flat vectors, skipping zero weights."""
    out = y0
    for w, k in zip(coeffs, ks, strict=False):
        if w != 0:
            term = (h * w) * k
            out = term if out is None else out + term
    return jnp.zeros_like(ks[0]) if out is None else out


class AbstractImplicitRungeKutta(AbstractSolver):
    """A diagonally implicit Runge--Kutta method defined by its `tableau` (an
    `ImplicitTableau` class attribute).

    Each step evaluates the Jacobian of `f` once, near its start, factorises
    `I - hγ J` once (lineax's LU), and solves every implicit stage by chord
    iterations with that factorisation (see `_newton`). A stage that does not
    converge makes the step fail with `RESULTS.nonlinear_solve_failed`: the loop
    rejects it and an adaptive controller retries it shorter.

    **Arguments:** (the settings of the stage iterations)

    - `rtol`, `atol`: tolerances of the stage solves, in the norm the step-size
      controller uses. `None` (default): the controller's own `rtol`/`atol`; with
      constant steps, `10 sqrt(eps)` of the state's dtype. Never below
      `100 eps`, which rounding cannot beat.
    - `kappa`: the iteration stops when its estimated remaining error is below
      `kappa` times the tolerance (Hairer & Wanner's κ; 1e-2).
    - `max_iterations`: sweeps per stage with one Jacobian.
    - `max_refreshes`: how many times a stage whose iteration diverges or does
      not converge within `max_iterations` re-evaluates the Jacobian at its
      current iterate and starts again; after that the step fails.

    The state carried between steps is `f(t, y)`. Derivatives through a step
    never differentiate the iterations: each stage's tangent is one linear solve
    at the computed root (the implicit-function theorem), and its pullback the
    transposed solve, so `DirectAdjoint` and `CheckpointedAdjoint` give the exact
    gradient of the computed solution, and forward mode (`jax.jvp`) works with
    `DirectAdjoint`. Second derivatives: `jax.jacfwd(jax.jacfwd(...))` and
    `jax.jacrev(jax.jacrev(...))` are exact; `jax.hessian` raises an error (see
    `solvers._newton.implicit_root`).
    """

    tableau: eqx.AbstractClassVar[ImplicitTableau]
    rtol: float | None = None
    atol: float | None = None
    kappa: float = eqx.field(static=True, default=1e-2)
    max_iterations: int = eqx.field(static=True, default=10)
    max_refreshes: int = eqx.field(static=True, default=2)

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        e = self.tableau.embedded_order
        return None if e is None else e + 1

    @property
    def evaluates_jacobian(self) -> bool:
        return True

    def with_controller(self, controller) -> "AbstractImplicitRungeKutta":
        rtol = self.rtol if self.rtol is not None else getattr(controller, "rtol", None)
        atol = self.atol if self.atol is not None else getattr(controller, "atol", None)
        return eqx.tree_at(
            lambda s: (s.rtol, s.atol),
            self,
            (rtol, atol),
            is_leaf=lambda x: x is None,
        )

    def _settings(self, dtype) -> NewtonSettings:
        eps = float(jnp.finfo(dtype).eps)
        default = 10 * eps**0.5

        def resolve(tol):
            tol = default if tol is None else tol
            return jnp.maximum(jnp.asarray(tol, dtype), 100 * eps)

        return NewtonSettings(
            rtol=resolve(self.rtol),
            atol=resolve(self.atol),
            kappa=self.kappa,
            max_iterations=self.max_iterations,
            max_refreshes=self.max_refreshes,
        )

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
        y0_flat, unravel = ravel_pytree(y0)
        dtype = y0_flat.dtype
        settings = self._settings(dtype)
        field = flat_field(f, args, unravel)
        h = (t1 - t0).astype(dtype)
        hgamma = h * tab.gamma
        f0 = ravel_pytree(state)[0].astype(dtype)
        # The Newton matrix, with the Jacobian where the first implicit stage's
        # iteration starts (an Euler step to its node): at y0 itself a stiff
        # term that is switched off (Robertson's y2 = 0) would be invisible.
        # Not differentiated: it only steers the iterations.
        c1 = tab.c[1]
        point = lax.stop_gradient((t0 + c1 * (t1 - t0), y0_flat + (c1 * h) * f0))
        frozen_field = flat_field(*_stop_gradient((f, args)), unravel)
        jac = jacobian(frozen_field, *point)
        n = y0_flat.shape[0]
        step_lu = factorise(jnp.eye(n, dtype=dtype) - lax.stop_gradient(hgamma) * jac)

        # The implicit stages in a loop: reverse mode's transpose of it then
        # accumulates the parameters' cotangent in its carry, where unrolled
        # stages kept one buffer per stage alive until their sum. Stage i reads
        # the explicit part of its row, `a[i][:i]` (the diagonal is in `hγ`).
        s = tab.num_stages
        explicit_rows = tuple(row[:i] for i, row in enumerate(tab.a))

        def stage(i, carry):
            ks, lu, ok, evals, jac_evals = carry
            c_i, a_part = stage_rows(i, ks, tab.c, explicit_rows)
            base = y0_flat + h * a_part
            ti = t0 + (c_i * (t1 - t0)).astype(jnp.result_type(t0))
            guess = lax.stop_gradient(ks[i - 1])
            # A Jacobian refreshed by one stage serves the later ones' iterations;
            # every stage's pullback is preconditioned by the step's own.
            k, converged, iterations, refreshes, lu = solve_stage(
                (f, args, ti, base, hgamma), guess, lu, settings, unravel, step_lu
            )
            return (
                ks.at[i].set(k),
                lu,
                ok & converged,
                evals + iterations,
                jac_evals + refreshes,
            )

        stages = jnp.zeros((s, n), dtype).at[0].set(f0)
        zero = jnp.asarray(0, jnp.int32)
        init = (stages, step_lu, jnp.array(True), zero, zero + 1)
        stages, _, ok, evals, jac_evals = lax.fori_loop(1, s, stage, init)
        ks = list(stages)
        y1_flat = _lincomb(y0_flat, h, tab.b, ks)
        if tab.stiffly_accurate:
            f1 = ks[-1]
        else:
            f1 = field(t1, y1_flat)
            ks.append(f1)
            evals = evals + 1
        y_error = None
        if tab.b_error is not None:
            y_error = unravel(_lincomb(None, h, tab.b_error, ks[: tab.num_stages]))
        return SolverStep(
            y1=unravel(y1_flat),
            y_error=y_error,
            dense_info=jnp.stack(ks),
            state=unravel(f1),
            result=RESULTS.where(
                ok, RESULTS.successful, RESULTS.nonlinear_solve_failed
            ),
            num_f_evals=evals,
            num_jac_evals=jac_evals,
        )

    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        y0_flat, unravel = ravel_pytree(y0)
        h = t1 - t0
        theta = step_fraction(t0, t1, t)
        P = self.tableau.dense_matrix()
        powers = theta ** np.arange(1, P.shape[1] + 1)
        weights = (h * (jnp.asarray(P, dtype=theta.dtype) @ powers)).astype(
            dense_info.dtype
        )
        return unravel(y0_flat + weights @ dense_info)
