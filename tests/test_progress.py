"""solve(..., progress_meter=...): off by default at no cost, bounded updates
under jit, and a text meter that needs no library."""

import re

import jax
import jax.numpy as jnp
import pytest

import adjointkit as ak


def decay(t, y, args):
    return -0.5 * y


Y0 = jnp.array([1.0, 2.0])


def _lines(capsys):
    jax.effects_barrier()
    out = capsys.readouterr().out
    return [float(x) for x in re.findall(r"adjointkit solve:\s+([\d.]+)%", out)]


def test_no_meter_compiles_exactly_as_before():
    # `progress_meter=None` must add nothing to the program: the jaxpr equals
    # the one of a call without the argument, and holds no debug callback (the
    # pure_callback there is `throw=True`'s error check).
    def run(y0, **kw):
        return ak.solve(decay, ak.Tsit5(), 0.0, 1.0, y0, dt0=0.01, **kw).ys

    def program(fn):
        # Older JAX prints the error check's Python callback with its address,
        # which differs from one trace to the next: compare without it.
        return re.sub(r" at 0x[0-9a-f]+", "", str(jax.make_jaxpr(fn)(Y0)))

    plain = program(run)
    off = program(lambda y: run(y, progress_meter=None))
    on = program(lambda y: run(y, progress_meter=ak.TextProgressMeter()))
    assert off == plain
    assert "debug_callback" not in plain
    assert "debug_callback" in on


def test_text_meter_under_jit_bounded_updates(capsys):
    # 1000 steps, a line every 10%: 11 lines (0% is the first step's), increasing,
    # ending at 100%.
    solve = jax.jit(
        lambda y: ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, y, dt0=0.001,
            progress_meter=ak.TextProgressMeter(minimum_increase=0.1),
        ).ys
    )  # fmt: skip
    solve(Y0)
    lines = _lines(capsys)
    assert lines == [10.0 * k for k in range(11)]
    # A second call of the compiled solve shows its own progress.
    solve(Y0 + 1)
    assert _lines(capsys)[-1] == 100.0


def test_meter_does_not_change_the_result(capsys):
    kw = dict(dt0=0.05, saveat=ak.SaveAt(ts=jnp.linspace(0, 1, 4)))
    a = ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, **kw)
    b = ak.solve(
        decay, ak.Tsit5(), 0.0, 1.0, Y0, progress_meter=ak.TextProgressMeter(), **kw
    )
    assert jnp.array_equal(a.ys, b.ys)
    capsys.readouterr()


@pytest.mark.parametrize(
    "adjoint",
    [ak.CheckpointedAdjoint(), ak.DirectAdjoint(), ak.BacksolveAdjoint()],
    ids=["checkpointed", "direct", "backsolve"],
)
def test_meter_with_adaptive_steps_and_gradients(adjoint, capsys):
    def loss(y0):
        sol = ak.solve(
            decay, ak.Tsit5(), 0.0, 2.0, y0,
            controller=ak.PIDController(rtol=1e-8, atol=1e-10), adjoint=adjoint,
            progress_meter=ak.TextProgressMeter(minimum_increase=0.25),
        )  # fmt: skip
        return jnp.sum(sol.ys)

    g = jax.jit(jax.grad(loss))(Y0)
    # d/dy0 sum(y0 e^{-1}) = e^{-1}; rtol 1e-8 per step.
    assert jnp.allclose(g, jnp.exp(-1.0), rtol=1e-6)
    lines = _lines(capsys)
    # The forward pass: the 5 marks 0, 25, ..., 100 in order.
    assert lines[:5] == [0.0, 25.0, 50.0, 75.0, 100.0]
    # DirectAdjoint's backward pass recomputes forward steps under checkpoints
    # (adaptive steps) and may report them again, at most once per checkpointed
    # level (4 at the default max_steps); the others report nothing more.
    if not isinstance(adjoint, ak.DirectAdjoint):
        assert len(lines) == 5
    assert len(lines) <= 5 * 5


def test_meter_backward_in_time(capsys):
    ak.solve(
        decay, ak.Tsit5(), 1.0, 0.0, Y0, dt0=-0.01,
        progress_meter=ak.TextProgressMeter(minimum_increase=0.5),
    )  # fmt: skip
    assert _lines(capsys) == [0.0, 50.0, 100.0]


def test_meter_under_vmap(capsys):
    jax.vmap(
        lambda y: ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, y, dt0=0.01,
            progress_meter=ak.TextProgressMeter(minimum_increase=0.5),
        ).ys
    )(jnp.ones((3, 2)))  # fmt: skip
    assert _lines(capsys)[-1] == 100.0


def test_bad_meter_and_bad_increase_are_refused():
    with pytest.raises(TypeError, match="TextProgressMeter"):
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, dt0=0.1, progress_meter=True)
    with pytest.raises(ValueError, match="minimum_increase"):
        ak.TextProgressMeter(minimum_increase=0.0)


def test_rich_meter_runs_when_rich_is_installed():
    pytest.importorskip("rich")
    sol = ak.solve(
        decay, ak.Tsit5(), 0.0, 1.0, Y0, dt0=0.01, progress_meter=ak.RichProgressMeter()
    )
    jax.effects_barrier()
    assert sol.ys.shape == (1, 2)


def test_rich_meter_without_rich_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    with pytest.raises(ImportError, match="pip install rich"):
        ak.RichProgressMeter()
