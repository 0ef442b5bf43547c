"""Small pytree helpers shared by the solvers, controllers and adjoints."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, PyTree


def tree_lincomb(base: PyTree | None, scale, coeffs: Sequence[float], terms):
    """`base + scale * sum_i coeffs[i] * terms[i]`, leaf by leaf.

    Zero coefficients are skipped at trace time, so a sparse Butcher tableau row
    costs only its nonzero entries. `base=None` means zero. `scale` is cast to each
    leaf's dtype (times may be kept in a wider dtype than the state).
    """
    pairs = [(float(c), k) for c, k in zip(coeffs, terms, strict=False) if c != 0]
    if not pairs:
        return base if base is not None else jtu.tree_map(jnp.zeros_like, terms[0])
    cs = [c for c, _ in pairs]

    def leaf(b, *ks):
        acc = None
        for c, k in zip(cs, ks, strict=True):
            term = k if c == 1.0 else c * k
            acc = term if acc is None else acc + term
        acc = jnp.asarray(scale, dtype=acc.dtype) * acc
        return acc if b is None else b + acc

    ktrees = [k for _, k in pairs]
    if base is None:
        return jtu.tree_map(lambda *ks: leaf(None, *ks), *ktrees)
    return jtu.tree_map(leaf, base, *ktrees)


def tree_all_finite(tree: PyTree) -> Bool[Array, ""]:
    """Whether every entry of every floating leaf is finite (a scalar bool)."""
    leaves = [x for x in jtu.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def tree_where(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`jnp.where(pred, a, b)` for matching pytrees, with a scalar predicate."""
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def tree_stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack matching pytrees along a new leading axis."""
    return jtu.tree_map(lambda *xs: jnp.stack(xs), *trees)


def tree_dot(weights: Array, stacked: PyTree) -> PyTree:
    """`sum_i weights[i] * stacked[i]` for each leaf with a leading stage axis."""

    def leaf(x):
        w = weights.astype(x.dtype)
        return jnp.tensordot(w, x, axes=1)

    return jtu.tree_map(leaf, stacked)


def tree_stop_gradient(tree: PyTree) -> PyTree:
    """`lax.stop_gradient` on the array leaves of `tree`; other leaves (functions,
    strings, Python numbers held by an Equinox module) are left as they are."""
    return jtu.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree
    )


def tree_scale(a, tree: PyTree) -> PyTree:
    return jtu.tree_map(lambda x: (a * x).astype(x.dtype), tree)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    return jtu.tree_map(jnp.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jtu.tree_map(jnp.subtract, a, b)


def is_float_array(x) -> bool:
    return isinstance(x, jax.Array | jnp.ndarray) and jnp.issubdtype(
        x.dtype, jnp.floating
    )
