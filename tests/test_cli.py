"""The `adjointkit` command line: version, help, and `compare` end to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from adjointkit import __version__, benchmarking as bench
from adjointkit.benchmarking._measure import COUNTS_DIFFERENTIATED_LOOPS
from adjointkit.cli import main


# A row of figures, as `_measure` returns them, for tests that stand in for it.
_ROW = dict(
    forward_s=1e-3,
    value_and_grad_s=2e-3,
    ratio=2.0,
    temp_bytes=2**20,
    device_peak_bytes=None,
    device_peak_exact=False,
    forward_f_evals=61,
    backward_f_evals=71,
)


def test_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "adjointkit.cli._main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"adjointkit {__version__}"
    assert main([]) == 0  # no command: prints help


def test_compare_quick_writes_a_table_json_and_plots(tmp_path, capsys):
    argv = ["compare", "--quick", "--adjoints", "checkpointed", "direct"]
    code = main(
        [*argv, "--steps", "10", "20", "--rtol", "1e-4", "--out", str(tmp_path)]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "checkpointed" in table and "direct" in table and "grad rel err" in table
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    # Figures mean little without where and when they were taken.
    meta = results["meta"]
    assert meta["backend"] == jax.default_backend() and meta["device"]
    assert meta["date"].startswith("20") and meta["jax"] == jax.__version__
    assert {r["adjoint"] for r in rows} == {"checkpointed", "direct"}
    assert {r["setting"] for r in rows} == {"10", "20", "rtol 0.0001"}
    for row in rows:
        assert row["value_and_grad_s"] > 0 and row["temp_bytes"] > 0
        # Against the float64 reference: only Tsit5's discretisation (or
        # tolerance) and float32 rounding separate them (~1e-7 observed at N = 20,
        # ~1e-5 at rtol 1e-4); a wrong gradient is O(1).
        assert row["grad_rel_error"] < 1e-3
        if row["rtol"] is None:
            # Tsit5, N constant steps: 1 + 6 N evaluations.
            assert row["forward_f_evals"] == 1 + 6 * row["steps"]
        # Checkpointed pullbacks re-evaluate steps; direct ones only transpose.
        if row["adjoint"] == "direct":
            # (Older JAX loses the forward pass's count under jax.grad.)
            if COUNTS_DIFFERENTIATED_LOOPS:
                assert row["backward_f_evals"] == 0
        else:
            assert row["backward_f_evals"] >= row["forward_f_evals"]
    for plot in ("memory_vs_steps.png", "time_vs_steps.png", "error_vs_time.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--adjoints", "nonsense"], "unknown adjoint"),
        (["compare", "--steps", "0"], "--steps must be positive"),
        (["compare", "--rtol", "2"], "--rtol must be in (0, 1)"),
    ],
)
def test_compare_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def _no_work(*args, **kwargs):
    raise AssertionError("the command started its work before the check under test")


def _unwritable_folders(tmp_path):
    """`(folder, message)`: folders that cannot be written, each with what the
    error must say."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (blocker, "exists and is not a folder"),
        (blocker / "results", f"cannot be created: {blocker} is not a folder"),
    ]
    if os.geteuid() != 0:  # root writes to read-only folders regardless
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        cases.append((read_only / "results", "Permission denied"))
    return cases


def test_compare_checks_out_before_any_work(tmp_path, monkeypatch, capsys):
    from adjointkit.cli import _compare

    monkeypatch.setattr(_compare, "_reference_grad", _no_work)
    monkeypatch.setattr(_compare, "_measure", _no_work)
    argv = ["compare", "--quick", "--adjoints", "direct"]
    for out, message in _unwritable_folders(tmp_path):
        before = set(tmp_path.rglob("*"))
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"adjointkit compare: --out {out}") and message in err
        assert err.count("\n") == 1  # one line, no traceback
        assert set(tmp_path.rglob("*")) == before  # the check leaves nothing behind


def test_every_problem_has_default_steps():
    from adjointkit.cli import _compare

    assert set(_compare.DEFAULT_STEPS) == set(bench.PROBLEMS)


@pytest.mark.parametrize(
    "name",
    [
        "lotka_volterra",
        # Building the Neural ODE takes seconds; the end-to-end test above solves
        # it at 10 and 20 steps already.
        pytest.param("neural_ode", marks=pytest.mark.slow),
    ],
)
def test_default_steps_suit_the_problem(name):
    """Tsit5 can take each problem's default constant steps, with and without
    --quick (Lotka-Volterra blows up below 40 steps over its t in [0, 10])."""
    from adjointkit.cli import _compare

    quick, full = _compare.DEFAULT_STEPS[name]
    for is_quick, steps in [(True, quick), (False, full)]:
        problem = _compare._problem(name, is_quick)
        for n in steps:
            assert _compare._solve_failure(problem, n, None) is None, n


def test_compare_quick_on_lotka_volterra(tmp_path, monkeypatch, capsys):
    # Each measurement here is the real forward solve, which used to blow up at
    # --quick's 10 and 20 steps; the rest (timing, memory) is covered above.
    from adjointkit.cli import _compare

    def measure(problem, steps, rtol, adjoint, library, repeats):
        loss, f_evals = jax.jit(bench.adjointkit_loss(problem, adjoint, steps))(
            problem.params
        )
        assert np.isfinite(loss)
        return dict(_ROW, forward_f_evals=int(f_evals)), problem.params

    monkeypatch.setattr(_compare, "_measure", measure)
    monkeypatch.setattr(_compare, "_reference_grad", lambda p: p.params)
    monkeypatch.setattr(_compare, "_plot", lambda *args: [])
    argv = ["compare", "--quick", "--problem", "lotka_volterra", "--adjoints"]
    assert main([*argv, "direct", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    quick_steps = _compare.DEFAULT_STEPS["lotka_volterra"][0]
    assert [r["steps"] for r in rows] == list(quick_steps)


@pytest.mark.parametrize(
    "steps, bad", [(["20"], "20"), (["100", "30"], "30")], ids=["20", "100-30"]
)
def test_compare_steps_the_problem_cannot_take(steps, bad, monkeypatch, capsys):
    from adjointkit.cli import _compare

    monkeypatch.setattr(_compare, "_reference_grad", _no_work)
    monkeypatch.setattr(_compare, "_measure", _no_work)
    argv = ["compare", "--problem", "lotka_volterra", "--adjoints", "direct"]
    assert main([*argv, "--steps", *steps]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adjointkit compare: --steps {bad}: ")
    assert "inf/NaN" in err and "take more steps" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_compare_logs_each_measurement_as_it_finishes(tmp_path, monkeypatch, capsys):
    """Piped into a file or a CI log, a long run shows a line per finished
    measurement as it goes; a progress bar there shows nothing till the end."""
    from adjointkit.cli import _compare

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)  # rich would take stderr for a tty
    logged = []  # what the log holds when each measurement starts

    def measure(problem, steps, rtol, adjoint, library, repeats):
        logged.append(capsys.readouterr().err)
        return dict(_ROW), problem.params

    monkeypatch.setattr(_compare, "_measure", measure)
    monkeypatch.setattr(_compare, "_reference_grad", lambda p: p.params)
    monkeypatch.setattr(_compare, "_plot", lambda *args: [])
    argv = ["compare", "--problem", "lotka_volterra", "--steps", "100"]
    assert main([*argv, "--adjoints", "checkpointed", "direct"]) == 0
    logged.append(capsys.readouterr().err)
    assert "[1/3] float64 reference gradient" in logged[0]
    assert "[2/3] checkpointed at 100: v+g 2.00 ms" in logged[1]
    assert "[3/3] direct at 100: " in logged[2]
    assert all(entry.count("\n") == 1 for entry in logged)


def test_compare_rejects_an_unknown_problem(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--problem", "nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _table_row(**overrides) -> dict:
    """One row of compare's table, as `_print_table` takes it."""
    row = dict(
        adjoint="a",
        setting="10",
        forward_s=1e-3,
        value_and_grad_s=2e-3,
        ratio=2.0,
        temp_bytes=2**20,
        forward_f_evals=61,
        backward_f_evals=71,
        grad_rel_error=1e-7,
        device_peak_bytes=None,
        device_peak_exact=False,
    )
    return {**row, **overrides}


def test_table_shows_the_device_peak_where_the_backend_keeps_one(capsys):
    from adjointkit.cli._compare import _print_table

    row = _table_row()
    _print_table([row], "p")
    assert "peak MiB" not in capsys.readouterr().out  # a CPU
    on_gpu = {**row, "device_peak_bytes": 3 * 2**20, "device_peak_exact": True}
    # An inexact peak was set by an earlier, larger run: shown as a bound.
    _print_table([on_gpu, {**on_gpu, "adjoint": "b", "device_peak_exact": False}], "p")
    out = capsys.readouterr().out
    assert "peak MiB" in out and "<= 3.0" in out and out.count("3.0") == 2


def test_table_keeps_brackets_in_its_labels(capsys):
    # Rich reads "[...]" as markup: unescaped, "[k=4]" would vanish from the table.
    pytest.importorskip("rich")
    from adjointkit.cli._compare import _print_table

    row = _table_row(adjoint="every [k=4]")
    _print_table([row], "problem [small]")
    out = capsys.readouterr().out
    assert "every [k=4]" in out and "problem [small]" in out
