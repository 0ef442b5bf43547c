"""The spiral dataset: the classic Neural-ODE demo, shared by `adjointkit train` and
`examples/`.

One trajectory of the cubic spiral `y' = (y**3) A`, `A = [[-0.1, 2], [-2, -0.1]]`,
from `y(0) = (2, 0)`, observed at `num_times` equally spaced times in `[0, t1]`
(Chen et al., "Neural ordinary differential equations", NeurIPS 2018; the
`torchdiffeq` demo). A training sample is a *window*: `window` consecutive
observations, whose first is the initial state of a solve and all of which are its
targets at `SaveAt(ts=window_ts)`. The field is autonomous, so every window is
solved over the same times `window_ts = ts[:window] - ts[0]`.

The observations are computed once, in float64 with tight tolerances, and stored in
float32: the same numbers whether or not float64 is enabled in the caller.
"""

import dataclasses
import functools

import numpy as np


SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))
SPIRAL_Y0 = (2.0, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Spiral:
    """Observations of the spiral and the windows cut from them.

    **Attributes:**

    - `ts`: the observation times, shape `(num_times,)`, float32.
    - `ys`: the observed states, shape `(num_times, 2)`, float32.
    - `window`: observations per training window.
    """

    ts: np.ndarray
    ys: np.ndarray
    window: int

    @property
    def num_windows(self) -> int:
        """How many windows the observations hold (one per start)."""
        return len(self.ts) - self.window + 1

    @property
    def window_ts(self) -> np.ndarray:
        """The times at which every window is observed, from 0, float32."""
        return (self.ts[: self.window] - self.ts[0]).astype(np.float32)

    def windows(self, starts) -> tuple[np.ndarray, np.ndarray]:
        """`(y0, targets)` for the windows beginning at observation `starts`:
        `y0` of shape `(batch, 2)` and `targets` of shape `(window, batch, 2)`, the
        layout of `solve(..., saveat=SaveAt(ts=window_ts)).ys`."""
        starts = np.asarray(starts)
        if starts.ndim != 1 or np.any(starts < 0) or np.any(starts >= self.num_windows):
            raise ValueError(
                f"window starts must be a 1-D array of integers in "
                f"[0, {self.num_windows}), got {starts!r}."
            )
        index = starts[None, :] + np.arange(self.window)[:, None]
        targets = self.ys[index]
        return targets[0], targets

    def all_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """`windows` for every start: the full dataset."""
        return self.windows(np.arange(self.num_windows))

    def batch_starts(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """The window starts of optimisation step `step`: `batch_size` distinct
        starts drawn from a generator seeded by `(seed, step)` alone, so that the
        data order is a pure function of the step and a resumed run sees exactly
        the batches an uninterrupted one would have."""
        if not 1 <= batch_size <= self.num_windows:
            raise ValueError(
                f"batch_size must be in [1, {self.num_windows}], got {batch_size}."
            )
        rng = np.random.default_rng([seed, step])
        return np.sort(rng.choice(self.num_windows, size=batch_size, replace=False))


@functools.lru_cache(maxsize=8)
def _observations(num_times: int, t1: float) -> tuple[np.ndarray, np.ndarray]:
    import jax
    import jax.numpy as jnp

    import adjointkit as ak

    from .._compat import enable_x64

    with enable_x64(True):
        a = jnp.asarray(SPIRAL_A, jnp.float64)
        ts = jnp.linspace(0.0, t1, num_times, dtype=jnp.float64)

        def field(t, y, args):
            del t, args
            return (y**3) @ a

        sol = jax.jit(
            lambda y0: ak.solve(
                field,
                ak.Dopri8(),
                0.0,
                t1,
                y0,
                controller=ak.PIDController(rtol=1e-10, atol=1e-12),
                saveat=ak.SaveAt(ts=ts),
                max_steps=100_000,
            )
        )(jnp.asarray(SPIRAL_Y0, jnp.float64))
        ts_out = np.asarray(ts, np.float32)
        ys_out = np.asarray(sol.ys, np.float32)
    ts_out.setflags(write=False)
    ys_out.setflags(write=False)
    return ts_out, ys_out


def spiral(*, window: int = 40, num_times: int = 1000, t1: float = 25.0) -> Spiral:
    """The spiral dataset: `num_times` observations over `[0, t1]`, cut into
    windows of `window` observations (each window spans `(window - 1) * t1 /
    (num_times - 1)` time units)."""
    if not 2 <= window <= num_times:
        raise ValueError(f"window must be in [2, num_times={num_times}], got {window}.")
    ts, ys = _observations(int(num_times), float(t1))
    return Spiral(ts=ts, ys=ys, window=int(window))
