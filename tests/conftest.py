"""Tests run in float64 unless a test asks for float32 explicitly.

pytest runs two worker processes (see pyproject's addopts); on a GPU machine each
would otherwise preallocate most of the device memory.
"""

import os


os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)
