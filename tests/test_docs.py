"""Every Python code block in the README and the docs runs as written, and every
public name is documented as the API reference needs it."""

import inspect
import pathlib
import re

import pytest

import adjointkit as ak


ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# docs/diffrax.md's side-by-side examples compile a Diffrax and an adjointkit
# gradient each (5-10 s of CPU a block): slow here, and run against each other by
# tests/test_diffrax_page.py (also slow), whose fast test checks the page's names.
_SLOW_PAGES = {"docs/diffrax.md"}
# The default run (10 minutes on two cores) keeps the README's block, the
# training guide's (the oldest-versions subset runs them) and the cheapest block
# of every other page with more than one; the blocks that compile 5-20 s of
# gradients run with `-m slow`. What they show runs by default in tests of its
# own: stiff.md's Robertson gradient (Kvaerno5, CheckpointedAdjoint) in
# test_implicit; pullback.md's cotangents from the augmented system in
# test_continuous_adjoints' test_time_cotangents_follow_the_adjoint_formulas;
# discretise_vs_optimise.md's discrete against continuous gradients in
# test_property and test_continuous_adjoints; index.md's solves, Equinox models
# and optax loop in the README's block, test_idioms and test_train.
_SLOW_BLOCKS = {
    "docs/index.md#0",
    "docs/index.md#2",
    "docs/index.md#3",
    "docs/index.md#4",
    "docs/stiff.md#0",
    "docs/pullback.md#0",
    "docs/discretise_vs_optimise.md#0",
    "docs/discretise_vs_optimise.md#2",
}


def _block_param(page, i, block):
    name = page.relative_to(ROOT).as_posix()
    slow = name in _SLOW_PAGES or f"{name}#{i}" in _SLOW_BLOCKS
    return pytest.param(
        block, id=f"{name}#{i}", marks=[pytest.mark.slow] if slow else []
    )


BLOCKS = [
    _block_param(page, i, block)
    for page in PAGES
    for i, block in enumerate(
        re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    )
]


def test_there_are_examples_to_run():
    assert BLOCKS, "no Python code blocks found in README.md or docs/"


@pytest.mark.parametrize("block", BLOCKS)
def test_code_block_runs(block):
    exec(compile(block, "<docs>", "exec"), {"__name__": "__docs__"})


PUBLIC = sorted(
    name
    for name in dir(ak)
    if not name.startswith("_") and not inspect.ismodule(getattr(ak, name))
)
# What a docstring says of its inputs: arguments of what users call; the fields of
# what they read; the values of an enumeration; the duties of an abstract class.
_SECTIONS = (
    "**Arguments:**",
    "**Attributes:**",
    "**Values:**",
    "implementation provides",
)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_documents_its_inputs(name):
    doc = inspect.getdoc(getattr(ak, name)) or ""
    assert any(section in doc for section in _SECTIONS), name
    if inspect.isfunction(getattr(ak, name)):
        assert "**Returns:**" in doc, name
