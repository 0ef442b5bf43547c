"""Tests run in float64 unless a test asks for float32 explicitly.

pytest runs two worker processes (see pyproject's addopts); on a GPU machine each
would otherwise preallocate most of the device memory.
"""

import os
import subprocess
import sys


os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _add_xla_flag(name: str, value: str) -> None:
    """Append `--name=value` to XLA_FLAGS unless the flag is set there already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if f"--{name}" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()


def _xla_knows(name: str, value: str) -> bool:
    """Whether this jaxlib's XLA accepts the flag: it aborts the process on an
    unknown flag in XLA_FLAGS, so a subprocess asks (once: pytest-xdist's workers
    inherit the flags this process sets before it starts them)."""
    probe = "import jax.numpy as jnp; jnp.zeros(()).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=f"--{name}={value}", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return run.returncode == 0


# The suite's time is mostly XLA compiling many small programs, each run once or
# twice. LLVM's optimisation level changes how fast the machine code runs, not
# what it computes (no fast-math flags) and not XLA's buffer assignment (which
# the memory tests read): level 0 cuts compile time by about a fifth, measured
# on the 2-core CPU (2026-12-03). Set XLA_FLAGS yourself to override it.
_add_xla_flag("xla_backend_optimization_level", "0")
# XLA's CPU backend emits fused loops by its newer MLIR emitters by default (JAX
# 0.10 here); its earlier emitters compile the same fusions (the same HLO, and
# the same buffer assignment: that is decided before code generation) in about
# half the time: test_checkpointed_adjoint 162 s -> 85 s on one core, temp
# bytes of the memory tests unchanged (2026-12-03). Only where this XLA has the
# flag (the oldest supported JAX has not; a later one may drop it).
if "--xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    if _xla_knows("xla_cpu_use_fusion_emitters", "false"):
        _add_xla_flag("xla_cpu_use_fusion_emitters", "false")

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)
