"""The state of a continuous adjoint's backward solve."""

import equinox as eqx
from jaxtyping import PyTree


class AdjointState(eqx.Module):
    """What a continuous adjoint integrates backward in time.

    - `y`: the primal state, run backward alongside (`BacksolveAdjoint` only;
      `None` when it is read from an interpolation instead);
    - `a`: the adjoint `a(t) = dL/dy(t)`, with `a' = -(df/dy)^T a`;
    - `a_params`: the running integral of `a^T df/dθ`, the parameters' cotangent
      (`None` for `QuadratureAdjoint`, which integrates it by quadrature instead).
    """

    y: PyTree
    a: PyTree
    a_params: PyTree
