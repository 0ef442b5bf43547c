"""What differs between the oldest JAX adjointkit supports and the newest."""

import jax


def enable_x64(new_val: bool = True):
    """A context manager that turns 64-bit types on (or off) inside it.

    `jax.enable_x64` from JAX 0.8; `jax.experimental.enable_x64` before, which
    newer JAX removes.
    """
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(new_val)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64(new_val)
