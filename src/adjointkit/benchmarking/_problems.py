"""Benchmark problems: a vector field, its parameters, an initial state, a loss."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._compat import enable_x64


@dataclasses.dataclass(frozen=True)
class BenchProblem:
    """A differentiable ODE problem for benchmarks.

    `f(t, y, params)` is the vector field; the loss of a solution's final state is
    `loss(y1)`; gradients are taken with respect to `params`.

    How a problem is solved by default, where it is not the explicit setting
    (Tsit5, `atol = rtol`, the caller's precision):

    - `solver`: the solver's name in `benchmarking`'s runners (`"tsit5"`;
      `"kvaerno5"` for the stiff problems).
    - `atol_scale`: `atol = atol_scale * rtol` (below 1 where a component of the
      state is far smaller than one: Robertson's y2 ~ 1e-5).
    - `x64`: the problem is float64 and must be solved with JAX's 64-bit types on
      (`jax.config.update("jax_enable_x64", True)` or `enable_x64()`).
    - `stiff`: an implicit solver under adaptive steps is the setting measured;
      constant explicit steps would take millions of steps.
    """

    name: str
    f: Callable
    params: PyTree
    y0: PyTree
    t0: float
    t1: float
    loss: Callable
    solver: str = "tsit5"
    atol_scale: float = 1.0
    x64: bool = False
    stiff: bool = False


def _mlp_field(t, y, params):
    del t
    h = y
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return h


def neural_ode(
    *,
    state: int = 32,
    width: int = 128,
    batch: int = 256,
    dtype=jnp.float32,
    seed: int = 0,
) -> BenchProblem:
    """The Neural ODE of DESIGN §4: an MLP field state→width→width→state with tanh,
    a batch of initial states, t in [0, 1], loss mean(y(1)²)."""
    key = jax.random.PRNGKey(seed)
    sizes = [state, width, width, state]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, kw = jax.random.split(key)
        w = jax.random.normal(kw, (fan_in, fan_out), dtype) / jnp.sqrt(fan_in)
        params.append((w, jnp.zeros((fan_out,), dtype)))
    key, ky = jax.random.split(key)
    y0 = jax.random.normal(ky, (batch, state), dtype)
    return BenchProblem(
        name="neural_ode",
        f=_mlp_field,
        params=params,
        y0=y0,
        t0=0.0,
        t1=1.0,
        loss=lambda y: jnp.mean(y**2),
    )


def _lotka_volterra_field(t, y, params):
    del t
    prey, predator = y[..., 0], y[..., 1]
    a, b, c, d = params["alpha"], params["beta"], params["gamma"], params["delta"]
    return jnp.stack(
        [a * prey - b * prey * predator, -c * predator + d * prey * predator], axis=-1
    )


def lotka_volterra(*, dtype=jnp.float32) -> BenchProblem:
    """Lotka--Volterra predator--prey over t in [0, 10]: oscillatory, four
    parameters; loss is the squared distance of the final state from (1, 1)."""
    params = {
        k: jnp.asarray(v, dtype)
        for k, v in {"alpha": 1.5, "beta": 1.0, "gamma": 3.0, "delta": 1.0}.items()
    }
    return BenchProblem(
        name="lotka_volterra",
        f=_lotka_volterra_field,
        params=params,
        y0=jnp.asarray([10.0, 1.0], dtype),
        t0=0.0,
        t1=10.0,
        loss=lambda y: jnp.sum((y - 1.0) ** 2),
    )


def _robertson_field(t, y, params):
    del t
    k1, k2, k3 = params[0], params[1], params[2]
    y1, y2, y3 = y[0], y[1], y[2]
    return jnp.stack(
        [
            -k1 * y1 + k3 * y2 * y3,
            k1 * y1 - k2 * y2**2 - k3 * y2 * y3,
            k2 * y2**2,
        ]
    )


# Robertson's loss weights: y2 (of order 1e-5) scaled to order one, so that the
# loss sees every species and its gradient every rate.
ROBERTSON_WEIGHTS = (1.0, 1e4, 0.5)


def robertson(*, t1: float = 1e4) -> BenchProblem:
    """Robertson's chemical kinetics, the classic stiff test (H. H. Robertson,
    1966; Hairer & Wanner, *Solving ODEs II*, section IV.1): rate constants
    k = (0.04, 3e7, 1e4) as the parameters, y0 = (1, 0, 0), t in [0, t1],
    float64; loss w . y(t1) with w = (1, 1e4, 0.5). Eigenvalues down to ~-1e4;
    y2 ~ 1e-5, hence `atol = 1e-4 rtol`. Kvaerno5 by default."""
    with enable_x64(True):
        params = jnp.asarray([0.04, 3e7, 1e4], jnp.float64)
        y0 = jnp.asarray([1.0, 0.0, 0.0], jnp.float64)
        weights = jnp.asarray(ROBERTSON_WEIGHTS, jnp.float64)
    return BenchProblem(
        name="robertson",
        f=_robertson_field,
        params=params,
        y0=y0,
        t0=0.0,
        t1=float(t1),
        loss=lambda y: jnp.dot(weights, y),
        solver="kvaerno5",
        atol_scale=1e-4,
        x64=True,
        stiff=True,
    )


def _van_der_pol_field(t, y, params):
    del t
    mu = params["mu"]
    return jnp.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def van_der_pol(*, mu: float = 1000.0, t1: float = 1000.0) -> BenchProblem:
    """The van der Pol oscillator x'' - mu (1 - x^2) x' + x = 0 in its standard
    first-order form (y1' = y2, y2' = mu (1 - y1^2) y2 - y1), mu = 1000 the
    parameter, float64. From y0 = (2, -2/(3 mu)), on the slow manifold: a slow
    drift along the stable branch (fast eigenvalue ~ -3 mu), then, at t ~ 807,
    the jump to the other branch (period ~1614; Hairer & Wanner, *Solving ODEs
    II*, section IV.1). Loss: y1(t1) + y2(t1). Kvaerno5 by default."""
    with enable_x64(True):
        params = {"mu": jnp.asarray(mu, jnp.float64)}
        y0 = jnp.asarray([2.0, 2.0 / (mu * (1 - 4.0))], jnp.float64)
    return BenchProblem(
        name="van_der_pol",
        f=_van_der_pol_field,
        params=params,
        y0=y0,
        t0=0.0,
        t1=float(t1),
        loss=lambda y: y[0] + y[1],
        solver="kvaerno5",
        x64=True,
        stiff=True,
    )


def _stiff_mlp_field(t, y, params):
    return _mlp_field(t, y, params["mlp"]) - params["decay"] * y


def stiff_neural_ode(
    *, state: int = 8, width: int = 32, batch: int = 4, seed: int = 0
) -> BenchProblem:
    """A Neural ODE with stiff linear decay: an MLP field state→width→width→state
    (tanh) minus diag(λ) y, λ log-spaced over [1, 1e4] across the state, a batch
    of initial states, t in [0, 1], float64, loss mean(y(1)²). Gradients with
    respect to the MLP's weights and to λ. Kvaerno5 by default."""
    with enable_x64(True):
        mlp = neural_ode(
            state=state, width=width, batch=batch, dtype=jnp.float64, seed=seed
        )
        decay = jnp.logspace(0.0, 4.0, state, dtype=jnp.float64)
    return BenchProblem(
        name="stiff_neural_ode",
        f=_stiff_mlp_field,
        params={"mlp": mlp.params, "decay": decay},
        y0=mlp.y0,
        t0=0.0,
        t1=1.0,
        loss=lambda y: jnp.mean(y**2),
        solver="kvaerno5",
        x64=True,
        stiff=True,
    )


PROBLEMS: dict[str, Callable[..., BenchProblem]] = {
    "neural_ode": neural_ode,
    "lotka_volterra": lotka_volterra,
    "robertson": robertson,
    "van_der_pol": van_der_pol,
    "stiff_neural_ode": stiff_neural_ode,
}
