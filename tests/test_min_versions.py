"""The minimum versions CI tests (.ci/min-versions.txt) are the ones pyproject.toml
declares, so that what is declared is what is tested."""

import pathlib
import re

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _version(text: str) -> tuple[int, ...]:
    """'0.2' and '0.2.0' alike: release numbers without trailing zeros."""
    parts = [int(p) for p in text.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _declared_lower_bounds() -> dict[str, tuple[int, ...]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement)
        assert match, f"no plain lower bound in {requirement!r}"
        bounds[match[1].lower()] = _version(match[2])
    return bounds


def _pinned() -> dict[str, tuple[int, ...]]:
    pins = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = _version(version.strip())
    return pins


def test_ci_pins_the_declared_lower_bounds():
    declared, pinned = _declared_lower_bounds(), _pinned()
    assert pinned.pop("jaxlib") == pinned["jax"]  # jaxlib goes with jax
    assert pinned == declared
