"""Tableau coefficients inside a loop over stages, whose stage number is traced."""

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Int, Real

from .._tree import tree_lincomb


def stage_rows(
    i: Int[Array, ""], stages: Real[Array, "s n"], c, *tables
) -> tuple[Real[Array, ""], ...]:
    """`(c[i], Σ_j T[i][j] stages[j] for each table T in tables)` for the traced
    stage number `i`: `c` has one number per stage, and each table one row per
    stage (row `i` may be shorter than `s`; missing entries are zero).

    One `lax.switch` branch per stage, in which the coefficients are Python
    numbers. Indexing an array of them by `i` instead would make that array a
    constant of the loop body, which reverse mode keeps once per step of a
    solve (measured: Rodas5's gradient with `DirectAdjoint` on Robertson's
    problem, 28.3 -> 18.5 KiB of XLA temp memory).
    """

    def branch(r):
        def values(stages):
            ks = list(stages)
            combos = tuple(tree_lincomb(None, 1.0, table[r], ks) for table in tables)
            return (jnp.asarray(c[r], stages.dtype), *combos)

        return values

    return lax.switch(i, [branch(r) for r in range(len(c))], stages)
