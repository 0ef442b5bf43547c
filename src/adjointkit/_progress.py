"""Progress meters: `solve(..., progress_meter=...)` reports how much of `[t0, t1]`
has been covered, from inside the compiled loop.

The loop reports to a `ProgressRecorder` (a recorder like those that save values):
after each accepted step it computes the fraction of the interval covered, and
only when that fraction passes the next of `num_updates` equal marks does it call
back to Python (`jax.debug.callback` inside a `lax.cond`). So a solve makes at most
`num_updates` callbacks whatever its number of steps, and with no meter there is
no recorder and nothing in the compiled program.

The meter's display state lives on the host, keyed by the recorder's traced
program: an update whose mark is not past the last one shown starts a new
display (a new call of a compiled solve, or a replay in a backward pass).
"""

import abc
import atexit
import sys
import threading

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Real

from ._recording import AbstractRecorder


class AbstractProgressMeter(eqx.Module):
    """How `solve` shows its progress. An implementation provides:

    - `num_updates`: the most updates shown per solve (a Python int);
    - `open() -> handle`, `show(handle, fraction)` and `close(handle)`, called on
      the host (in Python, not traced) to start a display, show a fraction in
      `[0, 1]` of the interval covered, and finish it.

    Meters are compared by value (they are static parts of the compiled solve), so
    they hold only hashable settings; the display itself is the `handle`.
    """

    num_updates: eqx.AbstractVar[int]

    @abc.abstractmethod
    def open(self) -> object:
        """Start a display; returns its handle."""

    @abc.abstractmethod
    def show(self, handle: object, fraction: float) -> None:
        """Show that `fraction` of `[t0, t1]` has been covered."""

    @abc.abstractmethod
    def close(self, handle: object) -> None:
        """Finish the display."""


class TextProgressMeter(AbstractProgressMeter):
    """Prints the percentage of `[t0, t1]` covered, one line per update, to
    standard output. Needs no library (for logs, notebooks and terminals alike).

    **Arguments:**

    - `minimum_increase`: the least increase in the fraction covered between two
      lines (default 0.1: at most 10 lines per solve, plus the final 100%).
    """

    minimum_increase: float = 0.1
    num_updates: int = eqx.field(init=False)

    def __post_init__(self):
        if not (0 < self.minimum_increase <= 1):
            raise ValueError(
                "TextProgressMeter(minimum_increase=...) must be in (0, 1], got "
                f"{self.minimum_increase!r}: e.g. 0.1 for a line every 10%."
            )
        self.num_updates = max(1, int(np.ceil(1 / self.minimum_increase - 1e-9)))

    def open(self) -> object:
        return None

    def show(self, handle: object, fraction: float) -> None:
        del handle
        print(f"adjointkit solve: {100 * fraction:6.2f}%", file=sys.stdout, flush=True)

    def close(self, handle: object) -> None:
        del handle


class RichProgressMeter(AbstractProgressMeter):
    """A progress bar drawn by `rich` (an optional dependency: `pip install rich`,
    which `adjointkit compare` also uses), updated about 100 times per solve.

    **Arguments:** none.
    """

    num_updates: int = eqx.field(init=False, default=100)

    def __check_init__(self):
        try:
            import rich.progress  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "RichProgressMeter needs the `rich` package: `pip install rich`. "
                "Or use `ak.TextProgressMeter()`, which needs nothing."
            ) from error

    def open(self) -> object:
        import rich.progress

        progress = rich.progress.Progress(
            rich.progress.TextColumn("adjointkit solve"),
            rich.progress.BarColumn(),
            rich.progress.TaskProgressColumn(),
            rich.progress.TimeElapsedColumn(),
        )
        task = progress.add_task("solve", total=1.0)
        progress.start()
        return progress, task

    def show(self, handle: object, fraction: float) -> None:
        progress, task = handle
        progress.update(task, completed=fraction)

    def close(self, handle: object) -> None:
        progress, _ = handle
        progress.refresh()
        progress.stop()


class _Display:
    """The host side of one traced solve: the meter's open display and the last
    mark shown."""

    def __init__(self, meter: AbstractProgressMeter):
        self.meter = meter
        self.handle = None
        self.last = -1
        self.lock = threading.Lock()
        self.registered = False

    def __call__(self, crossed, mark):
        # Under `jax.vmap` a batched `lax.cond` runs both branches, so the
        # callback comes for every step, with `crossed` saying which are real; of
        # a batch of solves the slowest is shown.
        crossed, mark = np.asarray(crossed), np.asarray(mark)
        if not crossed.any():
            return
        mark = int(mark[crossed].min()) if mark.ndim else int(mark)
        n = self.meter.num_updates
        with self.lock:
            if self.handle is not None and mark <= self.last:
                self._finish()
            if self.handle is None:
                self.handle = self.meter.open()
                self.last = -1
                if not self.registered:
                    # A display a recomputation left unfinished (see
                    # `ProgressRecorder`) is closed at exit at the latest.
                    atexit.register(self._close_if_open)
                    self.registered = True
            self.last = mark
            self.meter.show(self.handle, min(mark, n) / n)
            if mark >= n:
                self._finish()

    def _finish(self):
        self.meter.close(self.handle)
        self.handle = None

    def _close_if_open(self):
        with self.lock:
            if self.handle is not None:
                self._finish()


class ProgressRecorder(AbstractRecorder):
    """Reports the fraction of `[t0, t1]` (loop time) covered after each accepted
    step to `meter`, when it passes the next of `meter.num_updates` marks. The
    record is the last mark reported (an integer, never differentiated).

    A backward pass that recomputes forward steps under `jax.checkpoint`
    (`DirectAdjoint` with adaptive steps) runs these callbacks again, and the
    meter then shows the recomputation as another (possibly partial) pass. The
    adjoints with their own backward pass replay steps without recorders and
    report the forward pass only. Under `jax.vmap` a batched decision makes the
    callback run on every step (the host ignores the steps that passed no mark).
    """

    meter: AbstractProgressMeter = eqx.field(static=True)
    t0: Real[Array, ""]
    t1: Real[Array, ""]

    def init(self, t0, y0, f0, dense_like, capacity):
        del t0, y0, f0, dense_like, capacity
        return jnp.asarray(-1, jnp.int32)

    def record(self, state, step):
        n = self.meter.num_updates
        length = self.t1 - self.t0
        covered = jnp.where(length > 0, (step.t1 - self.t0) / length, 1.0)
        covered = lax.stop_gradient(covered)
        mark = jnp.floor(n * covered + 1e-6).astype(jnp.int32)
        mark = jnp.where(step.t1 >= self.t1, n, jnp.minimum(mark, n))
        crossed = step.accepted & (mark > state)
        display = _Display(self.meter)

        def report(m):
            jax.debug.callback(display, crossed, m)
            return m

        return lax.cond(crossed, report, lambda m: state, mark)

    def pullback(self, state, ct_state, step):
        del state, ct_state, step
        return None, None
