"""Shared test problems and comparisons."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


# A nonlinear, non-autonomous 3-d test field: y' = A tanh(y) + 0.3 sin(t).
A3 = np.array([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.1], [0.3, -0.2, -0.4]])
Y3 = np.array([1.0, -0.5, 0.25])


def tanh_field(t, y, args):
    return args["A"] @ jnp.tanh(y) + 0.3 * jnp.sin(t)


def linear_field(t, y, args):
    """y' = M y; exact solution expm(M (t - t0)) y0."""
    return args @ y


# A rotation with decay: eigenvalues -0.1 ± 2i, so solutions oscillate and shrink.
M2 = np.array([[-0.1, 2.0], [-2.0, -0.1]])
Y2 = np.array([1.0, 0.5])


def linear_exact(M, y0, t0, t):
    """expm(M (t - t0)) y0 for a scalar or a vector of times `t`."""
    import scipy.linalg

    t = np.atleast_1d(np.asarray(t, dtype=float))
    return np.stack([scipy.linalg.expm(M * (ti - t0)) @ y0 for ti in t])


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over all leaves of two matching pytrees."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = max(
        float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
        for x, y in zip(la, lb, strict=True)
    )
    den = max(float(jnp.max(jnp.abs(jnp.asarray(y)))) for y in lb)
    return num / den


def convergence_slope(step_sizes, errors) -> float:
    """Least-squares slope of log(error) against log(step size)."""
    return float(np.polyfit(np.log(step_sizes), np.log(errors), 1)[0])


# --- memory of a compiled gradient (DESIGN §3) -------------------------------------

# A state big enough that stored states dominate a step's own working memory.
BIG = 256


def gradient_temp_mib(adjoint, num_steps) -> float:
    """XLA temp memory (MiB) of the compiled gradient of a (4, BIG) float64 solve,
    y' = tanh(y w), with `num_steps` constant Tsit5 steps and `adjoint`."""
    import adjointkit as ak

    w = jnp.asarray(np.random.default_rng(0).normal(size=(BIG, BIG)) / BIG)

    def loss(w):
        sol = ak.solve(
            lambda t, y, w: jnp.tanh(y @ w), ak.Tsit5(), 0.0, 1.0,
            jnp.ones((4, BIG)), w, dt0=1.0 / num_steps, adjoint=adjoint,
            max_steps=num_steps,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    compiled = jax.jit(jax.grad(loss)).lower(w).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


# --- parameters: which combinations run by default --------------------------------


def crossed(first, second, *, fast=None, slow=()):
    """Every pair of `first` x `second` as a `pytest.param(a, b, id="a-b")`, for
    `@pytest.mark.parametrize(("a", "b"), ...)`. Each side is a list of names (a
    name is its own value) or a dict from id to value.

    The default run (DESIGN: 10 minutes on two cores) keeps the pairs that cover a
    path once: a pair is marked `slow` when its ids are in `slow`, or, given
    `fast`, when they are not in `fast`.
    """

    def items(side):
        return side.items() if isinstance(side, dict) else ((n, n) for n in side)

    return [
        pytest.param(
            a,
            b,
            id=f"{ia}-{ib}",
            marks=pytest.mark.slow
            if (ia, ib) in slow or (fast is not None and (ia, ib) not in fast)
            else (),
        )  # fmt: skip
        for ia, a in items(first)
        for ib, b in items(second)
    ]
