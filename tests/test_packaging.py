"""pyproject.toml's packaging metadata, read statically: the license, the typing
marker and the extras. .ci/wheel.sh checks the built sdist and wheel themselves."""

import hashlib
import pathlib
import re

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent

# sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt);
# the same file as absl-py's and trio's LICENSE.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


@pytest.fixture(scope="module")
def pyproject() -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:
        tomllib = pytest.importorskip("tomli", reason="Python 3.10 without tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_its_text(pyproject):
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # PEP 639: a license classifier beside a license expression is an error.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    text = (ROOT / "LICENSE").read_text()
    assert " ".join(text.split()[:6]) == "Apache License Version 2.0, January 2004"
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == APACHE_2_SHA256, "not the verbatim text"
    # setuptools understands the string form (PEP 639) from 77.0 on.
    requires = pyproject["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools>=(\d+)[.\d]*", setuptools)
    assert match and int(match[1]) >= 77, setuptools


def test_package_says_it_is_typed(pyproject):
    assert (ROOT / "src" / "adjointkit" / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["adjointkit"]
    assert "Typing :: Typed" in pyproject["project"]["classifiers"]


def test_python_classifiers_within_requires_python(pyproject):
    project = pyproject["project"]
    (lowest,) = re.fullmatch(r">=3\.(\d+)", project["requires-python"]).groups()
    minors = [
        int(m[1])
        for c in project["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c))
    ]
    assert minors and min(minors) == int(lowest), (minors, lowest)


def test_dev_extra_names_the_other_extras_without_repeating_them(pyproject):
    extras = dict(pyproject["project"]["optional-dependencies"])
    dev = extras.pop("dev")
    (itself,) = [r for r in dev if r.startswith("adjointkit[")]
    named = set(itself.removeprefix("adjointkit[").removesuffix("]").split(","))
    assert named == set(extras), (named, set(extras))
    theirs = {r for requirements in extras.values() for r in requirements}
    repeated = {r for r in dev if r != itself} & theirs
    assert not repeated, f"dev repeats {repeated}: name its extra instead"


def test_sdist_carries_docs_examples_benchmarks_and_tests():
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    for folder in ["docs", "examples", "benchmarks", "tests", ".ci"]:
        assert f"graft {folder}" in manifest, folder
