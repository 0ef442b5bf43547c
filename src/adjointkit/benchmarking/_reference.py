"""Reference gradients for the stiff benchmark problems, independent of every
adjoint being judged."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._compat import enable_x64
from ._problems import BenchProblem


def sensitivity_grad(problem: BenchProblem, rtol: float = 1e-12):
    """The gradient of `problem.loss(y(t1))` with respect to `problem.params` from
    the forward sensitivity equations S' = (∂f/∂y) S + ∂f/∂p, S(t0) = 0, solved
    with the state as one ODE by Rodas5 in float64 at `rtol` (`atol = rtol *
    problem.atol_scale`): dL/dp = ∇L(y(t1)) S(t1). No adjoint is involved, only a
    forward solve, so it judges every adjoint alike.

    The augmented state has n (p + 1) components and Rodas5 factorises its dense
    Jacobian: for small problems (Robertson, van der Pol), not for a Neural ODE.

    **Returns:** the gradient, a pytree of NumPy arrays shaped like `params`.
    """
    import adjointkit as ak

    with enable_x64(True):
        params, unravel_p = ravel_pytree(problem.params)
        y0, unravel_y = ravel_pytree(problem.y0)
        params, y0 = params.astype(jnp.float64), y0.astype(jnp.float64)

        def field(t, y, p):
            return ravel_pytree(problem.f(t, unravel_y(y), unravel_p(p)))[0]

        def augmented(t, z, args):
            del args
            y, S = z
            jy = jax.jacfwd(field, 1)(t, y, params)
            jp = jax.jacfwd(field, 2)(t, y, params)
            return field(t, y, params), jy @ S + jp

        @jax.jit
        def grad():
            sol = ak.solve(
                augmented,
                ak.Rodas5(),
                problem.t0,
                problem.t1,
                (y0, jnp.zeros((y0.size, params.size), jnp.float64)),
                None,
                controller=ak.PIDController(rtol=rtol, atol=rtol * problem.atol_scale),
                max_steps=1_000_000,
            )
            y1, S1 = sol.ys[0][-1], sol.ys[1][-1]
            dloss = jax.grad(lambda y: problem.loss(unravel_y(y)))(y1)
            return unravel_p(dloss @ S1)

        return jax.tree_util.tree_map(np.asarray, grad())


def tight_grad(problem: BenchProblem, rtol: float = 1e-10, solver: str = "rodas5"):
    """The gradient of `problem.loss(y(t1))` through a float64 solve at a tight
    `rtol` (`atol = rtol * problem.atol_scale`) by `solver` (Rodas5 by default),
    differentiated with `CheckpointedAdjoint`: the exact derivative of a solution
    far more accurate than the ones judged. For problems too large for
    `sensitivity_grad` (the stiff Neural ODE).

    **Returns:** the gradient, a pytree of NumPy arrays shaped like `params`.
    """
    import adjointkit as ak

    from ._runners import adjointkit_loss

    with enable_x64(True):
        loss = adjointkit_loss(
            problem, ak.CheckpointedAdjoint(), 100_000, rtol, solver=solver
        )
        grad = jax.jit(jax.grad(lambda p: loss(p)[0]))(problem.params)
        return jax.tree_util.tree_map(np.asarray, grad)
