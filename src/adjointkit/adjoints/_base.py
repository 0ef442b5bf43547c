"""The adjoint seam: how the pullback of a solve is obtained."""

import abc

import equinox as eqx

from .._problem import Problem
from .._solution import Solution


class AbstractAdjoint(eqx.Module):
    """A way of differentiating a solve.

    An implementation provides `solve(problem) -> Solution`: it runs the forward
    solve through the library's one integration loop (see
    [Architecture](../architecture.md)), choosing what to record per step, and
    owns how reverse-mode differentiation of the result works — by
    differentiating the loop itself (`DirectAdjoint`), or with a `jax.custom_vjp`
    that replays steps from checkpoints or solves the adjoint ODE backward in time.

    Every adjoint gives cotangents for `y0`, `args`, the parameters of `f`, `t0`,
    `t1`, the values saved at `SaveAt(ts=...)` and the times `ts`; where one
    cannot, it raises an error at trace time rather than return a zero.
    """

    @abc.abstractmethod
    def solve(self, problem: Problem) -> Solution:
        """Run the solve; the result is differentiable the way this adjoint says.

        **Arguments:**

        - `problem`: the validated problem that `solve` built, in ascending loop
          time (an internal type; [Architecture](../architecture.md) describes it).

        **Returns:** the `Solution`, whose reverse-mode derivative (and, where
        supported, forward-mode) is this adjoint's.
        """
