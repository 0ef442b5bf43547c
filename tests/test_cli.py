"""The `adjointkit` command line: version, help, and `compare` end to end."""

import json
import os
import subprocess
import sys

import jax
import pytest

from adjointkit import __version__
from adjointkit.cli import main


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
    raise AssertionError("the command started its work before checking --out")


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


def test_compare_rejects_an_unknown_problem(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--problem", "nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_table_shows_the_device_peak_where_the_backend_keeps_one(capsys):
    from adjointkit.cli._compare import _print_table

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

    row = dict(
        adjoint="every [k=4]",
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
    _print_table([row], "problem [small]")
    out = capsys.readouterr().out
    assert "every [k=4]" in out and "problem [small]" in out
