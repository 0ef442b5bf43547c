"""Tests run in float64 unless a test asks for float32 explicitly.

pytest runs two worker processes (see pyproject's addopts); on a GPU machine each
would otherwise preallocate most of the device memory.
"""

import os


os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite's time is mostly XLA compiling many small programs, each run once or
# twice. LLVM's optimisation level changes how fast the machine code runs, not
# what it computes (no fast-math flags) and not XLA's buffer assignment (which
# the memory tests read): level 0 cuts compile time by about a fifth, measured
# on the 2-core CPU (2026-12-03). Set XLA_FLAGS yourself to override it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)
