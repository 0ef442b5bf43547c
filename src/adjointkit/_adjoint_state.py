"""The state of a continuous adjoint's backward solve."""

import equinox as eqx
from jaxtyping import PyTree


class AdjointState(eqx.Module):
    """What a continuous adjoint integrates backward in time.

    The state of `BacksolveAdjoint`'s augmented backward ODE (all three parts),
    of `InterpolatedAdjoint`'s (`a` and `a_params`) and of `QuadratureAdjoint`'s
    (`a` alone, the parameter integral added by quadrature); see
    `docs/pullback.md` for the derivation.

    **Attributes:**

    - `y`: the primal state, run backward alongside (`BacksolveAdjoint` only;
      `None` when it is read from an interpolation instead);
    - `a`: the adjoint `a(t) = dL/dy(t)`, with `a' = -(df/dy)^T a`;
    - `a_params`: the running integral of `a^T df/dθ` from `t` to `t1`, which is
      the parameters' cotangent once it reaches `t0` (for `QuadratureAdjoint`
      accumulated by quadrature, its derivative reported as zero).

    `adjoint_seminorm` leaves `a_params` out of step-size control.

    Reference: R. T. Q. Chen, Y. Rubanova, J. Bettencourt and D. Duvenaud, "Neural
    ordinary differential equations", NeurIPS 2018 (the augmented state).
    """

    y: PyTree
    a: PyTree
    a_params: PyTree
