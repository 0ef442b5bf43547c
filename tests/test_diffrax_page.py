"""docs/diffrax.md shows the same computations written with Diffrax and with
adjointkit side by side; run both sides of each pair and check that they agree.

The pairs are slow (each compiles a Diffrax and an adjointkit gradient: about
15-25 s of CPU); so are the page's blocks in tests/test_docs.py. The default
suite checks that every name the page uses exists.
"""

import ast
import inspect
import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest


pytest.importorskip("diffrax")

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "diffrax.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def _run(block):
    namespace = {"__name__": "__docs__"}
    exec(compile(block, str(PAGE), "exec"), namespace)
    return namespace


def _pair(index):
    diffrax_block, ak_block = BLOCKS[2 * index], BLOCKS[2 * index + 1]
    assert "import diffrax" in diffrax_block, "Diffrax's side comes first"
    assert "import adjointkit" in ak_block and "diffrax" not in ak_block
    return _run(diffrax_block), _run(ak_block)


def test_the_page_has_two_pairs():
    assert len(BLOCKS) == 4


def test_every_name_on_the_page_exists():
    # Fast, in the default suite: the page (table and code) names only what
    # adjointkit and Diffrax export, and only keywords that solve accepts.
    import diffrax

    import adjointkit

    text = PAGE.read_text()
    ak_names = set(re.findall(r"\bak\.(\w+)", text))
    assert "solve" in ak_names
    missing = sorted(n for n in ak_names if not hasattr(adjointkit, n))
    assert not missing, f"docs/diffrax.md names ak.{missing}, not in adjointkit"
    dfx_names = set(re.findall(r"\bdiffrax\.(\w+)", text))
    missing = sorted(n for n in dfx_names if not hasattr(diffrax, n))
    assert not missing, f"docs/diffrax.md names diffrax.{missing}, not in Diffrax"
    keywords = set(inspect.signature(adjointkit.solve).parameters)
    calls = [
        node
        for block in BLOCKS
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "ak.solve"
    ]
    assert len(calls) == 2
    for call in calls:
        used = {k.arg for k in call.keywords}
        assert used <= keywords, f"ak.solve has no keyword {used - keywords}"


@pytest.mark.slow
def test_neural_ode_training_step_agrees_with_diffrax():
    # Diffrax: Tsit5, ConstantStepSize, dt0=0.1, RecursiveCheckpointAdjoint();
    # adjointkit: Tsit5, ConstantStepSize, dt0=0.1, CheckpointedAdjoint(). The
    # same ten steps of the same method in float32: only the order of the
    # floating-point operations differs.
    dfx, ak = _pair(0)
    # The loss is O(1): a few ulps per operation over 10 steps x 6 stages of a
    # small MLP stays far below 1e-5 (80 float32 ulps).
    np.testing.assert_allclose(ak["loss"], dfx["loss"], rtol=1e-5)

    # The gradients at one and the same model, from each side's solve_one.
    def grads(ns, model):
        def loss(m):
            y1 = jax.vmap(ns["solve_one"], (None, 0))(m, ns["y0"])
            return jnp.mean((y1 - ns["target"]) ** 2)

        return jax.tree.leaves(eqx.filter_grad(loss)(model))

    g_dfx, g_ak = grads(dfx, dfx["model"]), grads(ak, dfx["model"])
    scale = max(float(jnp.max(jnp.abs(g))) for g in g_dfx)
    # The backward pass repeats the forward's arithmetic in reverse: 1e-4 of the
    # largest entry is ~800 ulps of headroom.
    for a, b in zip(g_ak, g_dfx, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)

    # A second step from each side's updated model and optimiser state: Adam's
    # first update is lr * sign(g) except where |g| is below its eps (1e-8), and
    # such components move the loss by at most lr * 1e-8 each.
    next_dfx = dfx["train_step"](dfx["model"], dfx["opt_state"])[0]
    next_ak = ak["train_step"](ak["model"], ak["opt_state"])[0]
    np.testing.assert_allclose(next_ak, next_dfx, rtol=1e-4)


@pytest.mark.slow
def test_parameter_fit_agrees_with_diffrax():
    # Both: Tsit5 with PIDController(rtol=1e-6, atol=1e-6), dt0=None, the default
    # discrete adjoint (Diffrax RecursiveCheckpointAdjoint(), adjointkit
    # CheckpointedAdjoint()), 50 Adam steps with lr 1e-2, float32.
    dfx, ak = _pair(1)
    # The two libraries choose different adaptive steps, so each solution is off
    # the exact one by its own error, ~1e-5 relative for local tolerances 1e-6
    # over ~50 steps. Gradients then differ by ~1e-4 relative (sensitivities of
    # order 10), each Adam update (size <= lr = 1e-2) by ~1e-6, 50 of them by
    # ~5e-5: atol 5e-4 on the rates leaves a factor 10.
    np.testing.assert_allclose(ak["rates"], dfx["rates"], rtol=0, atol=5e-4)
    # Residuals ~0.3 against values ~10: a 1e-5 relative change of the values
    # moves the loss (~0.1) by ~3e-3 of itself.
    np.testing.assert_allclose(ak["loss"], dfx["loss"], rtol=1e-2)
    # And the fit does fit: the rates end closer to the true ones than they
    # started, by more than half (data made from [1.0, 0.1, 1.5, 0.075]).
    true = np.array([1.0, 0.1, 1.5, 0.075])
    start = np.array([0.9, 0.12, 1.4, 0.08])
    for ns in (dfx, ak):
        distance = np.linalg.norm(np.asarray(ns["rates"]) - true)
        assert distance < 0.5 * np.linalg.norm(start - true), ns["rates"]
