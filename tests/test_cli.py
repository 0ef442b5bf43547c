"""The `adjointkit` command line: version, help, and `compare` end to end."""

import json
import subprocess
import sys

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


def test_compare_quick_writes_a_table_and_json(tmp_path, capsys):
    code = main(
        [
            "compare",
            "--quick",
            "--adjoints",
            "checkpointed",
            "direct",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "checkpointed" in table and "direct" in table and "grad rel err" in table
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert {r["adjoint"] for r in rows} == {"checkpointed", "direct"}
    for row in rows:
        assert row["value_and_grad_s"] > 0 and row["temp_bytes"] > 0
        # Tsit5, 20 constant steps: 1 + 6 * 20 evaluations.
        assert row["forward_f_evals"] == 121
        # Against the float64 reference: only Tsit5's discretisation and float32
        # rounding separate them (~1e-7 observed); a wrong gradient is O(1).
        assert row["grad_rel_error"] < 1e-4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--adjoints", "nonsense"], "unknown adjoint"),
        (["compare", "--steps", "0"], "--steps must be positive"),
    ],
)
def test_compare_rejects_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_compare_rejects_an_unknown_problem(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--problem", "nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
