"""Every Python code block in the README and the docs runs as written."""

import pathlib
import re

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.relative_to(ROOT)}#{i}")
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
