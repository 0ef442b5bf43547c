"""Bad input gets a clear error naming what is wrong; failed solves say why.

Problems known at trace time raise `ValueError`/`TypeError` from `solve` itself.
Problems only known at run time (traced values, or the solve itself failing) raise
`equinox.EquinoxRuntimeError` with `throw=True`, or are reported in
`Solution.result` with `throw=False`. Runtime checks under a JIT are run through
`eqx.filter_jit`, which re-raises them as `EquinoxRuntimeError`.
"""

import os
import re
import subprocess
import sys

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak


Y0 = jnp.array([1.0, 0.5])


def decay(t, y, args):
    return -y


def constant(**kwargs):
    """A small constant-step solve of y' = -y on [0, 1], with overrides."""
    options = dict(
        f=decay, solver=ak.Euler(), t0=0.0, t1=1.0, y0=Y0, dt0=0.1, max_steps=16
    )
    options.update(kwargs)
    f, solver, t0, t1, y0 = (options.pop(k) for k in ("f", "solver", "t0", "t1", "y0"))
    return ak.solve(f, solver, t0, t1, y0, **options)


def adaptive(**kwargs):
    """A small adaptive solve of y' = -y on [0, 1], with overrides."""
    options = dict(
        solver=ak.Tsit5(),
        dt0=None,
        controller=ak.PIDController(rtol=1e-6, atol=1e-6),
        max_steps=64,
    )
    options.update(kwargs)
    return constant(**options)


# ---------------------------------------------------------------------------
# The vector field's output must match the state
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f, y0, pattern",
    [
        # Wrong shape: both shapes are named.
        (lambda t, y, a: jnp.ones(3), Y0, r"shape \(3,\).*shape \(2,\)"),
        (lambda t, y, a: y[:, None], Y0, r"shape \(2, 1\).*shape \(2,\)"),
        # Wrong structure: both structures are described, with their leaves.
        (lambda t, y, a: (y,), Y0, r"same structure.*y0 is .*\(2,\).*f returned"),
        (
            lambda t, y, a: {"x": y["x"]},
            {"x": Y0, "v": Y0},
            r"same structure.*y0 is .*'v'.*'x'.*f returned",
        ),
        # One leaf of a pytree wrong: that leaf is named.
        (
            lambda t, y, a: {"x": y["x"], "v": y["v"][:2]},
            {"x": Y0, "v": jnp.ones(3)},
            r"shape \(2,\) for y0\['v'\], which has shape \(3,\)",
        ),
        # Wrong dtype: both dtypes are named.
        (
            lambda t, y, a: y.astype(jnp.float32),
            Y0,
            r"dtype float32 for y0, which has dtype float64",
        ),
    ],
    ids=["shape", "extra-axis", "structure", "dict-keys", "leaf-shape", "dtype"],
)
def test_vector_field_output_must_match_state(f, y0, pattern):
    with pytest.raises(ValueError, match=pattern):
        constant(f=f, y0=y0)


def test_vector_field_mismatch_is_caught_at_trace_time():
    # Under a JIT the same mismatch is a ValueError during tracing (not a runtime
    # error): f's output is checked abstractly, before anything runs.
    def bad(t, y, args):
        return jnp.ones(3)

    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
        eqx.filter_jit(lambda y0: constant(f=bad, y0=y0))(Y0)


def test_f_must_be_callable():
    with pytest.raises(TypeError, match="`f` must be callable"):
        constant(f=jnp.ones(2))


# ---------------------------------------------------------------------------
# Step size
# ---------------------------------------------------------------------------


def test_constant_step_size_requires_dt0():
    with pytest.raises(ValueError, match="ConstantStepSize needs a step size.*dt0"):
        constant(dt0=None)  # the default controller
    with pytest.raises(ValueError, match="ConstantStepSize needs a step size.*dt0"):
        constant(dt0=None, controller=ak.ConstantStepSize())


@pytest.mark.parametrize(
    "t0, t1, dt0, needs",
    [(0.0, 1.0, -0.1, "> 0"), (1.0, 0.0, 0.1, "< 0")],
    ids=["forward", "backward"],
)
@pytest.mark.parametrize("solve", [constant, adaptive], ids=["constant", "adaptive"])
def test_dt0_wrong_sign_concrete(solve, t0, t1, dt0, needs):
    with pytest.raises(ValueError, match=f"wrong sign.*needs dt0 {re.escape(needs)}"):
        solve(t0=t0, t1=t1, dt0=dt0)


@pytest.mark.parametrize(
    "t0, t1, dt0", [(0.0, 1.0, -0.1), (1.0, 0.0, 0.1)], ids=["forward", "backward"]
)
@pytest.mark.parametrize("solve", [constant, adaptive], ids=["constant", "adaptive"])
@pytest.mark.parametrize("traced", ["dt0", "t0 and t1"])
def test_dt0_wrong_sign_traced_is_a_runtime_error(solve, t0, t1, dt0, traced):
    if traced == "dt0":
        run = eqx.filter_jit(lambda dt0: solve(t0=t0, t1=t1, dt0=dt0).ys)
        args = (jnp.asarray(dt0),)
    else:  # the direction of integration is then only known at run time
        run = eqx.filter_jit(lambda t0, t1: solve(t0=t0, t1=t1, dt0=dt0).ys)
        args = (jnp.asarray(t0), jnp.asarray(t1))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`dt0` has the wrong sign"):
        run(*args)


@pytest.mark.parametrize("dt0", [0.0, np.nan, np.inf])
def test_dt0_must_be_finite_and_nonzero(dt0):
    with pytest.raises(ValueError, match="`dt0` must be finite and nonzero"):
        constant(dt0=dt0)


def test_dt0_zero_traced_is_a_runtime_error():
    run = eqx.filter_jit(lambda dt0: constant(dt0=dt0).ys)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`dt0`.*zero"):
        run(jnp.asarray(0.0))


# ---------------------------------------------------------------------------
# State and times
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y0, error, pattern",
    [
        (jnp.array([1, 2]), TypeError, r"`y0` has dtype int.*floating point"),
        (np.array([True, False]), TypeError, r"`y0` has dtype bool.*floating point"),
        (jnp.array([1.0 + 1j, 2.0]), TypeError, r"`y0` is complex.*real"),
        (
            {"x": jnp.ones(2), "n": jnp.arange(3)},
            TypeError,
            r"`y0\['n'\]` has dtype int",
        ),
        ({}, ValueError, r"`y0` has no arrays"),
    ],
    ids=["int", "bool", "complex", "int-leaf", "empty"],
)
def test_state_must_be_real_floating(y0, error, pattern):
    with pytest.raises(error, match=pattern):
        constant(f=lambda t, y, a: y, y0=y0)


@pytest.mark.parametrize("name", ["t0", "t1", "dt0"])
def test_times_must_be_scalars(name):
    with pytest.raises(ValueError, match=rf"`{name}` must be a scalar.*shape \(2,\)"):
        constant(**{name: jnp.array([0.1, 0.2])})


def test_times_must_be_real():
    with pytest.raises(TypeError, match="`t1` must be a real number.*complex"):
        constant(t1=jnp.asarray(1.0 + 0j))


@pytest.mark.parametrize("t1", [np.inf, np.nan])
def test_times_must_be_finite(t1):
    with pytest.raises(ValueError, match="`t0` and `t1` must be finite"):
        constant(t1=t1)


# ---------------------------------------------------------------------------
# max_steps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_steps", [0, -1, 2.5, True, None])
def test_max_steps_must_be_a_positive_integer(max_steps):
    with pytest.raises(ValueError, match="`max_steps` must be a positive integer"):
        constant(max_steps=max_steps)


def _exhaust_adaptive(throw):
    # 4 steps cannot cover [0, 10] at tol 1e-6 (Tsit5 needs ~ 20).
    return adaptive(t1=10.0, max_steps=4, throw=throw)


def _exhaust_constant(throw):
    # N = ceil(1 / 0.1) = 10 equal steps > max_steps = 5; N known at trace time.
    return constant(max_steps=5, throw=throw)


def _exhaust_constant_traced(throw):
    # The same with t1 traced: N is only known at run time.
    return eqx.filter_jit(lambda t1: constant(t1=t1, max_steps=5, throw=throw))(
        jnp.asarray(1.0)
    )


EXHAUST = [_exhaust_adaptive, _exhaust_constant, _exhaust_constant_traced]
EXHAUST_IDS = ["adaptive", "constant", "constant, traced"]


@pytest.mark.parametrize("exhaust", EXHAUST, ids=EXHAUST_IDS)
def test_max_steps_exhausted_raises_naming_max_steps(exhaust):
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_steps`"):
        exhaust(throw=True)


@pytest.mark.parametrize("exhaust", EXHAUST, ids=EXHAUST_IDS)
def test_max_steps_exhausted_is_reported_without_throw(exhaust):
    sol = exhaust(throw=False)
    assert sol.result == ak.RESULTS.max_steps_reached
    # The partial solution is returned: exactly max_steps steps were taken, and the
    # state there is an ordinary finite value.
    max_steps = 4 if exhaust is _exhaust_adaptive else 5
    assert int(sol.stats["num_steps"]) == max_steps
    assert np.all(np.isfinite(sol.ys))


# ---------------------------------------------------------------------------
# NaN / inf states
# ---------------------------------------------------------------------------


def _blow_up_constant(throw):
    # y' = y^2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1, overflows to inf and
    # then NaN (inf - inf) with constant steps that march on to t = 2.
    return constant(
        f=lambda t, y, a: y**2,
        solver=ak.RK4(),
        t1=2.0,
        dt0=0.01,
        max_steps=256,
        throw=throw,
    )


def _log_negative_constant(throw):
    # y' = -1 from y = 0.5: log(y) is taken of a negative state after t = 0.5.
    return constant(f=lambda t, y, a: -1.0 + 0.0 * jnp.log(y), dt0=0.1, throw=throw)


def _log_negative_adaptive(throw):
    # f = log(1 - t) is NaN for every t > 1: each step across t = 1 is rejected
    # until the step size vanishes on a NaN candidate.
    return adaptive(
        f=lambda t, y, a: jnp.log(1.0 - t) + 0.0 * y,
        t1=2.0,
        max_steps=256,
        throw=throw,
    )


NONFINITE = [_blow_up_constant, _log_negative_constant, _log_negative_adaptive]
NONFINITE_IDS = ["constant, y^2", "constant, log(y)", "adaptive, log(1 - t)"]


@pytest.mark.parametrize("solve", NONFINITE, ids=NONFINITE_IDS)
def test_nonfinite_state_raises_naming_nan(solve):
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN"):
        solve(throw=True)


@pytest.mark.parametrize("solve", NONFINITE, ids=NONFINITE_IDS)
def test_nonfinite_state_is_reported_without_throw(solve):
    sol = solve(throw=False)
    assert sol.result == ak.RESULTS.nonfinite_state


def test_nonfinite_initial_state_is_reported():
    sol = constant(y0=jnp.array([1.0, jnp.nan]), throw=False)
    assert sol.result == ak.RESULTS.nonfinite_state


# ---------------------------------------------------------------------------
# Controllers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [ak.Euler(), ak.RK4()], ids=["Euler", "RK4"])
def test_pid_controller_needs_an_error_estimate(solver):
    name = type(solver).__name__
    with pytest.raises(ValueError, match=f"{name} has no embedded error estimate"):
        adaptive(solver=solver)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(rtol=0.0, atol=0.0), "`rtol` and `atol` cannot both be zero"),
        (dict(rtol=0, atol=0), "`rtol` and `atol` cannot both be zero"),
        (dict(rtol=-1e-6, atol=1e-6), "`rtol` must be finite and non-negative"),
        (dict(rtol=1e-6, atol=-1e-6), "`atol` must be finite and non-negative"),
        (dict(rtol=1e-6, atol=1e-6, factormin=0.0), "factormin"),
        (dict(rtol=1e-6, atol=1e-6, factormax=0.5), "factormax"),
        (dict(rtol=1e-6, atol=1e-6, safety=1.5), "`safety`"),
    ],
)
def test_pid_controller_validates_its_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ak.PIDController(**kwargs)


def test_zero_tolerances_given_as_arrays_are_rejected():
    with pytest.raises(ValueError, match="cannot both be zero"):
        ak.PIDController(rtol=jnp.array(0.0), atol=jnp.array(0.0))


def test_dtmin_forcing_failure_is_step_size_too_small():
    # y'' = -400 y oscillates with period ~0.31: tol 1e-10 needs steps far below
    # dtmin = 0.1.
    def fast_oscillator(t, y, args):
        return jnp.stack([y[1], -400.0 * y[0]])

    controller = ak.PIDController(rtol=1e-10, atol=1e-10, dtmin=0.1)
    sol = adaptive(f=fast_oscillator, controller=controller, throw=False)
    assert sol.result == ak.RESULTS.step_size_too_small
    with pytest.raises(eqx.EquinoxRuntimeError, match="`dtmin`"):
        adaptive(f=fast_oscillator, controller=controller, throw=True)


# ---------------------------------------------------------------------------
# SaveAt
# ---------------------------------------------------------------------------

SAVEAT_MESSAGE = re.escape("SaveAt(ts=...) must lie within [t0, t1] and be ordered")


@pytest.mark.parametrize(
    "t0, t1, ts",
    [
        (0.0, 1.0, [0.5, 1.5]),  # after t1
        (0.0, 1.0, [-0.1, 0.5]),  # before t0
        (0.0, 1.0, [0.6, 0.2]),  # unordered
        (1.0, 0.0, [0.2, 0.5]),  # ascending, but integrating backward
        (1.0, 0.0, [0.5, 1.2]),  # outside, integrating backward
    ],
    ids=["after-t1", "before-t0", "unordered", "backward-ascending", "backward-out"],
)
def test_saveat_ts_outside_interval_or_unordered(t0, t1, ts):
    dt0 = 0.1 if t1 > t0 else -0.1
    with pytest.raises(ValueError, match=SAVEAT_MESSAGE):
        constant(t0=t0, t1=t1, dt0=dt0, saveat=ak.SaveAt(ts=ts))


def test_saveat_ts_traced_outside_interval_is_a_runtime_error():
    run = eqx.filter_jit(lambda ts: constant(saveat=ak.SaveAt(ts=ts)).ys)
    np.testing.assert_allclose(  # inside: fine
        run(jnp.array([0.5, 1.0]))[-1], constant().ys[0], rtol=1e-14
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match=SAVEAT_MESSAGE):
        run(jnp.array([0.5, 1.5]))


def test_saveat_ts_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"one-dimensional, got \(2, 2\)"):
        ak.SaveAt(ts=jnp.zeros((2, 2)))


def test_evaluate_needs_dense_output():
    sol = constant()
    with pytest.raises(ValueError, match=re.escape("SaveAt(dense=True)")):
        sol.evaluate(0.5)


# ---------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(solver="tsit5"), "solver"),
        (dict(solver=ak.Tsit5), "solver"),  # the class, not an instance
        (dict(controller="pid"), "controller"),
        (dict(controller=ak.PIDController), "controller"),
        (dict(adjoint="direct"), "adjoint"),
        (dict(adjoint=ak.DirectAdjoint), "adjoint"),
        (dict(saveat={"t1": True}), "saveat"),
    ],
    ids=[
        "solver-str",
        "solver-class",
        "controller-str",
        "controller-class",
        "adjoint-str",
        "adjoint-class",
        "saveat-dict",
    ],
)
def test_wrong_argument_types(kwargs, name):
    with pytest.raises(TypeError, match=f"`{name}` must be"):
        constant(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(solver=ak.Tsit5), "Tsit5"),
        (dict(controller=ak.ConstantStepSize), "ConstantStepSize"),
        (dict(adjoint=ak.BacksolveAdjoint), "BacksolveAdjoint"),
    ],
)
def test_a_class_passed_for_an_instance_says_so(kwargs, name):
    with pytest.raises(TypeError, match=re.escape(f"pass `{name}()`, not `{name}`")):
        constant(**kwargs)


def test_result_reads_as_its_public_name():
    assert str(constant().result) == "adjointkit.RESULTS<The solve reached `t1`.>"
    failed = constant(dt0=0.01, max_steps=4, throw=False).result
    assert str(failed).startswith("adjointkit.RESULTS<The maximum number of steps")


@pytest.mark.parametrize(
    "adjoint",
    [ak.CheckpointedAdjoint(), ak.BacksolveAdjoint(), ak.QuadratureAdjoint()],
    ids=["checkpointed", "backsolve", "quadrature"],
)
def test_forward_mode_through_a_custom_vjp_names_direct_adjoint(adjoint):
    import jax

    def y1(y0):
        return constant(y0=y0, adjoint=adjoint).ys[-1]

    with pytest.raises(TypeError, match=r"forward-mode.*DirectAdjoint\(\)"):
        jax.jvp(y1, (Y0,), (Y0,))
    # DirectAdjoint does forward mode: y(1) = y0 (1 - 0.1)^10 for Euler.
    _, tangent = jax.jvp(
        lambda y0: constant(y0=y0, adjoint=ak.DirectAdjoint()).ys[-1], (Y0,), (Y0,)
    )
    np.testing.assert_allclose(tangent, Y0 * 0.9**10, rtol=1e-14)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_traced_negative_tolerance_is_a_runtime_error(name):
    # Fails on the old code: a negative rtol passed in under jit ran silently.
    def y1(tol):
        tols = dict(rtol=1e-6, atol=1e-6)
        tols[name] = tol
        return adaptive(controller=ak.PIDController(**tols)).ys

    run = eqx.filter_jit(y1)
    run(jnp.array(1e-5))  # a valid traced tolerance solves
    with pytest.raises(
        eqx.EquinoxRuntimeError, match=f"`{name}` must be finite and non-negative"
    ):
        run(jnp.array(-1e-3))


def test_traced_zero_tolerances_are_a_runtime_error():
    run = eqx.filter_jit(
        lambda r, a: adaptive(controller=ak.PIDController(rtol=r, atol=a)).ys
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match="cannot both be zero"):
        run(jnp.array(0.0), jnp.array(0.0))


def test_saveat_ts_must_not_be_empty():
    # Fails on the old code: a bare IndexError from inside the solve.
    with pytest.raises(ValueError, match=r"SaveAt\(ts=...\) is empty"):
        constant(saveat=ak.SaveAt(ts=jnp.array([])))


def test_float32_save_times_rounding_past_a_float64_end_are_accepted():
    # Fails on the old code: float32(0.1) = 0.10000000149 > 0.1, so the last of
    # these times was rejected as lying after t1.
    ts = jnp.linspace(0.0, 0.1, 5, dtype=jnp.float32)
    assert float(ts[-1]) > 0.1
    sol = constant(t1=jnp.float64(0.1), dt0=0.01, saveat=ak.SaveAt(ts=ts, t1=True))
    # The last saved time is put on t1: the same value as the end.
    np.testing.assert_array_equal(sol.ys[-2], sol.ys[-1])
    assert float(sol.ts[-2]) == 0.1
    # A time past t1 by more than rounding is still refused.
    with pytest.raises(ValueError, match=SAVEAT_MESSAGE):
        constant(t1=0.1, dt0=0.01, saveat=ak.SaveAt(ts=jnp.array([0.05, 0.1001])))


@pytest.mark.parametrize("traced", [False, True], ids=["concrete", "traced"])
def test_step_count_past_int32_is_not_wrapped_round(traced):
    # Fails on the old code: 1e10 steps were cast to int32 (a wrapped count), and
    # the concrete solve reported success after 16 steps.
    if traced:
        sol = eqx.filter_jit(lambda dt0: constant(dt0=dt0, throw=False))(1e-10)
    else:
        sol = constant(dt0=1e-10, throw=False)
    assert sol.result == ak.RESULTS.max_steps_reached
    with pytest.raises(Exception, match="maximum number of steps"):
        constant(dt0=1e-10)


def test_a_failure_under_plain_jax_jit_is_named_in_the_first_lines(tmp_path):
    # Under plain `jax.jit` (not `eqx.filter_jit`) JAX wraps the raised error in
    # its own runtime error, whose text ends with the callback's traceback. What
    # a user reads first is JAX's log line for the failed callback, which carries
    # adjointkit's message: it must be within the first lines printed, and the
    # message must be in the exception's text too.
    script = tmp_path / "fails.py"
    script.write_text(
        "import jax, jax.numpy as jnp\n"
        "import adjointkit as ak\n"
        "@jax.jit\n"
        "def run(y0):\n"
        "    return ak.solve(lambda t, y, a: -y, ak.Tsit5(), 0.0, 10.0, y0,\n"
        "                    dt0=0.01, max_steps=10).ys\n"
        "try:\n"
        "    run(jnp.ones(2))\n"
        "except Exception as error:\n"
        "    assert 'maximum number of steps' in str(error), str(error)[-400:]\n"
        "    raise\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    first = done.stderr.splitlines()[:12]
    assert any("maximum number of steps was reached" in line for line in first), (
        "\n".join(first)
    )
