"""Implicit stages: chord iterations with one LU factorisation per step, and their
exact derivatives by the implicit-function theorem.

A diagonally implicit stage solves `k = F(k) = f(t, base + hγ k, args)` for the
stage derivative `k`. The Newton matrix `M = I - hγ J` uses the Jacobian `J` of
`f` at the step's start, factorised once (LAPACK's LU through
`jax.scipy.linalg.lu_factor`) and reused by every stage and iteration of the step
(chord, or simplified Newton, iteration; E. Hairer and G. Wanner, *Solving
Ordinary Differential Equations II*, 2nd ed., Springer 1996, section IV.8, whose
stopping test is used here).

Differentiation never goes through the iterations. At the root, `k = F(k, p)` for
inputs `p`, so the tangent along `ṗ` solves `(I - ∂F/∂k) k̇ = (∂F/∂p) ṗ` with
`∂F/∂k = hγ J(Y)` at the stage value `Y` (`implicit_root`'s JVP rule, a
`lax.custom_linear_solve`); reverse mode transposes it into `(I - ∂F/∂k)^T λ = k̄`,
`p̄ = (∂F/∂p)^T λ`. Either system is solved by iterative refinement
preconditioned with the forward pass's factorisation (one product with `f`'s
derivative per sweep); it contracts at the rate the forward iteration did, since
the iteration matrices are the same (or transposes). If it has not converged
after a few sweeps the exact matrix at `Y` is formed and factorised instead, so
the result is always the implicit-function derivative at the computed root.
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
    k = implicit_root(diff, lax.stop_gradient(k), pullback_lu, unravel=unravel)
    return k, converged, iterations, refreshes, lu


@eqx.filter_custom_jvp
def implicit_root(diff, k, lu, *, unravel):
    """`k`, a computed root of `k = F(k) = f(t, base + hγ k, args)` with
    `diff = (f, args, t, base, hgamma)`, given the derivatives of that root with
    respect to `diff` (the implicit-function theorem, see the module's
    docstring). `lu` factorises an approximation of `I - hγ J`; it only
    preconditions the linear solves of the derivatives.

    Forward mode uses the JVP rule below, and reverse mode its transpose; so do
    second derivatives by `jax.jacfwd(jax.jacfwd(...))` and, inside a loop,
    `jax.jacrev(jax.jacrev(...))`. Its primal function is `_root_by_vjp`, see
    there for why."""
    return _root_by_vjp(diff, k, lu, unravel=unravel)


@implicit_root.def_jvp
def _implicit_root_jvp(primals, tangents, *, unravel):
    diff, k, lu = primals
    ddiff, _, _ = tangents
    # The root through this function again: under a second differentiation its
    # own tangent is the implicit-function one too, where the `k` passed in
    # carries none (the iterations are not differentiated).
    k = implicit_root(diff, k, lu, unravel=unravel)
    # Checkpointed: reverse mode keeps this rule's inputs, not f's intermediate
    # values at the stage, and re-evaluates them when it transposes.
    dk = eqx.filter_checkpoint(
        lambda diff, k, lu, ddiff: _root_tangent(diff, k, lu, ddiff, unravel=unravel)
    )(diff, k, lu, ddiff)
    return k, dk


@eqx.filter_custom_vjp
def _root_by_vjp(diff, k, lu, *, unravel):
    """`implicit_root`'s primal function: `k`, with the implicit-function pullback
    as a custom VJP.

    When JAX linearises a `lax.scan` (an ESDIRK step's stage loop, a solve's step
    loop) it computes the primal values that the tangent part reads — here the
    root, which the rule's linear solve needs — by a custom JVP's primal
    *function*, not its rule. A second reverse-mode pass
    (`jax.jacrev(jax.jacrev(...))`) then differentiates this function, and
    finds the pullback it needs here; were it `k` passed through, the root
    would have no derivative there. Forward mode over that linearisation
    (`jax.hessian`, which is `jax.jacfwd(jax.jacrev(...))`) cannot go through a
    custom VJP, and JAX says so instead of returning a Hessian without the
    root's second-order terms (which is what it returned before)."""
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


def _sweeps_or_exact(apply, precondition, matrix, b):
    """`x` with `apply(x) = b` for the linear map `apply`: iterative refinement
    preconditioned by `precondition` (an approximate inverse), and if that has not
    converged to rounding after `_REFINEMENT_SWEEPS` sweeps, the exact solve with
    `matrix()` (the map as a dense matrix, formed only then)."""
    eps = jnp.finfo(b.dtype).eps

    def cond(carry):
        _, m, done = carry
        return ~done & (m < _REFINEMENT_SWEEPS)

    def body(carry):
        x, m, _ = carry
        ax = apply(x)
        r = b - ax
        # `apply(x) = x - d`: the rounding error of forming it is relative to
        # the sizes of b, x and d.
        size = jnp.max(jnp.abs(b)) + jnp.max(jnp.abs(x)) + jnp.max(jnp.abs(x - ax))
        done = jnp.max(jnp.abs(r)) <= 4 * eps * size
        x = jnp.where(done, x, x + precondition(r))
        return x, m + 1, done

    x, _, done = lax.while_loop(
        cond, body, (precondition(b), jnp.asarray(0, jnp.int32), jnp.array(False))
    )

    def exact(_):
        return lx.linear_solve(lx.MatrixLinearOperator(matrix()), b, lx.LU()).value

    return lax.cond(done, lambda _: x, exact, None)


def _stage_operator(diff, k, lu, unravel):
    """The linearised stage equation at the root, `A = I - ∂F/∂k` with
    `∂F/∂k = hγ J(Y)` at the stage value `Y`: `(matvec, solve,
    transpose_solve)` for `lax.custom_linear_solve`. Both solves are
    `_sweeps_or_exact` preconditioned by the step's factorisation (or its
    transpose): they contract at the rate the forward chord iteration did, whose
    iteration matrix is the same."""

    def dF(x):
        return jax.jvp(lambda kk: _residual(diff, kk, unravel), (k,), (x,))[1]

    def matvec(x):
        return x - dF(x)

    def matrix():
        return jnp.eye(k.shape[0], dtype=k.dtype) - jacobian_by_columns(dF, k)

    def solve(matvec, b):
        return _sweeps_or_exact(matvec, lambda r: lu_solve(lu, r), matrix, b)

    def transpose_solve(vecmat, b):
        return _sweeps_or_exact(
            vecmat, lambda r: lu_solve(lu, r, transpose=True), lambda: matrix().T, b
        )

    return matvec, solve, transpose_solve


def _root_tangent(diff, k, lu, ddiff, *, unravel):
    """The tangent of the root `k` along `ddiff`: `A k̇ = (∂F/∂diff) ḋiff` at the
    computed root, as a `lax.custom_linear_solve`, so that reverse mode
    transposes it into `A^T λ = k̄`, `diff̄ = (∂F/∂diff)^T λ`."""
    _, rhs = eqx.filter_jvp(lambda d: _residual(d, k, unravel), (diff,), (ddiff,))
    if rhs is None:
        return jnp.zeros_like(k)
    matvec, solve, transpose_solve = _stage_operator(diff, k, lu, unravel)
    return lax.custom_linear_solve(matvec, rhs, solve, transpose_solve)


def _root_tangent_transpose(diff, k, lu, k_bar, *, unravel):
    """`λ` with `A^T λ = k̄` (the pullback of the root is `(∂F/∂diff)^T λ`)."""
    matvec, _, transpose_solve = _stage_operator(diff, k, lu, unravel)
    vecmat = jax.linear_transpose(matvec, k)
    return transpose_solve(lambda x: vecmat(x)[0], k_bar)


@_root_by_vjp.def_fwd
def _root_by_vjp_fwd(perturbed, diff, k, lu, *, unravel):
    del perturbed, diff, lu, unravel
    return k, None


@_root_by_vjp.def_bwd
def _root_by_vjp_bwd(residuals, k_bar, perturbed, diff, k, lu, *, unravel):
    del residuals, perturbed
    zeros = jax.tree_util.tree_map(
        jnp.zeros_like, eqx.filter(diff, eqx.is_inexact_array)
    )
    if k_bar is None:
        return zeros
    lam = _root_tangent_transpose(diff, k, lu, k_bar, unravel=unravel)
    _, vjp = eqx.filter_vjp(lambda d: _residual(d, k, unravel), diff)
    return vjp(lam)[0]
