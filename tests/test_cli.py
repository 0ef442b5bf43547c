"""The `adjointkit` command line: version, help, and `compare` end to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from adjointkit import __version__, _bounded_loop, benchmarking as bench
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
    steps_taken=10,
    rejected_steps=0,
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


@pytest.mark.parametrize(
    "adjoints",
    [
        # DirectAdjoint's rows carry the most checks (its backward counts under
        # constant and adaptive steps); a second adjoint doubles the compiles
        # (test_harness checks CheckpointedAdjoint's counts by default).
        ["direct"],
        pytest.param(["checkpointed", "direct"], marks=pytest.mark.slow),
    ],
    ids="-".join,
)
def test_compare_quick_writes_a_table_json_and_plots(
    adjoints, tmp_path, monkeypatch, capsys
):
    from adjointkit.cli import _compare

    # The figures are drawn from what goes into results.json: checked here, and
    # drawn from synthetic tables in tests/test_plots.py (not timed in this run).
    plotted = []
    monkeypatch.setattr(
        _compare, "_plot", lambda *args: plotted.append(args) or [tmp_path / "a.png"]
    )
    # Without --rtol: the constant steps, then the problem's default adaptive one.
    argv = ["compare", "--quick", "--adjoints", *adjoints]
    # One constant N and the adaptive row (a second N would double the compiles).
    code = main([*argv, "--steps", "10", "--out", str(tmp_path)])
    assert code == 0
    table = capsys.readouterr().out
    assert all(name in table for name in adjoints) and "grad rel err" in table
    rtol = _compare.DEFAULT_RTOL["neural_ode"]
    assert f"rtol {rtol:g}" in table and "steps taken" in table
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    # Figures mean little without where and when they were taken.
    meta = results["meta"]
    assert meta["backend"] == jax.default_backend() and meta["device"]
    assert meta["date"].startswith("20") and meta["jax"] == jax.__version__
    assert meta["adaptive_max_steps"] == _compare.ADAPTIVE_MAX_STEPS
    assert meta["adjointkit"] == __version__ and meta["processor"]
    assert meta["device_kind"] == jax.devices()[0].device_kind
    # --quick's Neural ODE: MLP 8 -> 32 -> 32 -> 8, batch 16, float32.
    assert (meta["state_shape"], meta["state_size"]) == ([16, 8], 128)
    assert meta["parameters"] == 8 * 32 + 32 + 32 * 32 + 32 + 32 * 8 + 8
    assert meta["dtype"] == "float32"
    assert meta["steps"] == [10] and meta["rtols"] == [rtol]
    assert {r["adjoint"] for r in rows} == set(adjoints)
    n = len(adjoints)
    assert [r["setting"] for r in rows] == [*["10"] * n, *[f"rtol {rtol:g}"] * n]
    for row in rows:
        assert row["value_and_grad_s"] > 0 and row["temp_bytes"] > 0
        # Against the float64 reference: only Tsit5's discretisation (or
        # tolerance) and float32 rounding separate them (~2e-7 observed at N = 20,
        # ~1e-6 at the default rtol 1e-6); a wrong gradient is O(1).
        assert row["grad_rel_error"] < 1e-3
        if row["rtol"] is None:
            # Tsit5, N constant steps: 1 + 6 N evaluations.
            assert row["forward_f_evals"] == 1 + 6 * row["steps"]
            assert (row["steps_taken"], row["rejected_steps"]) == (row["steps"], 0)
        else:
            # The controller chose the steps (5 observed); the table shows them.
            assert row["rtol"] == rtol and row["steps"] is None
            assert 0 < row["steps_taken"] < _compare.ADAPTIVE_MAX_STEPS
            # One more evaluation than with constant steps: the initial-step probe.
            attempted = row["steps_taken"] + row["rejected_steps"]
            assert row["forward_f_evals"] == 2 + 6 * attempted
            assert _compare._steps_label(row) in table
        # Checkpointed pullbacks re-evaluate steps; direct ones only transpose a
        # constant-step scan, and under adaptive steps re-run each attempted step
        # once per checkpointed level of the bounded loop (`_bounded_loop`).
        if row["adjoint"] == "direct":
            # (Older JAX loses the forward pass's count under jax.grad.)
            if COUNTS_DIFFERENTIATED_LOOPS and row["rtol"] is None:
                assert row["backward_f_evals"] == 0
            elif COUNTS_DIFFERENTIATED_LOOPS:
                levels = _bounded_loop._levels(
                    _compare.ADAPTIVE_MAX_STEPS, _bounded_loop.DEFAULT_BASE
                )
                per_level = 6 * attempted
                assert row["backward_f_evals"] % per_level == 0
                assert 0 < row["backward_f_evals"] <= (levels - 1) * per_level
        else:
            assert row["backward_f_evals"] >= row["forward_f_evals"]
    ((plot_rows, out, plot_meta),) = plotted
    assert out == tmp_path and json.loads(json.dumps([plot_rows, plot_meta])) == [
        rows,
        meta,
    ]
    assert "a.png" in table  # the paths the plots went to


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


def _measure_only_with(monkeypatch, measure):
    """Run compare with `measure` as its measurement and nothing else: the
    reference gradient is the parameters, no solve is tried first, no plot."""
    from adjointkit.cli import _compare

    monkeypatch.setattr(_compare, "_measure", measure)
    monkeypatch.setattr(_compare, "_reference_grad", lambda p: p.params)
    monkeypatch.setattr(_compare, "_solve_failure", lambda *a: None)
    monkeypatch.setattr(_compare, "_plot", lambda *args: [])


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


def test_every_problem_has_default_steps_and_tolerance():
    from adjointkit.cli import _compare

    assert set(_compare.DEFAULT_STEPS) == set(bench.PROBLEMS)
    assert set(_compare.DEFAULT_RTOL) == set(bench.PROBLEMS)


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
    --quick (Lotka-Volterra blows up below 40 steps over its t in [0, 10]), and
    its default tolerance within the adaptive runs' `max_steps`."""
    from adjointkit.cli import _compare

    quick, full = _compare.DEFAULT_STEPS[name]
    rtol = _compare.DEFAULT_RTOL[name]
    for is_quick, steps in [(True, quick), (False, full)]:
        problem = _compare._problem(name, is_quick)
        for n in steps:
            assert _compare._solve_failure(problem, n, None) is None, n
        max_steps = _compare.ADAPTIVE_MAX_STEPS
        assert _compare._solve_failure(problem, max_steps, rtol) is None


def test_compare_quick_on_lotka_volterra(tmp_path, monkeypatch, capsys):
    # Each measurement here is the real forward solve, which used to blow up at
    # --quick's 10 and 20 steps; the rest (timing, memory) is covered above.
    from adjointkit.cli import _compare

    def measure(problem, steps, rtol, adjoint, library, repeats):
        forward = bench.adjointkit_loss(problem, adjoint, steps, rtol)
        loss, f_evals = jax.jit(forward)(problem.params)
        assert np.isfinite(loss)
        taken, rejected = _compare._steps_taken(problem, steps, rtol, adjoint, library)
        row = dict(_ROW, forward_f_evals=int(f_evals))
        return dict(row, steps_taken=taken, rejected_steps=rejected), problem.params

    monkeypatch.setattr(_compare, "_measure", measure)
    monkeypatch.setattr(_compare, "_reference_grad", lambda p: p.params)
    monkeypatch.setattr(_compare, "_plot", lambda *args: [])
    argv = ["compare", "--quick", "--problem", "lotka_volterra", "--adjoints"]
    assert main([*argv, "direct", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    quick_steps = _compare.DEFAULT_STEPS["lotka_volterra"][0]
    assert [r["steps"] for r in rows] == [*quick_steps, None]
    adaptive = rows[-1]
    assert adaptive["rtol"] == _compare.DEFAULT_RTOL["lotka_volterra"]
    # ~100 steps observed at rtol 1e-6, some rejected: the controller's work.
    assert 40 < adaptive["steps_taken"] < _compare.ADAPTIVE_MAX_STEPS
    assert adaptive["forward_f_evals"] == 2 + 6 * (
        adaptive["steps_taken"] + adaptive["rejected_steps"]
    )


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
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--adjoints", "checkpointed", "direct"]) == 0
    logged.append(capsys.readouterr().err)
    rtol = _compare.DEFAULT_RTOL["lotka_volterra"]
    assert "[1/5] float64 reference gradient" in logged[0]
    assert "[2/5] checkpointed at 100: v+g 2.00 ms" in logged[1]
    assert "[3/5] direct at 100: " in logged[2]
    # An adaptive run says how many steps it took: N is not fixed there.
    assert f"[4/5] checkpointed at rtol {rtol:g}: 10 steps, v+g 2.00 ms" in logged[3]
    assert f"[5/5] direct at rtol {rtol:g}: 10 steps, " in logged[4]
    assert all(entry.count("\n") == 1 for entry in logged)


@pytest.mark.parametrize(
    "rtol_argv, adaptive",
    [([], None), (["--rtol", "1e-4", "1e-5"], [1e-4, 1e-5]), (["--rtol"], [])],
    ids=["default", "given", "none"],
)
def test_compare_rtol_replaces_or_drops_the_default_adaptive_run(
    rtol_argv, adaptive, tmp_path, monkeypatch
):
    from adjointkit.cli import _compare

    adaptive = (
        [_compare.DEFAULT_RTOL["lotka_volterra"]] if adaptive is None else adaptive
    )
    monkeypatch.setattr(_compare, "_measure", lambda *a: (dict(_ROW), a[0].params))
    monkeypatch.setattr(_compare, "_reference_grad", lambda p: p.params)
    monkeypatch.setattr(_compare, "_solve_failure", lambda *a: None)
    monkeypatch.setattr(_compare, "_plot", lambda *args: [])
    argv = ["compare", "--problem", "lotka_volterra", "--steps", "100"]
    argv += ["--adjoints", "direct", *rtol_argv, "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["rtol"] for r in rows] == [None, *adaptive]
    assert [r["setting"] for r in rows] == ["100", *(f"rtol {r:g}" for r in adaptive)]


def test_compare_help_says_how_to_run_constant_steps_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--rtol with no value runs constant steps only" in out
    assert "lotka_volterra 1e-06" in out


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
        rtol=None,
        steps_taken=10,
        rejected_steps=0,
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


def test_table_sets_the_adaptive_rows_apart_with_their_steps(capsys):
    from adjointkit.cli._compare import _print_table

    adaptive = dict(rtol=1e-6, setting="rtol 1e-06", steps_taken=103)
    rows = [_table_row(), _table_row(**adaptive, rejected_steps=20)]
    rows.append(_table_row(adjoint="b", **adaptive, rejected_steps=0))
    _print_table(rows, "p")
    lines = capsys.readouterr().out.splitlines()
    (constant,) = [line for line in lines if " 10 " in line]
    first, second = [line for line in lines if "rtol 1e-06" in line]
    assert "103 (+20 rej)" in first and "103" in second and "rej" not in second
    # A rule (rich) or a blank line (plain) between constant and adaptive rows.
    between = lines[lines.index(constant) + 1 : lines.index(first)]
    assert len(between) == 1 and not any(c.isalnum() for c in between[0])


# The figures themselves are tested on synthetic tables in tests/test_plots.py.


def test_compare_carries_on_without_matplotlib(tmp_path, monkeypatch, capsys):
    from adjointkit.cli import _compare

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert _compare._plot([], tmp_path, {}) == []
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_results_metadata_names_version_processor_and_device():
    meta = bench.run_metadata(benchmark="x")
    assert meta["adjointkit"] == __version__ and meta["jax"] == jax.__version__
    assert meta["processor"]  # never empty, even where platform.processor() is
    assert meta["device_kind"] == jax.devices()[0].device_kind


def test_problem_size():
    # Pytrees of plain arrays (no JAX work): an MLP 8 -> 32 -> 8's weights and
    # biases, a batch of 16 states.
    params = [(np.zeros((8, 32)), np.zeros(32)), (np.zeros((32, 8)), np.zeros(8))]
    y0 = np.zeros((16, 8), np.float32)
    problem = bench.BenchProblem("p", None, params, y0, 0.0, 1.0, None)
    assert bench.problem_size(problem) == dict(
        state_shape=[16, 8],
        state_size=128,
        parameters=8 * 32 + 32 + 32 * 8 + 8,
        dtype="float32",
    )
    # A state of several arrays: the shape of each, the components of all.
    problem = bench.BenchProblem("q", None, params, (y0, np.zeros(3)), 0.0, 1.0, None)
    size = bench.problem_size(problem)
    assert size["state_shape"] == [[16, 8], [3]] and size["state_size"] == 131
    assert size["dtype"] == "float64"


# --- the stiff problems ----------------------------------------------------------


STIFF = ["robertson", "van_der_pol", "stiff_neural_ode"]


@pytest.mark.parametrize("name", STIFF)
@pytest.mark.parametrize(
    "extra", [["--steps", "100"], ["--rtol"]], ids=["steps", "no-rtol"]
)
def test_compare_stiff_problems_take_adaptive_steps_only(
    name, extra, monkeypatch, capsys
):
    from adjointkit.cli import _compare

    monkeypatch.setattr(_compare, "_reference_grad", _no_work)
    monkeypatch.setattr(_compare, "_measure", _no_work)
    assert main(["compare", "--problem", name, *extra]) == 2
    err = capsys.readouterr().err
    assert f"{name} is measured with adaptive steps only" in err
    assert err.count("\n") == 1


def test_compare_help_names_the_adaptive_only_problems(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "robertson, van_der_pol, stiff_neural_ode: adaptive steps only" in out


def _runtime_error() -> Exception:
    """What a compiled program that hits an Equinox runtime error raises: the
    message buried in a traceback of the callback that raised it."""
    import equinox as eqx

    @jax.jit
    def fails(x):
        return eqx.error_if(
            x, x > 0, "The maximum number of solver steps was reached. Try more."
        )

    try:
        jax.block_until_ready(fails(jax.numpy.ones(())))
    except Exception as error:
        return error
    raise AssertionError("no error raised")


def test_failure_reason_is_the_first_sentence_of_the_error():
    from adjointkit.cli._compare import _failure_reason, _quiet_callbacks

    with _quiet_callbacks():
        error = _runtime_error()
    assert _failure_reason(error) == "The maximum number of solver steps was reached."
    assert _failure_reason(ValueError("bad value. More.\nline")) == (
        "ValueError: bad value."
    )


def test_compare_reports_a_failing_method_and_goes_on(tmp_path, monkeypatch, capsys):
    # BacksolveAdjoint on Robertson: the primal backward in time explodes and the
    # backward solve fails at run time. The run records the failure in its row,
    # prints it under the table, and measures the others.
    from adjointkit.cli import _compare

    seen = []

    def measure(problem, steps, rtol, adjoint, library, repeats):
        # x64 is on for a float64 problem, whatever the caller's setting.
        assert jax.config.jax_enable_x64 and problem.y0.dtype == np.float64
        assert steps == _compare.STIFF_MAX_STEPS and rtol == 1e-6
        seen.append(type(adjoint).__name__)
        if type(adjoint).__name__ == "BacksolveAdjoint":
            raise _runtime_error()
        return dict(_ROW), problem.params

    _measure_only_with(monkeypatch, measure)
    argv = ["compare", "--problem", "robertson", "--out", str(tmp_path)]
    argv += ["--adjoints", "backsolve", "checkpointed"]
    from adjointkit._compat import enable_x64

    with enable_x64(False):
        assert main(argv) == 0
    assert seen == ["BacksolveAdjoint", "CheckpointedAdjoint"]
    captured = capsys.readouterr()
    assert "backsolve at rtol 1e-06 failed: The maximum number" in captured.out
    assert "failed: The maximum number" in captured.err  # the progress log
    assert "Traceback" not in captured.err
    results = json.loads((tmp_path / "results.json").read_text())
    failed, ok = results["rows"]
    assert failed["failed"].startswith("The maximum number")
    assert failed["value_and_grad_s"] is None and failed["grad_rel_error"] is None
    assert ok["failed"] is None and ok["grad_rel_error"] == 0.0
    assert results["meta"]["solver"] == "kvaerno5" and results["meta"]["float64"]


def test_stiff_neural_ode_leaves_out_backsolve_unless_named(
    tmp_path, monkeypatch, capsys
):
    # Both libraries' Backsolve did not finish within 20 minutes there: the
    # default run leaves them out and says so; named, they run.

    seen = []

    def measure(problem, steps, rtol, adjoint, library, repeats):
        seen.append((library, type(adjoint).__name__))
        return dict(_ROW), problem.params

    _measure_only_with(monkeypatch, measure)
    argv = ["compare", "--problem", "stiff_neural_ode", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert ("adjointkit", "BacksolveAdjoint") not in seen
    assert ("diffrax", "BacksolveAdjoint") not in seen
    assert ("adjointkit", "QuadratureAdjoint") in seen
    err = capsys.readouterr().err
    for name in ("backsolve", "diffrax-backsolve"):
        assert f"stiff_neural_ode leaves out {name} (" in err
    seen.clear()
    assert main([*argv, "--adjoints", "backsolve"]) == 0
    assert seen == [("adjointkit", "BacksolveAdjoint")]
    assert "leaves out" not in capsys.readouterr().err


def test_table_shows_a_failed_row_and_why(capsys):
    from adjointkit.cli._compare import _FIGURES, _print_table

    failed = dict(_table_row(adjoint="backsolve"), **dict.fromkeys(_FIGURES))
    failed["failed"] = "The backward (adjoint) solve failed."
    _print_table([_table_row(), failed], "robertson")
    lines = capsys.readouterr().out.splitlines()
    (row,) = [line for line in lines if line.count("backsolve") == 1 and " - " in line]
    assert "failed" in row
    assert "backsolve at 10 failed: The backward (adjoint) solve failed." in lines


@pytest.mark.slow
@pytest.mark.parametrize("name", STIFF)
def test_stiff_default_tolerance_suits_the_problem(name):
    from adjointkit.cli import _compare

    problem = _compare._problem(name, True)
    with _compare._precision(problem):
        rtol = _compare.DEFAULT_RTOL[name]
        assert _compare._solve_failure(problem, _compare.STIFF_MAX_STEPS, rtol) is None


@pytest.mark.slow
def test_compare_quick_on_the_stiff_neural_ode(tmp_path, capsys):
    # End to end: Kvaerno5 in float64 against the Rodas5 reference at 1e-10.
    argv = ["compare", "--quick", "--problem", "stiff_neural_ode"]
    argv += ["--out", str(tmp_path), "--adjoints", "checkpointed", "quadrature"]
    assert main(argv) == 0
    rows = {
        r["adjoint"]: r
        for r in json.loads((tmp_path / "results.json").read_text())["rows"]
    }
    # rtol 1e-6 over ~50 steps: measured ~4e-7 for the discrete adjoint, ~3e-4
    # for the interpolating one (its Hermite interpolation of y on the way
    # back); a wrong gradient is O(1).
    assert rows["checkpointed"]["grad_rel_error"] < 1e-5
    assert rows["quadrature"]["grad_rel_error"] < 3e-3


@pytest.mark.slow
def test_compare_quick_on_robertson(tmp_path, capsys):
    # End to end: Kvaerno5 in float64, the default adjoint and Backsolve (which
    # fails on Robertson: reported, not raised), and Diffrax's default.
    argv = ["compare", "--quick", "--problem", "robertson", "--out", str(tmp_path)]
    argv += ["--adjoints", "checkpointed", "backsolve", "diffrax-recursive"]
    assert main(argv) == 0
    rows = {
        r["adjoint"]: r
        for r in json.loads((tmp_path / "results.json").read_text())["rows"]
    }
    assert "backward (adjoint) solve failed" in rows["backsolve"]["failed"]
    for name in ("checkpointed", "diffrax-recursive"):
        row = rows[name]
        assert row["failed"] is None
        # rtol 1e-6 over ~50 steps against forward sensitivities at 1e-12:
        # measured ~1e-6; a wrong gradient is O(1).
        assert row["grad_rel_error"] < 1e-4
        assert 10 < row["steps_taken"] < _compare_max_steps()
        assert row["forward_f_evals"] > row["steps_taken"]


def _compare_max_steps():
    from adjointkit.cli import _compare

    return _compare.STIFF_MAX_STEPS


def test_reversible_rows_run_the_solver_wrapped_in_reversible():
    # compare's "reversible" row (ReversibleAdjoint): the runners wrap the
    # problem's own solver (Tsit5 for the Neural ODE) in Reversible. Its
    # gradient is the exact gradient of that discretisation, so DirectAdjoint
    # through the same wrapped solver gives it up to rounding (float64, 20
    # steps: agreement to ~1e-14 expected; asserted at 1e-10).
    import adjointkit as ak
    from adjointkit.cli import _compare

    library, adjoint = _compare._adjoints_for(50)["reversible"]
    assert library == "adjointkit" and isinstance(adjoint, ak.ReversibleAdjoint)
    problem = bench.neural_ode(state=4, width=8, batch=3, dtype=np.float64)
    assert problem.solver == "tsit5"

    def ours(p):
        sol = bench.adjointkit_solve(problem, p, 20, adjoint=ak.ReversibleAdjoint())
        return problem.loss(sol.ys[-1])

    def direct(p):
        sol = ak.solve(
            problem.f, ak.Reversible(ak.Tsit5()), problem.t0, problem.t1,
            problem.y0, p, dt0=(problem.t1 - problem.t0) / 20,
            adjoint=ak.DirectAdjoint(), max_steps=20,
        )  # fmt: skip
        return problem.loss(sol.ys[-1])

    g_ours = jax.jit(jax.grad(ours))(problem.params)
    g_direct = jax.jit(jax.grad(direct))(problem.params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_direct), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
