"""Implicit stages: chord iterations with one LU factorisation per step, and their
exact pullback by the implicit-function theorem.

A diagonally implicit stage solves `k = F(k) = f(t, base + hγ k, args)` for the
stage derivative `k`. The Newton matrix `M = I - hγ J` uses the Jacobian `J` of
`f` at the step's start, factorised once (LAPACK's LU through
`jax.scipy.linalg.lu_factor`) and reused by every stage and iteration of the step
(chord, or simplified Newton, iteration; E. Hairer and G. Wanner, *Solving
Ordinary Differential Equations II*, 2nd ed., Springer 1996, section IV.8, whose
stopping test is used here).

Reverse mode never differentiates the iterations. At the root, `k = F(k, p)` for
inputs `p`, so the pullback of a cotangent `k̄` is `p̄ = (∂F/∂p)^T λ` with
`(I - ∂F/∂k)^T λ = k̄` and `∂F/∂k = hγ J(Y)` at the stage value `Y`. That
transposed system is solved by iterative refinement preconditioned with the
forward pass's factorisation (one VJP of `f` per sweep); it contracts at the rate
the forward iteration did, since the two iteration matrices are transposes of
each other. If it has not converged after a few sweeps the exact matrix at `Y` is
formed and factorised instead, so the result is always the implicit-function
derivative at the computed root.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.scipy as jsp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Real


_REFINEMENT_SWEEPS = 8
# A chord iteration contracting slower than this asks for a fresh Jacobian.
_SLOW = 0.5


class NewtonSettings(eqx.Module):
    """How hard a stage's chord iteration tries (resolved tolerances)."""

    rtol: Real[Array, ""]
    atol: Real[Array, ""]
    kappa: float = eqx.field(static=True)
    max_iterations: int = eqx.field(static=True)
    max_refreshes: int = eqx.field(static=True)


def flat_field(f: Callable, args: PyTree, unravel: Callable) -> Callable:
    """`f` on flat vectors: `(t, y_flat) -> f(t, y, args)` flattened."""

    def field(t, y_flat):
        return ravel_pytree(f(t, unravel(y_flat), args))[0].astype(y_flat.dtype)

    return field


def factorise(matrix: Real[Array, "n n"]):
    """The LU factorisation of `matrix` with partial pivoting, as the arrays
    `(lu, pivots)` that a loop can carry.

    It is the factorisation lineax's `LU` solver makes (both call
    `jax.scipy.linalg.lu_factor`); it is called directly because lineax's solver
    state around it is not a stable interface across lineax versions."""
    return jsp.linalg.lu_factor(matrix)


def lu_solve(lu, vector: Real[Array, " n"], transpose: bool = False):
    """`matrix^{-1} vector` (or `matrix^{-T} vector`) from `factorise(matrix)`."""
    return jsp.linalg.lu_solve(lu, vector, trans=1 if transpose else 0)


def jacobian_by_columns(fun: Callable, x: Real[Array, " n"]) -> Real[Array, "n n"]:
    """`∂fun/∂x` one column at a time (a loop of `n` forward-mode products).

    `jax.jacfwd` pushes all `n` tangents through `fun` at once, so its
    intermediates are `n` times those of one evaluation: for a neural network
    field, far more than the matrix itself. Where a Jacobian is needed only
    rarely (a refresh after a failed iteration, the exact fallback of a stage's
    pullback), that peak is paid for nothing; a loop of single products keeps
    it to one evaluation's intermediates (measured on an 8-32-32-8 MLP field
    with a batch of 4: the compiled gradient's temporary memory 479 -> 289 KiB).
    """
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    return lax.map(lambda v: jax.jvp(fun, (x,), (v,))[1], basis).T


def jacobian(field: Callable, t, y_flat) -> Real[Array, "n n"]:
    """`∂f/∂y` at `(t, y)` by forward mode, as a dense matrix."""
    return jax.jacfwd(lambda y: field(t, y))(y_flat)


def _scaled_rms(x, scale) -> Real[Array, ""]:
    return jnp.sqrt(jnp.mean(jnp.square(x / scale)))


def _residual(diff, k, unravel):
    """`F(k)` of one stage, as a function of its differentiable inputs."""
    f, args, t, base, hgamma = diff
    y = base + hgamma * k
    return flat_field(f, args, unravel)(t, y)


def _stop_gradient(tree):
    """`lax.stop_gradient` of the arrays of a pytree that may hold functions."""
    dynamic, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(lax.stop_gradient(dynamic), static)


def solve_stage(diff, guess, lu, settings: NewtonSettings, unravel, pullback_lu=None):
    """Solve one implicit stage `k = f(t, base + hγ k, args)` by chord
    iterations.

    **Arguments:**

    - `diff`: `(f, args, t, base, hgamma)`, the stage's differentiable inputs
      (`base` and the result are flat vectors).
    - `guess`: the starting value of `k`.
    - `lu`: `factorise(I - hγ J)` for some recent Jacobian `J`.
    - `settings`: tolerances and iteration limits.
    - `unravel`: maps a flat vector back to the state's pytree.
    - `pullback_lu`: the factorisation that preconditions the stage's pullback
      (default: the one the iteration finished with). A step passes its own,
      the same for every stage, so that reverse mode keeps it once per step
      rather than once per stage.

    **Returns:** `(k, converged, iterations, refreshes, lu)`: the stage, whether
    the iteration converged, how many evaluations of `f` it made, how many times
    it re-evaluated the Jacobian (when the given one made it diverge or crawl),
    and the factorisation it finished with (for the next stage). Derivatives of
    `k` are those of the root (`implicit_root`), never of the iterations.
    """
    k, converged, iterations, refreshes, lu = _newton(
        _stop_gradient(diff), lax.stop_gradient(guess), lu, settings, unravel
    )
    lu = lax.stop_gradient(lu)
    pullback_lu = lu if pullback_lu is None else lax.stop_gradient(pullback_lu)
    k = implicit_root(diff, lax.stop_gradient(k), pullback_lu, unravel)
    return k, converged, iterations, refreshes, lu


@eqx.filter_custom_vjp
def implicit_root(diff, k, lu, unravel):
    """`k`, a computed root of `k = F(k) = f(t, base + hγ k, args)` with
    `diff = (f, args, t, base, hgamma)`, given the derivatives of that root with
    respect to `diff` (the implicit-function theorem, see the module's
    docstring). `lu` factorises an approximation of `I - hγ J`; it only
    preconditions the transposed solve."""
    del diff, lu, unravel
    return k


def _chord(diff, k0, lu, settings: NewtonSettings, unravel):
    """Chord sweeps from `k0` with the factorisation `lu`, until converged,
    diverging, or out of sweeps. Returns `(k, done, sweeps, k_safe)`, `k_safe`
    the last iterate reached by a contracting sweep (where to restart from)."""
    _, _, _, base, hgamma = diff
    scale = settings.atol + settings.rtol * jnp.abs(base)

    def cond(carry):
        _, _, m, _, done, bad = carry
        return ~done & ~bad & (m < settings.max_iterations)

    def body(carry):
        k, _, m, prev_norm, _, _ = carry
        delta = lu_solve(lu, _residual(diff, k, unravel) - k)
        k_new = k + delta
        norm = _scaled_rms(hgamma * delta, scale)
        rate = norm / jnp.where(prev_norm > 0, prev_norm, 1.0)
        # Stopping test of Hairer & Wanner IV.8: the remaining error
        # rate/(1-rate)·‖Δ‖ below κ·tol; on the first sweep, with no rate known
        # yet, the update itself must be far below it.
        eta = jnp.where(m == 0, 10.0, rate / jnp.maximum(1 - rate, 1e-30))
        done = (norm == 0) | (eta * norm <= settings.kappa)
        # Diverging, or contracting too slowly to be worth continuing with this
        # Jacobian: stop (a diverging sweep is undone) and let the caller
        # refresh it.
        diverging = ~jnp.isfinite(norm) | ((m > 0) & (rate >= 1))
        bad = (diverging | ((m > 0) & (rate > _SLOW))) & ~done
        k_keep = jnp.where(diverging & ~done, k, k_new)
        return k_keep, k, m + 1, norm, done, bad

    dtype = base.dtype
    init = (k0, k0, jnp.asarray(0, jnp.int32), jnp.asarray(0, dtype))
    init += (jnp.array(False), jnp.array(False))
    k, _, m, _, done, _ = lax.while_loop(cond, body, init)
    return k, done, m


def _newton(diff, guess, lu, settings: NewtonSettings, unravel):
    k, done, sweeps = _chord(diff, guess, lu, settings, unravel)

    # Refreshes run only if some stage needs one (also under vmap: the loop's
    # body, with its Jacobian, runs while any element is unconverged).
    def cond(carry):
        _, done, _, refreshes, _ = carry
        return ~done & (refreshes < settings.max_refreshes)

    def body(carry):
        k, _, sweeps, refreshes, _ = carry
        frozen = _stop_gradient(diff)
        dF = jacobian_by_columns(
            lambda k: _residual(frozen, k, unravel), lax.stop_gradient(k)
        )
        lu = factorise(jnp.eye(k.shape[0], dtype=k.dtype) - dF)
        k, done, more = _chord(diff, k, lu, settings, unravel)
        return k, done, sweeps + more, refreshes + 1, lu

    zero = jnp.asarray(0, jnp.int32)
    k, done, sweeps, refreshes, lu = lax.while_loop(
        cond, body, (k, done, sweeps, zero, lu)
    )
    return k, done, sweeps, refreshes, lu


@implicit_root.def_fwd
def _implicit_root_fwd(perturbed, diff, k, lu, unravel):
    del perturbed, diff, lu, unravel
    return k, None


@implicit_root.def_bwd
def _implicit_root_bwd(residuals, k_bar, perturbed, diff, k, lu, unravel):
    del residuals, perturbed
    zeros = jax.tree_util.tree_map(
        jnp.zeros_like, eqx.filter(diff, eqx.is_inexact_array)
    )
    if k_bar is None:
        return zeros
    _, vjp = eqx.filter_vjp(lambda d, k: _residual(d, k, unravel), diff, k)
    eps = jnp.finfo(k.dtype).eps

    # Iterative refinement of (I - hγ J(Y))^T λ = k̄ preconditioned by M^{-T}.
    def cond(carry):
        _, _, m, done = carry
        return ~done & (m < _REFINEMENT_SWEEPS)

    def body(carry):
        lam, _, m, _ = carry
        d_bar, dk = vjp(lam)
        r = k_bar - lam + dk
        size = jnp.max(jnp.abs(k_bar)) + jnp.max(jnp.abs(lam)) + jnp.max(jnp.abs(dk))
        done = jnp.max(jnp.abs(r)) <= 4 * eps * size
        lam = jnp.where(done, lam, lam + lu_solve(lu, r, transpose=True))
        return lam, d_bar, m + 1, done

    lam0 = lu_solve(lu, k_bar, transpose=True)
    lam, d_bar, _, done = lax.while_loop(
        cond, body, (lam0, zeros, jnp.asarray(0, jnp.int32), jnp.array(False))
    )

    def exact(_):
        # The matrix at the stage value itself: ∂F/∂k = hγ J(Y).
        dF = jacobian_by_columns(lambda k: _residual(diff, k, unravel), k)
        a = jnp.eye(k.shape[0], dtype=k.dtype) - dF
        lam = lx.linear_solve(lx.MatrixLinearOperator(a.T), k_bar, lx.LU()).value
        return vjp(lam)[0]

    return lax.cond(done, lambda _: d_bar, exact, None)
