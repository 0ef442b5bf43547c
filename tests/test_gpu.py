"""Cross-tests against Diffrax on a GPU (run with `pytest -m gpu -n 0`, e.g. by
benchmarks/gpu.sh). On a machine without a GPU they fail, saying so."""

import diffrax
import jax
import jax.numpy as jnp
import pytest

import adjointkit as ak
from adjointkit import benchmarking as bench
from helpers import rel_err


pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def exact_matmuls():
    # TF32 matrix products would set the error instead of the methods.
    with jax.default_matmul_precision("highest"):
        yield


def _problem():
    return bench.neural_ode(width=64, batch=64)  # float32


def test_runs_on_a_gpu():
    assert jax.default_backend() == "gpu", f"no GPU: {jax.devices()}"


@pytest.mark.parametrize(
    "adjoint",
    [
        ak.CheckpointedAdjoint(),
        ak.CheckpointedAdjoint(ak.AllSteps()),
        ak.DirectAdjoint(),
    ],
    ids=["binomial", "allsteps", "direct"],
)
def test_discrete_gradients_equal_diffrax(adjoint):
    """Diffrax: Tsit5, 50 constant steps, RecursiveCheckpointAdjoint(), float32.
    The same discrete gradient in float32: rounding only, ~1e-6 relative."""
    p = _problem()
    ours = bench.adjointkit_loss(p, adjoint, 50)
    theirs = bench.diffrax_loss(p, diffrax.RecursiveCheckpointAdjoint(), 50)
    g = jax.jit(jax.grad(lambda q: ours(q)[0]))(p.params)
    e = jax.jit(jax.grad(lambda q: theirs(q)[0]))(p.params)
    assert rel_err(g, e) < 1e-4


def test_backsolve_agrees_with_diffrax_backsolve():
    """Diffrax: BacksolveAdjoint with Tsit5 and PIDController(1e-6, 1e-6) backward;
    both approximate the continuous gradient to ~rtol (float32 limits it to ~1e-5
    relative)."""
    p = _problem()
    ours = bench.adjointkit_loss(p, ak.BacksolveAdjoint(), 4096, rtol=1e-6)
    theirs = bench.diffrax_loss(p, diffrax.BacksolveAdjoint(), 4096, rtol=1e-6)
    g = jax.jit(jax.grad(lambda q: ours(q)[0]))(p.params)
    e = jax.jit(jax.grad(lambda q: theirs(q)[0]))(p.params)
    assert rel_err(g, e) < 1e-3


def test_peak_memory_is_reported():
    stats = jax.devices()[0].memory_stats()
    assert stats is not None and stats["peak_bytes_in_use"] > 0
    # A larger allocation than anything before it: its peak is its own.
    big = 2**20 + stats["peak_bytes_in_use"] // 4  # float32 elements
    fn = jax.jit(lambda x: jnp.full((big,), x))  # an output of 4 big bytes
    peak, exact = bench.device_peak_bytes(fn, jnp.float32(2.0))
    assert exact and peak >= 4 * big


def test_checkpointed_gradient_in_float32_matches_float64_reference():
    p = _problem()
    loss = bench.adjointkit_loss(p, ak.CheckpointedAdjoint(), 100)
    g32 = jax.jit(jax.grad(lambda q: loss(q)[0]))(p.params)
    to64 = lambda t: jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), t)  # noqa: E731
    p64 = bench.BenchProblem(
        p.name, p.f, to64(p.params), to64(p.y0), p.t0, p.t1, p.loss
    )
    loss64 = bench.adjointkit_loss(p64, ak.CheckpointedAdjoint(), 100)
    g64 = jax.jit(jax.grad(lambda q: loss64(q)[0]))(p64.params)
    # float32 rounding through 100 steps and their pullbacks: ~1e-6.
    assert rel_err(g32, g64) < 1e-4
