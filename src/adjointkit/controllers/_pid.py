"""Adaptive step sizes by PID control of the local error estimate."""

from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree, Real

from .._errors import concrete_value
from .._tree import tree_stop_gradient
from ._base import AbstractController
from ._initial_step import initial_step_size
from ._norms import rms_norm


class PIDController(AbstractController):
    """Adaptive step sizes: keep `norm(error / (atol + rtol * max(|y0|, |y1|)))`
    near one.

    A step is accepted when that scaled error `E` is at most 1. The next step size
    is `dt * clip(safety * E_n^(-β1) * E_{n-1}^(-β2) * E_{n-2}^(-β3))` with
    `β1 = (pcoeff + icoeff + dcoeff) / k`, `β2 = -(pcoeff + 2 dcoeff) / k`,
    `β3 = dcoeff / k` and `k` the local order of the solver's error estimate; the
    factor is clipped to `[factormin, factormax]` after an accepted step and to
    `[factormin, safety]` after a rejected one. The default (`icoeff=1`, others 0)
    is the classical integral controller; `pcoeff=0.4, icoeff=0.3` is a common PI
    choice. With `dt0=None` the first step is chosen automatically
    (`initial_step_size`).

    References: Hairer, Nørsett & Wanner, *Solving ODEs I*, Section II.4;
    G. Söderlind, "Digital filters in adaptive time-stepping", ACM TOMS 29, 2003.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerances.
    - `pcoeff`, `icoeff`, `dcoeff`: the proportional, integral and derivative gains.
    - `dtmin`: the smallest step allowed; a step that would need to be smaller ends
      the solve with `RESULTS.step_size_too_small` (never a silently inaccurate
      step). `None`: only the floating-point limit applies.
    - `dtmax`: the largest step allowed.
    - `factormin`, `factormax`: bounds on the ratio of successive step sizes.
    - `safety`: the factor keeping steps a little smaller than the estimate asks.
    - `norm`: the norm of the scaled error (default `rms_norm`).
    """

    rtol: float
    atol: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    dtmin: float | None = None
    dtmax: float | None = None
    factormin: float = 0.2
    factormax: float = 10.0
    safety: float = 0.9
    norm: Callable[[PyTree], Real[Array, ""]] = rms_norm

    def __check_init__(self):
        rtol, atol = concrete_value(self.rtol), concrete_value(self.atol)
        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and (
                np.any(value < 0) or not np.all(np.isfinite(value))
            ):
                raise ValueError(
                    f"PIDController: `{name}` must be finite and non-negative."
                )
        if (
            rtol is not None
            and atol is not None
            and np.all(rtol == 0)
            and np.all(atol == 0)
        ):
            raise ValueError("PIDController: `rtol` and `atol` cannot both be zero.")
        if not 0 < self.factormin <= 1 <= self.factormax:
            raise ValueError("PIDController: need 0 < factormin <= 1 <= factormax.")
        if not 0 < self.safety <= 1:
            raise ValueError("PIDController: `safety` must be in (0, 1].")

    @property
    def adaptive(self) -> bool:
        return True

    def init(self, f, solver, t0, t1, y0, args, dt0, f0):
        error_order = solver.error_order
        if error_order is None:
            raise ValueError(
                f"{type(solver).__name__} has no embedded error estimate, so it "
                "cannot be used with PIDController; use ConstantStepSize with `dt0`, "
                "or a solver with an error estimate (Heun, Bosh3, Tsit5, Dopri5, "
                "Dopri8, ...)."
            )
        if dt0 is None:
            dt = initial_step_size(
                f,
                t0,
                lax.stop_gradient(y0),
                # `args` may hold non-arrays (an Equinox module's functions).
                tree_stop_gradient(args),
                lax.stop_gradient(f0),
                error_order,
                self.rtol,
                self.atol,
                self.norm,
            )
            dt = lax.stop_gradient(dt)
        else:
            dt = lax.stop_gradient(jnp.asarray(dt0, t0.dtype))
        dt = self._clip(dt)
        dt = self._check_traced_tolerances(dt)
        one = jnp.array(1.0, t0.dtype)
        return t0 + dt, (one, one)

    def _check_traced_tolerances(self, x):
        """The checks of `__check_init__` for tolerances only known at run time
        (passed in under `jax.jit`): an error naming the tolerance, never a solve
        with a negative one."""
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if concrete_value(value) is None:
                x = eqx.error_if(
                    x,
                    jnp.any(~(jnp.asarray(value) >= 0)) | jnp.any(~jnp.isfinite(value)),
                    f"PIDController: `{name}` must be finite and non-negative.",
                )
        if concrete_value(self.rtol) is None or concrete_value(self.atol) is None:
            x = eqx.error_if(
                x,
                jnp.all(jnp.asarray(self.rtol) == 0)
                & jnp.all(jnp.asarray(self.atol) == 0),
                "PIDController: `rtol` and `atol` cannot both be zero.",
            )
        return x

    def _clip(self, dt):
        if self.dtmax is not None:
            dt = jnp.minimum(dt, self.dtmax)
        return dt

    def adapt(self, t0, tnext, y0, y1, y_error, error_order, state):
        if y_error is None:
            raise ValueError("PIDController needs a solver with an error estimate.")
        y0, y1, y_error = lax.stop_gradient((y0, y1, y_error))
        prev_inv_err, prev_prev_inv_err = state
        dt = lax.stop_gradient(tnext - t0)

        def scale(e, a, b):
            ymax = jnp.maximum(jnp.abs(a), jnp.abs(b))
            return e / (self.atol + self.rtol * ymax)

        err = self.norm(jtu.tree_map(scale, y_error, y0, y1))
        # A non-finite candidate or estimate is an infinitely bad step.
        err = jnp.where(jnp.isfinite(err), err, jnp.inf)
        accept = err <= 1
        inv_err = jnp.where(err == 0, jnp.inf, 1 / err).astype(dt.dtype)
        k = error_order
        beta1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        beta2 = -(self.pcoeff + 2 * self.dcoeff) / k
        beta3 = self.dcoeff / k
        factor = self.safety * _power(inv_err, beta1)
        factor = factor * _power(prev_inv_err, beta2) * _power(prev_prev_inv_err, beta3)
        factor = jnp.where(jnp.isnan(factor), self.factormin, factor)
        upper = jnp.where(accept, self.factormax, self.safety)
        factor = jnp.clip(factor, self.factormin, upper)
        new_dt = self._clip(dt * factor)
        failed = jnp.array(False)
        if self.dtmin is not None:
            failed = new_dt < self.dtmin
        next_t0 = jnp.where(accept, tnext, t0)
        # The PID memory only advances on accepted steps; inf (a zero error) is
        # stored as 1 so that it does not pin the next factors at their bounds.
        finite_inv = jnp.where(jnp.isfinite(inv_err), inv_err, 1.0)
        state = (
            jnp.where(accept, finite_inv, prev_inv_err),
            jnp.where(accept, prev_inv_err, prev_prev_inv_err),
        )
        return accept, next_t0, next_t0 + new_dt, state, failed


def _power(x, p):
    if isinstance(p, int | float) and p == 0:
        return 1.0
    return x**p
