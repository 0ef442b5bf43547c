"""Timing and memory of compiled functions."""

import statistics
import time

import jax


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
