"""Calls written in Diffrax's habits: recognised and answered with what to write
instead (or accepted, for `diffrax.ODETerm`), and never refused when they are
valid adjointkit calls."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak


def decay(t, y, args):
    return -args * y


Y0 = jnp.array([1.0, 2.0])
REPLACEMENT = "ak.solve(f, solver, t0, t1, y0, args, dt0=dt0, ...)"


def _exact(y0, rate, t):
    return np.asarray(y0) * np.exp(-rate * t)


# --- Diffrax's positional order --------------------------------------------------


def test_seven_positionals_is_diffrax_order():
    with pytest.raises(TypeError) as info:
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, 0.1, Y0, 0.5)
    assert "Diffrax's argument order" in str(info.value)
    assert REPLACEMENT in str(info.value)


def test_dt0_none_in_fifth_place_is_diffrax_order():
    with pytest.raises(TypeError) as info:
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, None, Y0)
    assert REPLACEMENT in str(info.value)


def test_y0_none_alone_names_the_state():
    with pytest.raises(TypeError, match="`y0`.*None"):
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, None)


def test_y0_both_positional_and_keyword_is_diffrax_order():
    # diffeqsolve(terms, solver, t0, t1, dt0, y0=y0): five positionals and `y0=`.
    with pytest.raises(TypeError) as info:
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, 0.1, y0=Y0, args=0.5)
    assert REPLACEMENT in str(info.value)


def test_ambiguous_diffrax_order_that_fails_gets_the_hint():
    # (f, solver, t0, t1, dt0=0.1, y0=array) read as y0=0.1, args=array: f
    # returns the wrong shape, and the error adds what to write.
    with pytest.raises(ValueError) as info:
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, 0.1, Y0)
    assert "same shape" in str(info.value)
    assert REPLACEMENT in str(info.value)


@pytest.mark.parametrize("y0", [1.0, jnp.asarray(1.0)])
def test_scalar_state_and_scalar_args_are_not_mistaken_for_diffrax(y0):
    # Six positionals, the fifth a scalar: a valid scalar problem, which must run.
    sol = ak.solve(decay, ak.Tsit5(), 0.0, 1.0, y0, 0.5, dt0=0.05)
    # Tsit5, 20 steps of 0.05 on y' = -y/2: error ~ (0.05)^5 per unit time.
    np.testing.assert_allclose(sol.ys[-1], _exact(1.0, 0.5, 1.0), rtol=1e-8)
    sol = ak.solve(
        decay, ak.Tsit5(), 0.0, 1.0, y0, 0.5,
        controller=ak.PIDController(rtol=1e-8, atol=1e-10),
    )  # fmt: skip
    # rtol 1e-8 per step, a handful of steps.
    np.testing.assert_allclose(sol.ys[-1], _exact(1.0, 0.5, 1.0), rtol=1e-7)


def test_valid_calls_still_run():
    expected = _exact(Y0, 0.5, 1.0)
    for sol in [
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, dt0=0.05),
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, args=0.5, dt0=0.05),
        ak.solve(decay, ak.Tsit5(), t0=0.0, t1=1.0, y0=Y0, args=0.5, dt0=0.05),
    ]:
        # As above: Tsit5 with 20 steps.
        np.testing.assert_allclose(sol.ys[-1], expected, rtol=1e-8)


def test_a_bad_y0_in_a_valid_call_gets_no_diffrax_hint():
    # Five positionals: nothing Diffrax-like; the error is the plain one.
    with pytest.raises((TypeError, ValueError)) as info:
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, "state")
    assert "Diffrax" not in str(info.value)


# --- keywords ------------------------------------------------------------------


def test_stepsize_controller_keyword_names_controller():
    with pytest.raises(TypeError) as info:
        ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5,
            stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-7),
        )  # fmt: skip
    message = str(info.value)
    assert "controller=ak.PIDController(rtol=1e-05, atol=1e-07)" in message


def test_stepsize_controller_constant_names_constant():
    with pytest.raises(TypeError, match=r"controller=ak\.ConstantStepSize\(\)"):
        ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, dt0=0.1,
            stepsize_controller=diffrax.ConstantStepSize(),
        )  # fmt: skip


def test_terms_keyword_explains_the_first_argument():
    with pytest.raises(TypeError, match="first positional"):
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, terms=diffrax.ODETerm(decay))


def test_unknown_keyword_lists_the_arguments():
    with pytest.raises(TypeError, match="controller, saveat, adjoint"):
        ak.solve(decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, rtol=1e-6)


def test_diffrax_objects_get_their_adjointkit_names():
    with pytest.raises(TypeError, match=r"ak\.Tsit5"):
        ak.solve(decay, diffrax.Tsit5(), 0.0, 1.0, Y0, 0.5, dt0=0.1)
    with pytest.raises(TypeError, match=r"ak\.PIDController"):
        ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5,
            controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
        )  # fmt: skip
    with pytest.raises(TypeError, match=r"ak\.SaveAt"):
        ak.solve(
            decay, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, dt0=0.1,
            saveat=diffrax.SaveAt(t1=True),
        )  # fmt: skip


# --- terms ---------------------------------------------------------------------


def test_odeterm_is_accepted_and_differentiated():
    def loss(rate, wrap):
        f = diffrax.ODETerm(decay) if wrap else decay
        sol = ak.solve(f, ak.Tsit5(), 0.0, 1.0, Y0, rate, dt0=0.1)
        return jnp.sum(sol.ys**2)

    rate = jnp.asarray(0.5)
    # The same solve either way: bit for bit.
    assert loss(rate, True) == loss(rate, False)
    assert jax.grad(loss)(rate, True) == jax.grad(loss)(rate, False)


def test_odeterm_around_a_closure_passes_its_gradient():
    w = jnp.asarray(0.3)

    def loss(w):
        f = diffrax.ODETerm(lambda t, y, args: -w * y)
        return jnp.sum(ak.solve(f, ak.Tsit5(), 0.0, 1.0, Y0, dt0=0.1).ys)

    # d/dw sum(y0 e^{-w}) = -sum(y0) e^{-w}; Tsit5 with 10 steps: ~1e-7 relative.
    np.testing.assert_allclose(jax.grad(loss)(w), -np.sum(Y0) * np.exp(-0.3), rtol=1e-6)


def test_control_term_is_refused_with_an_explanation():
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, 1e-3, (2,), key=jax.random.key(0))
    term = diffrax.ControlTerm(lambda t, y, args: y, bm)
    with pytest.raises(TypeError, match="ODETerm"):
        ak.solve(term, ak.Tsit5(), 0.0, 1.0, Y0, dt0=0.1)
    multi = diffrax.MultiTerm(diffrax.ODETerm(decay), term)
    with pytest.raises(TypeError, match="MultiTerm"):
        ak.solve(multi, ak.Tsit5(), 0.0, 1.0, Y0, 0.5, dt0=0.1)
