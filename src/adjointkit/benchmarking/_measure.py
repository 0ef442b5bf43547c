"""Timing and memory of compiled functions."""

import dataclasses
import statistics
import time
import warnings

import jax


# Before JAX 0.6.2, reverse-mode differentiation of a `lax.scan` drops the
# `jax.debug.callback`s of its forward pass (jax-ml/jax#16637); and no other kind
# of callback may sit inside a custom VJP there, so nothing counts them instead.
COUNTS_DIFFERENTIATED_LOOPS = jax.__version_info__ >= (0, 6, 2)


def time_call(fn, *args, repeats: int = 5, min_seconds: float = 0.0) -> float:
    """Median wall time in seconds of `fn(*args)`, `fn` already jitted and warmed up
    by one call here (its compile time is not counted)."""
    jax.block_until_ready(fn(*args))
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def temp_bytes(fn, *args) -> int:
    """XLA's temporary-buffer size of the compiled `fn(*args)`: the working memory
    beyond inputs and outputs. Deterministic, on CPU and GPU alike."""
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.memory_analysis()
    return int(analysis.temp_size_in_bytes)


def device_peak_bytes(fn, *args) -> tuple[int | None, bool]:
    """The device allocator's peak bytes in use after one call of `fn(*args)`.

    **Returns:** `(peak, exact)`. `peak` is `memory_stats()["peak_bytes_in_use"]`
    of the default device (everything alive on it at the worst moment, arguments
    and other arrays included), or `None` where the backend keeps no statistics
    (CPU). The allocator's peak never goes down, so it is this call's own peak only
    when the call raised it: `exact` says so. When it is `False`, `peak` is an
    upper bound set by something the process ran earlier; measuring the
    smaller functions first keeps most figures exact.
    """
    device = jax.devices()[0]
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None, False
    before = int(stats["peak_bytes_in_use"])
    jax.block_until_ready(fn(*args))
    after = int(device.memory_stats()["peak_bytes_in_use"])
    return after, after > before


def count_f_evals(make_fn, problem, params) -> int:
    """How many times a compiled program evaluates `problem.f`, counted as it runs.

    **Arguments:**

    - `make_fn`: `problem -> (params -> outputs)`, e.g. a solve's loss or its
      `jax.grad`. It is called with a copy of `problem` whose `f` bumps a host-side
      counter (`jax.debug.callback`) at each evaluation.
    - `problem`, `params`: what to run, and with which parameters.

    **Returns:** the number of evaluations of `f` in one run of the compiled
    `make_fn(counted problem)(params)`. For `jax.grad` of a solve this is the
    forward evaluations plus those of the backward pass: recomputation from
    checkpoints, the backward solve of a continuous adjoint, the primal half of
    each vector-Jacobian product of `f`. It watches `f` itself, so it counts alike
    for any library and any adjoint. The callbacks slow the program down: count
    in a separate, untimed run.

    With JAX older than 0.6.2 the forward evaluations inside a loop that JAX
    differentiates in reverse mode (`DirectAdjoint`'s) are missed, and a warning
    says so: JAX drops the callbacks there.
    """
    if not COUNTS_DIFFERENTIATED_LOOPS:
        warnings.warn(
            f"JAX {jax.__version__} drops callbacks from the forward pass of a "
            "reverse-differentiated loop (fixed in JAX 0.6.2): counted f-evaluations "
            "of a gradient through the loop (DirectAdjoint) are too low.",
            RuntimeWarning,
            stacklevel=2,
        )
    calls = [0]

    def tick(_):
        calls[0] += 1

    def counted_f(t, y, args):
        # The callback takes a scalar of the state so that it stays inside loops:
        # one without operands is loop-invariant and may be hoisted out of them.
        jax.debug.callback(tick, jax.tree_util.tree_leaves(y)[0].ravel()[0])
        return problem.f(t, y, args)

    fn = make_fn(dataclasses.replace(problem, f=counted_f))
    compiled = jax.jit(fn).lower(params).compile()
    jax.effects_barrier()
    calls[0] = 0
    jax.block_until_ready(compiled(params))
    jax.effects_barrier()
    return calls[0]
