"""Benchmark problems: a vector field, its parameters, an initial state, a loss."""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import PyTree


@dataclasses.dataclass(frozen=True)
class BenchProblem:
    """A differentiable ODE problem for benchmarks.

    `f(t, y, params)` is the vector field; the loss of a solution's final state is
    `loss(y1)`; gradients are taken with respect to `params`.
    """

    name: str
    f: Callable
    params: PyTree
    y0: PyTree
    t0: float
    t1: float
    loss: Callable


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


PROBLEMS: dict[str, Callable[..., BenchProblem]] = {
    "neural_ode": neural_ode,
    "lotka_volterra": lotka_volterra,
}
