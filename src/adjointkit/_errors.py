"""Input validation: bad input gets a clear error naming what is wrong."""

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def concrete_value(x) -> np.ndarray | None:
    """`x` as a numpy array if it is known at trace time, else `None`."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:  # e.g. an abstract value
        return None


def check_scalar_time(name: str, x):
    x = jnp.asarray(x)
    if x.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {x.shape}.")
    if not (
        jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must be a real number, got dtype {x.dtype}.")
    return x


def check_state(y0):
    """`y0` as a pytree of real floating arrays; names the offending leaf."""
    leaves_with_path = jtu.tree_leaves_with_path(y0)
    if not leaves_with_path:
        raise ValueError("`y0` has no arrays: the state must be a non-empty pytree.")
    for path, leaf in leaves_with_path:
        arr = jnp.asarray(leaf)
        where = f"y0{jtu.keystr(path)}" if path else "y0"
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError(
                f"`{where}` is complex ({arr.dtype}); adjointkit solves real ODEs: "
                "split the state into real and imaginary parts."
            )
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"`{where}` has dtype {arr.dtype}; the state must be floating point "
                "(e.g. `jnp.asarray(y0, dtype=float)`)."
            )
    return jtu.tree_map(jnp.asarray, y0)


def _describe(tree) -> str:
    leaves = jtu.tree_leaves(tree)
    parts = [f"{tuple(x.shape)} {jnp.dtype(x.dtype).name}" for x in leaves]
    return f"{jtu.tree_structure(tree)} with leaves [{', '.join(parts)}]"


def check_vector_field(f, t, y0, args):
    """`f(t, y0, args)` must return a pytree with `y0`'s structure, shapes and dtypes.

    Checked at trace time with `jax.eval_shape`, so nothing is computed.
    """
    if not callable(f):
        raise TypeError(
            f"`f` must be callable as f(t, y, args), got {type(f).__name__}."
        )
    # Traced through a closure, not as `f` itself: JAX caches traces by function,
    # and older JAX (0.4.x) compares an `eqx.Module` `f` with `==` to look it up,
    # which on traced parameters is an array, not a bool
    # (TracerBoolConversionError). `filter_eval_shape`: `args` may hold functions.
    out = eqx.filter_eval_shape(lambda t, y, a: f(t, y, a), t, y0, args)
    y_struct = jtu.tree_structure(y0)
    if jtu.tree_structure(out) != y_struct:
        raise ValueError(
            "f(t, y, args) must return a pytree with the same structure as y0: y0 is "
            f"{_describe(y0)} but f returned {_describe(out)}."
        )
    for (path, y_leaf), out_leaf in zip(
        jtu.tree_leaves_with_path(y0), jtu.tree_leaves(out), strict=True
    ):
        if tuple(out_leaf.shape) != tuple(jnp.shape(y_leaf)):
            raise ValueError(
                f"f(t, y, args) returned shape {tuple(out_leaf.shape)} for "
                f"y0{jtu.keystr(path)}, which has shape {tuple(jnp.shape(y_leaf))}: "
                "f must return an array of the same shape as each state leaf."
            )
        if jnp.dtype(out_leaf.dtype) != jnp.dtype(y_leaf.dtype):
            got, want = jnp.dtype(out_leaf.dtype).name, jnp.dtype(y_leaf.dtype).name
            raise ValueError(
                f"f(t, y, args) returned dtype {got} for "
                f"y0{jtu.keystr(path)}, which has dtype {want}: "
                "f must keep the state's dtype (check for float64 constants or "
                "arguments mixed into a float32 state)."
            )


def runtime_check(x, pred, msg: str):
    """`eqx.error_if`, or an immediate error when `pred` is known at trace time."""
    concrete = concrete_value(pred)
    if concrete is not None:
        if bool(np.any(concrete)):
            raise ValueError(msg)
        return x
    return eqx.error_if(x, pred, msg)


def is_forward_mode_refusal(error: Exception) -> bool:
    """Whether `error` is JAX refusing forward-mode differentiation of a custom
    VJP (an adjoint's, or an implicit stage's primal function)."""
    return isinstance(error, TypeError) and "forward-mode" in str(error)


def forward_over_reverse_error(solver) -> TypeError:
    """The error for `jax.hessian` (forward mode over reverse mode) through the
    implicit stages of an ESDIRK `solver`; see `solvers._newton.implicit_root`."""
    name = type(solver).__name__
    return TypeError(
        f"jax.hessian, which is jax.jacfwd(jax.jacrev(...)) (forward mode over "
        f"reverse mode), cannot go through {name}'s implicit stages: inside the "
        "solver's loops JAX computes their reverse-mode values by a custom VJP, "
        "which forward mode cannot differentiate. With "
        "`adjoint=ak.DirectAdjoint()`, `jax.jacfwd(jax.jacfwd(...))` and "
        "`jax.jacrev(jax.jacrev(...))` give the exact second derivatives; or use "
        "`ak.Rodas5()`, through which jax.hessian works."
    )


@contextlib.contextmanager
def explaining_forward_over_reverse(solver, implicit_stages: bool):
    """Around an adjoint's backward pass: forward mode over it (`jax.hessian`)
    goes through every step's VJP, and an ESDIRK step's implicit stages refuse
    it (`implicit_stages`: whether `solver` is an ESDIRK method); that refusal
    becomes an error that says what to use instead."""
    try:
        yield
    except TypeError as error:
        if implicit_stages and is_forward_mode_refusal(error):
            raise forward_over_reverse_error(solver) from error
        raise
