"""`bounded_while_loop`: a while loop that reverse mode can differentiate.

Specifications:

1. It is `lax.while_loop` stopped after at most `max_iterations` calls of `body`,
   exactly, whether or not `max_iterations` is a power of the base.
2. Its reverse- and forward-mode derivatives are those of the same iterations
   written out by hand.
3. Under `vmap`, each example stops on its own condition.
"""

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import pytest

from adjointkit._bounded_loop import bounded_while_loop


def count_calls(stop_at, max_iterations, base):
    """How many times `body` runs when `cond` holds until `stop_at` calls."""

    def run(stop_at):
        return bounded_while_loop(
            lambda n: n < stop_at,
            lambda n: n + 1,
            jnp.asarray(0),
            max_iterations=max_iterations,
            base=base,
        )

    return int(jax.jit(run)(stop_at))


# Bounds around and between block sizes of base 4 (4, 16, 64) and 8.
@pytest.mark.parametrize("max_iterations", [0, 1, 3, 4, 5, 15, 16, 17, 37, 64, 65])
@pytest.mark.parametrize("base", [4, 8])
def test_runs_at_most_max_iterations_exactly(max_iterations, base):
    # A condition that never fails: the bound alone stops the loop.
    assert count_calls(10**6, max_iterations, base) == max_iterations
    # One that fails first: the loop stops there, like a while loop.
    for stop_at in (0, max_iterations // 2, max(max_iterations - 1, 0)):
        assert count_calls(stop_at, max_iterations, base) == stop_at


def iterate(x, a):
    """The body: x <- x + 0.1 sin(a x) + 0.05 a, nonlinear in both."""
    return x + 0.1 * jnp.sin(a * x) + 0.05 * a


def loop_loss(x0, a, max_iterations):
    """Iterate until the sum of x passes 6 (or the bound), then a readout."""
    x = bounded_while_loop(
        lambda x: jnp.sum(x) < 6.0,
        lambda x: iterate(x, a),
        x0,
        max_iterations=max_iterations,
        base=4,
    )
    return jnp.sum(x**2)


def unrolled_loss(x0, a, num):
    x = x0
    for _ in range(num):
        x = iterate(x, a)
    return jnp.sum(x**2)


def iterations_taken(x0, a, max_iterations):
    x, n = x0, 0
    while n < max_iterations and float(jnp.sum(x)) < 6.0:
        x, n = iterate(x, a), n + 1
    return n


@pytest.mark.parametrize("max_iterations", [23, 100])
def test_derivatives_are_those_of_the_unrolled_iterations(max_iterations):
    """Reverse and forward mode agree with the same iterations written out (23:
    the bound stops the loop, mid-block; 100: the condition does, after 24).
    Same operations in the same order: equal to rounding, 1e-13 relative."""
    x0 = jnp.asarray([0.1, -0.2, 0.3])
    a = jnp.asarray(0.7)
    num = iterations_taken(x0, a, max_iterations)
    assert 0 < num <= max_iterations
    grad = jax.jit(jax.grad(loop_loss, (0, 1)), static_argnums=2)(x0, a, max_iterations)
    expected = jax.grad(unrolled_loss, (0, 1))(x0, a, num)
    for g, e in zip(grad, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-13)
    tangent = (jnp.asarray([1.0, 0.5, -0.25]), jnp.asarray(0.3))
    _, jvp = jax.jvp(lambda x, b: loop_loss(x, b, max_iterations), (x0, a), tangent)
    expected_jvp = sum(jnp.vdot(e, t) for e, t in zip(expected, tangent, strict=True))
    np.testing.assert_allclose(jvp, expected_jvp, rtol=1e-13)


def test_vmap_stops_each_example_on_its_own_condition():
    """Batched, `cond` is a select: the iterations an example did not need must
    leave it (and its gradient) unchanged."""
    x0s = jnp.asarray([[0.1, -0.2, 0.3], [1.0, 0.9, 0.8]])
    a = jnp.asarray(0.7)
    grad = jax.grad(loop_loss, (0, 1))
    batched = jax.jit(jax.vmap(grad, in_axes=(0, None, None)), static_argnums=2)(
        x0s, a, 100
    )
    for i in range(2):
        num = iterations_taken(x0s[i], a, 100)
        expected = jax.grad(unrolled_loss, (0, 1))(x0s[i], a, num)
        np.testing.assert_allclose(batched[0][i], expected[0], rtol=1e-13)
        np.testing.assert_allclose(batched[1][i], expected[1], rtol=1e-13)


def test_rejects_bad_bounds():
    with pytest.raises(ValueError, match="max_iterations"):
        bounded_while_loop(lambda x: True, lambda x: x, 0.0, max_iterations=-1)
    with pytest.raises(TypeError, match="max_iterations"):
        bounded_while_loop(lambda x: True, lambda x: x, 0.0, max_iterations=2.0)
    with pytest.raises(ValueError, match="base"):
        bounded_while_loop(lambda x: True, lambda x: x, 0.0, max_iterations=3, base=1)


def test_a_while_loop_in_value():
    """Without differentiation, the value is `lax.while_loop`'s."""

    def cond(c):
        return c[1] < 50.0

    def body(c):
        return c[0] + 1, c[1] * 1.3 + 1.0

    init = (jnp.asarray(0), jnp.asarray(1.0))
    expected = lax.while_loop(cond, body, init)
    got = bounded_while_loop(cond, body, init, max_iterations=1000)
    assert int(got[0]) == int(expected[0])
    assert float(got[1]) == float(expected[1])
