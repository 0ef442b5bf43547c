"""Each script in examples/ runs, shortened (`--quick`), as a user would run it: in a
fresh Python, float32 (the default; the tests' float64 does not reach it)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _run(name, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {
        "spiral_neural_ode.py",
        "lotka_volterra_fit.py",
        "choose_adjoint.py",
    }


@pytest.mark.slow  # trains for a while; the other examples run by default
def test_spiral_neural_ode(tmp_path):
    out = _run("spiral_neural_ode.py", tmp_path)
    losses = [float(x) for x in re.findall(r"loss (\S+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert "the whole spiral from y(0)" in out
    assert _png(tmp_path / "spiral_neural_ode.png")


def test_lotka_volterra_fit(tmp_path):
    out = _run("lotka_volterra_fit.py", tmp_path)
    losses = [float(x) for x in re.findall(r"step +\d+ +loss (\S+)", out)]
    assert losses[-1] < losses[0]
    table = re.findall(r"^(alpha|beta|gamma|delta) +(\S+) +(\S+) +(\S+)$", out, re.M)
    assert len(table) == 4
    true, guess, fitted = ([float(row[i]) for row in table] for i in (1, 2, 3))
    # Even shortened, the fit moves every parameter towards the truth.
    for t, g, f in zip(true, guess, fitted, strict=True):
        assert abs(f - t) < abs(g - t)
    assert _png(tmp_path / "lotka_volterra_fit.png")


@pytest.mark.slow  # what it runs, `adjointkit compare` runs in test_cli
def test_choose_adjoint(tmp_path):
    out = _run("choose_adjoint.py", tmp_path)
    rows = {
        m[0]: (float(m[1]), float(m[2]))
        for m in re.findall(r"^(\w[^\n]*?) +([\d.]+) +([\d.e+-]+) +[\d.]+$", out, re.M)
    }
    assert set(rows) == {"Checkpointed (binomial)", "Direct", "Backsolve"}
    (mem_ckpt, err_ckpt), (mem_direct, err_direct) = (
        rows["Checkpointed (binomial)"],
        rows["Direct"],
    )
    # Both exact gradients of the same computed solution; Direct keeps every stage.
    assert err_ckpt < 1e-3 and err_direct < 1e-3
    assert mem_direct > mem_ckpt
    assert _png(tmp_path / "choose_adjoint.png")


@pytest.mark.parametrize(
    "name", ["spiral_neural_ode.py", "lotka_volterra_fit.py", "choose_adjoint.py"]
)
def test_example_has_a_docstring_and_a_quick_flag(name):
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""') and "--quick" in source
