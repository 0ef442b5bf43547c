"""Property-based differential tests: every adjoint against `DirectAdjoint`.

Hypothesis draws small problems: a pytree state `{"a": (2,), "b": ()}`; a field
linear in the state or not (a drawn coefficient of its nonlinear terms, zero in
some examples); its parameters in an Equinox module with a static field and a
function field, plus an array closed over by `f`; random `t0` and `t1` (backward
in time in about half the examples, of zero length in their own test); random
save times `ts` (repeated ones and ones on the ends included), readout weights,
step sizes, tolerances and `dtmax`. Only values are drawn: each adjoint and
stepping mode is compiled once and then run on every example. Specifications:

1. The discrete adjoints (`CheckpointedAdjoint` with the binomial default,
   `AllSteps()` and `EveryKSteps(3)`) give `DirectAdjoint`'s gradients w.r.t. y0,
   the module's arrays, the closed-over array, t0, t1 and ts to 1e-10 relative in
   float64, with constant and adaptive steps, through the values saved at ts, at
   every step and at t0 or t1.
2. The continuous adjoints (`BacksolveAdjoint`, `InterpolatedAdjoint()` with and
   without `EveryKSteps(4)`, `QuadratureAdjoint()`) give the gradient of the
   continuous problem: within C·tol of `DirectAdjoint` on a finer discretisation
   (C = 50, argued at `C`). They refuse `SaveAt(steps=True)` at trace time.
3. The reference itself: `DirectAdjoint`'s gradient is the derivative of the
   forward solve, by central differences along a random direction in all inputs.
4. A solve of zero length (t0 == t1) has dL/dts_i = <dL/dy(ts_i), f(t0, y0)>,
   dL/dt1 = <dL/dy(t1), f(t0, y0)>, dL/dt0 = -(dL/dt1 + Σ dL/dts_i), dL/dy0 = the
   sum of the cotangents of all saved values and no parameter gradient, with
   every adjoint.
5. The closed-over array gets the gradient of its copy passed in the module
   through `args` (the field uses only their mean), with every adjoint.

Each (adjoint, stepping mode) pair costs one compilation of 5-10 s, so the
default run takes six pairs (see `DEFAULT_PAIRS`: both stepping modes for
DirectAdjoint, and for the discrete and the continuous adjoints) and marks the
other ten `slow` (`pytest -m slow`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import adjointkit as ak
from helpers import crossed


# --- the problem -----------------------------------------------------------------


class Params(eqx.Module):
    """The field's parameters: arrays, a function field (a non-array leaf, never
    differentiated) and a static field used as a Python int."""

    M: jax.Array  # (2, 2)
    v: jax.Array  # (2,)
    k: jax.Array  # ()
    w: jax.Array  # (2,): the same role as the closed-over array
    nonlin: jax.Array  # (): 0 makes the field linear in the state
    activation: Callable = jnp.tanh
    harmonics: int = eqx.field(static=True, default=2)


def field(t, y, p: Params, w_closed):
    """da = M a + b v + w·forcing(t) + nonlin·activation(a) ⊙ a,
    db = -k b + <w, a> + nonlin·cos(t)·b², with w the mean of the closed-over
    array and the module's."""
    a, b = y["a"], y["b"]
    w = 0.5 * (w_closed + p.w)
    forcing = sum(jnp.cos((j + 1) * t) / (j + 1) for j in range(p.harmonics))
    da = p.M @ a + b * p.v + w * forcing + p.nonlin * p.activation(a) * a
    db = -p.k * b + jnp.dot(w, a) + p.nonlin * jnp.cos(t) * b**2
    return {"a": da, "b": db}


def flat(y):
    """A state (or stacked states) as (..., 3)."""
    return jnp.concatenate([y["a"], y["b"][..., None]], axis=-1)


SOLVER = ak.Tsit5()
NUM_TS = 3
# Traced times: constant steps run in a loop bounded by max_steps (the finest
# constant reference takes at most 1 / 0.005 = 200 steps; the adaptive one at
# most 1 / DTMAX_REF = 200 plus those its tolerance asks for, ~150).
MAX_STEPS = {"constant": 256, "adaptive": 512}
STEPPINGS = ("constant", "adaptive")

DISCRETE = {
    "binomial": ak.CheckpointedAdjoint(),
    "allsteps": ak.CheckpointedAdjoint(ak.AllSteps()),
    "every-3": ak.CheckpointedAdjoint(ak.EveryKSteps(3)),
}
CONTINUOUS = {
    "backsolve": ak.BacksolveAdjoint(),
    "interpolated": ak.InterpolatedAdjoint(),
    "interpolated-every-4": ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(4)),
    "quadrature": ak.QuadratureAdjoint(),
}
ADJOINTS = {"direct": ak.DirectAdjoint(), **DISCRETE, **CONTINUOUS}
# Hermite interpolation of the forward solve (the default of these).
HERMITE = {"interpolated", "interpolated-every-4", "quadrature"}
# Each (adjoint, stepping mode) pair costs one compilation, 5-10 s on a 2-core
# CPU, and this file's default run is kept near a minute: DirectAdjoint in both
# modes (the reference), revolve's online plan replaying adaptive decisions, a
# stride plan with constant steps, the adjoint solved alongside y with constant
# steps, quadrature against a Hermite interpolation with adaptive ones.
# `pytest -m slow` runs the other ten.
DEFAULT_PAIRS = {
    ("direct", "constant"),
    ("direct", "adaptive"),
    ("binomial", "adaptive"),
    ("every-3", "constant"),
    ("backsolve", "constant"),
    ("quadrature", "adaptive"),
}


def saveat(stepping, ts, steps):
    """Two layouts, so that both ends and both orders of rows are exercised:
    constant steps save y(t0), ts (, the steps); adaptive ones ts (, the steps),
    y(t1)."""
    if stepping == "constant":
        return ak.SaveAt(t0=True, ts=ts, steps=steps)
    return ak.SaveAt(ts=ts, steps=steps, t1=True)


def row_layout(stepping, num_rows):
    """(end row, ts rows, step rows) of `Solution.ys`: the end row is y(t0) for
    constant steps and y(t1) for adaptive ones."""
    if stepping == "constant":
        return 0, np.arange(1, 1 + NUM_TS), np.arange(1 + NUM_TS, num_rows)
    return num_rows - 1, np.arange(NUM_TS), np.arange(NUM_TS, num_rows - 1)


def readout(ys, valid, weights, stepping):
    """A loss of every saved value: linear and sine terms of the end and ts rows;
    if `steps_on`, sine terms and w_steps·y² of the valid step rows (adaptive
    solves fill the unused rows with inf)."""
    y = jnp.where(valid[:, None], flat(ys), 0.0)
    end, at_ts, at_steps = row_layout(stepping, y.shape[0])
    chosen = y[np.concatenate([[end], at_ts])]
    out = jnp.sum(weights["rows"] * chosen) + jnp.sum(jnp.sin(chosen))
    steps = y[at_steps]
    steps_term = jnp.sum(weights["steps"] * steps**2 + jnp.sin(steps))
    return out + weights["steps_on"] * steps_term


# Compilation dominates this file's time, XLA's backend optimisations a fifth to a
# third of it, for programs that then run for milliseconds. (No fast-math either
# way: the arithmetic is the same.)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_COMPILED = {}


def value_and_grad(name, stepping):
    """`(loss, aux), grads` of one adjoint and stepping mode, compiled once: every
    drawn value is an argument, so examples never recompile."""
    if (name, stepping) in _COMPILED:
        return _COMPILED[name, stepping]
    adjoint = ADJOINTS[name]
    discrete = name not in CONTINUOUS

    def loss(inputs, weights, step):
        y0, params, w_closed, t0, t1, ts = inputs

        def f(t, y, p):
            return field(t, y, p, w_closed)

        if stepping == "constant":
            kwargs = dict(dt0=step["dt0"])
        else:
            controller = ak.PIDController(
                rtol=step["rtol"], atol=step["rtol"], dtmax=step["dtmax"]
            )
            kwargs = dict(controller=controller)
        sol = ak.solve(
            f, SOLVER, t0, t1, y0, params, saveat=saveat(stepping, ts, discrete),
            adjoint=adjoint, max_steps=MAX_STEPS[stepping], **kwargs,
        )  # fmt: skip
        valid = jnp.isfinite(sol.ts)
        ys = jax.lax.stop_gradient(sol.ys)
        aux = dict(
            # For spec 4: each saved value's cotangent, and f(t0, y0).
            cotangents=flat(jax.grad(readout)(ys, valid, weights, stepping)),
            f0=jax.lax.stop_gradient(flat(f(t0, y0, params))),
            valid=valid,
        )
        return readout(sol.ys, valid, weights, stepping), aux

    fn = eqx.filter_value_and_grad(loss, has_aux=True)
    _COMPILED[name, stepping] = eqx.filter_jit(fn, compiler_options=FAST_COMPILE)
    return _COMPILED[name, stepping]


def run(name, stepping, example, step):
    """(loss, aux, gradient w.r.t. (y0, params, w_closed, t0, t1, ts))."""
    (value, aux), grads = value_and_grad(name, stepping)(
        example["inputs"], example["weights"], step
    )
    return float(value), aux, eqx.filter(grads, eqx.is_array)


# --- drawing examples ------------------------------------------------------------


def f64(x):
    """A float64 array (never weakly typed: one signature for every example)."""
    return jnp.asarray(x, dtype=jnp.float64)


def _floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _array(shape, lo, hi):
    n = int(np.prod(shape, dtype=int))
    return st.lists(_floats(lo, hi), min_size=n, max_size=n).map(
        lambda x: np.asarray(x, dtype=np.float64).reshape(shape)
    )


@st.composite
def examples(draw, zero_length=False):
    """One problem's values. Bounded so that T·L·(1 + |y|) stays O(1) (see `C`):
    |t1 - t0| <= 1, ||M|| <= 1, |v|, |w|, k <= 1/2, |nonlin| <= 1/4, |y0| <= 1,
    so that |y| <~ 2.5 even backward in time (where -k b and b² make b grow)."""
    t0 = draw(_floats(-1.0, 1.0))
    length = 0.0 if zero_length else draw(_floats(0.01, 1.0))
    sign = draw(st.sampled_from([1.0, -1.0]))  # with length 0: dt0's sign
    t1 = t0 + sign * length
    fractions = sorted(draw(_array((NUM_TS,), 0.0, 1.0)))
    # Ordered from t0 to t1 (either way), ends and repeats included.
    ts = np.asarray([t0 + u * (t1 - t0) for u in fractions])
    params = Params(
        M=f64(draw(_array((2, 2), -0.5, 0.5))),
        v=f64(draw(_array((2,), -0.5, 0.5))),
        k=f64(draw(_floats(0.0, 0.5))),
        w=f64(draw(_array((2,), -0.5, 0.5))),
        nonlin=f64(draw(st.one_of(st.just(0.0), _floats(-0.25, 0.25)))),
    )
    y0 = {"a": f64(draw(_array((2,), -1.0, 1.0))), "b": f64(draw(_floats(-1, 1)))}
    w_closed = f64(draw(_array((2,), -0.5, 0.5)))
    weights = {
        "rows": f64(draw(_array((1 + NUM_TS, 3), -1.0, 1.0))),
        "steps": f64(draw(_floats(-0.5, 0.5))),
        "steps_on": f64(1.0),
    }
    return dict(
        inputs=(y0, params, w_closed, f64(t0), f64(t1), f64(ts)),
        weights=weights,
        sign=sign,
        length=length,
        # whether a value after t0 is saved other than at the steps
        later_save=length > 0 and fractions[-1] > 0,
        dt=draw(_floats(0.02, 0.25)),  # constant steps
        log_rtol=draw(_floats(-8.0, -4.0)),  # adaptive steps
        dtmax=draw(st.one_of(st.just(10.0), _floats(0.05, 1.0))),
        # for central differences: every input moves
        direction=draw(_array((17,), 0.5, 1.0))
        * draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=17, max_size=17)),
    )


def _settings(max_examples):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same examples on every run
        database=None,
        # No "explain" phase: it reruns a failure many times for little here.
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- comparisons -----------------------------------------------------------------

GROUPS = ("y0", "params", "w_closed", "t0", "t1", "ts")


def groups(grads):
    """The gradient as one numpy vector per input."""
    vectors = [np.concatenate([np.ravel(x) for x in jtu.tree_leaves(g)]) for g in grads]
    return dict(zip(GROUPS, vectors, strict=True))


def compare(got, expected, tol, floor):
    """Each input's gradient relative to its own size, or to `floor` times the
    largest component where that is larger (a gradient that vanishes or nearly so
    is compared in absolute terms)."""
    got, expected = groups(got), groups(expected)
    scale = max(float(np.max(np.abs(e))) for e in expected.values())
    assert scale > 0
    errors = {}
    for key in GROUPS:
        den = max(float(np.max(np.abs(expected[key]))), floor * scale)
        errors[key] = float(np.max(np.abs(got[key] - expected[key]))) / den
    assert max(errors.values()) < tol, (errors, tol, got, expected)


def check_closure(grads):
    """Spec 5: the closed-over array and the module's enter only through their
    mean; the same chain rule gives both, to rounding."""
    np.testing.assert_allclose(
        groups(grads)["w_closed"], np.ravel(grads[1].w), rtol=1e-12, atol=1e-15
    )


def check_nontrivial(expected, sees_later):
    """A gradient that can be wrong: cotangents reach y0 through the sine terms,
    and the parameters wherever a value after t0 enters the loss."""
    assert np.any(groups(expected)["y0"] != 0)
    if sees_later:
        assert np.any(groups(expected)["w_closed"] != 0)


def step_value(stepping, example, kind):
    """The stepping values for `kind`: "discrete" (drawn), "continuous" (the
    tolerance C is argued for), "reference" (finer than that)."""
    if stepping == "constant":
        dt = example["dt"]
        if kind != "discrete":  # 0.02 <= dt <= 0.05: see `continuous_tolerance`
            dt = 0.02 + (dt - 0.02) * 0.03 / 0.23
        if kind == "reference":
            dt = dt / 4
        return {"dt0": f64(example["sign"] * dt)}
    rtol = {"discrete": 10.0 ** example["log_rtol"], "continuous": RTOL}
    if kind == "reference":
        return {"rtol": f64(RTOL_REF), "dtmax": f64(DTMAX_REF)}
    return {"rtol": f64(rtol[kind]), "dtmax": f64(example["dtmax"])}


# --- 1. discrete adjoints ----------------------------------------------------------

# The same discrete solution differentiated in another order: rounding only
# (test_checkpointed_adjoint observes <= 3e-14); a wrong term is >= 1e-6.
TOL_DISCRETE = 1e-10


def check_discrete(name, stepping, example):
    """Spec 1 (and 5): DirectAdjoint's gradient, to rounding."""
    step = step_value(stepping, example, "discrete")
    _, _, expected = run("direct", stepping, example, step)
    _, _, got = run(name, stepping, example, step)
    compare(got, expected, TOL_DISCRETE, floor=1e-3)
    check_closure(got)
    check_nontrivial(expected, sees_later=True)  # every step is saved


# --- 2. continuous adjoints --------------------------------------------------------

# C = 50, the reasoning of test_continuous_adjoints: the forward and backward
# global errors are each about T·L·sqrt(d)·(1 + |y|)·tol <= 10·tol here (T <= 1,
# L <~ 1.5, d = 3, |y| <~ 2.5: the drawn values are bounded to keep it so; the
# project's fixed problem has 5·tol) and the loss touches both through O(1)
# weights; 50 leaves a factor 2.5 of margin. Hermite interpolation adds its own
# error, O(h⁴) with h ~ tol^(1/5) for Tsit5's steps: C·tol^(4/5). (Observed over
# 40 examples: at most 0.2 of these bounds.)
# The reference is DirectAdjoint with rtol = tol / 100 and steps of at most
# DTMAX_REF (0.005⁵ ~ 3e-12; without it a solution that is too easy, e.g.
# y = 0, takes steps far too long for its derivatives, which the step-size
# controller does not watch), or constant steps 4 times shorter (errors 4⁵ =
# 1024 times smaller): it adds nothing of that size.
C = 50
RTOL = 1e-10
RTOL_REF = 1e-12
DTMAX_REF = 0.005


def continuous_tolerance(name, stepping, example):
    """C·tol. Constant steps h (0.02 <= h <= 0.05) play the part of tol = h⁵/100,
    Tsit5's global error with steps h (its error coefficients are small: observed
    <= 0.0015 h⁵ over 40 examples, 0.003 of this bound), and h⁴/100 for Hermite
    (h⁴/384·max|y⁗|, |y⁗| <~ 4; observed <= 0.004 h⁴)."""
    if stepping == "adaptive":
        return C * (RTOL ** (4 / 5) if name in HERMITE else RTOL)
    h = float(abs(step_value(stepping, example, "continuous")["dt0"]))
    return C * (h**4 if name in HERMITE else h**5) / 100


def check_continuous(name, stepping, example):
    """Spec 2 (and 5): the reference's gradient, to C·tol."""
    # The reference also saves every step, weighted zero: the same loss.
    weights = dict(example["weights"], steps_on=f64(0.0))
    reference = step_value(stepping, example, "reference")
    _, _, expected = run("direct", stepping, dict(example, weights=weights), reference)
    _, _, got = run(
        name, stepping, example, step_value(stepping, example, "continuous")
    )
    # Relative to a tenth of the largest component at least: a component made of
    # cancelling terms (dL/dt0 = -<a(t0), f(t0, y0)>) carries their errors.
    compare(got, expected, continuous_tolerance(name, stepping, example), floor=0.1)
    check_closure(got)
    check_nontrivial(expected, example["later_save"] or stepping == "adaptive")


@pytest.mark.parametrize("stepping", STEPPINGS)
@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_adjoints_refuse_saving_steps(name, stepping):
    params = Params(
        M=jnp.eye(2), v=jnp.ones(2), k=jnp.asarray(0.5), w=jnp.ones(2),
        nonlin=jnp.asarray(0.1),
    )  # fmt: skip
    kwargs = (
        dict(dt0=0.1)
        if stepping == "constant"
        else dict(controller=ak.PIDController(rtol=1e-6, atol=1e-6))
    )
    with pytest.raises(ValueError, match="cannot differentiate SaveAt"):
        ak.solve(
            lambda t, y, p: field(t, y, p, p.w), SOLVER, 0.0, 1.0,
            {"a": jnp.ones(2), "b": jnp.asarray(0.5)}, params,
            saveat=saveat(stepping, jnp.array([0.0, 0.5, 1.0]), True),
            adjoint=ADJOINTS[name], **kwargs,
        )  # fmt: skip


# --- 3. the reference against central differences ---------------------------------


def check_central_differences(name, stepping, example):
    """Central differences along a random direction in every input. The times move
    by a common shift (which keeps ts ordered and inside [t0, t1], and the number
    of constant steps), and adaptive ones also by a stretch about t0. Adaptive
    steps use the reference's settings and leave the step rows out: DirectAdjoint
    holds the step sizes fixed, the differences do not; that moves a value at a
    step end by O(1) and the others by O(tol)."""
    assert name == "direct"
    if stepping == "constant":
        step = step_value(stepping, example, "discrete")
        # Truncation eps² ~ 1e-12, rounding 1e-16 / eps ~ 1e-10 (observed 2e-10).
        eps, tol = 1e-6, 1e-8
    else:
        step = step_value(stepping, example, "reference")
        # A changed step count moves the quotient by up to RTOL_REF / eps = 1e-7
        # (observed 1e-10).
        eps, tol = 1e-5, 1e-6
        example = dict(example, weights=dict(example["weights"], steps_on=f64(0.0)))
    _, _, grads = run("direct", stepping, example, step)
    check_closure(grads)

    t0, t1, ts = example["inputs"][3:]
    d = example["direction"]
    shift, stretch = d[15], (d[16] if stepping == "adaptive" else 0.0)
    tangent = (
        {"a": f64(d[0:2]), "b": f64(d[2])},
        Params(
            M=f64(d[3:7].reshape(2, 2)),
            v=f64(d[7:9]),
            k=f64(d[9]),
            w=f64(d[10:12]),
            nonlin=f64(d[12]),
        ),
        f64(d[13:15]),
        f64(shift),
        f64(shift + stretch * (t1 - t0)),
        f64(shift + stretch * (ts - t0)),
    )

    def at(s):
        inputs = jtu.tree_map(
            lambda x, v: x + s * v if eqx.is_array(x) else x,
            example["inputs"],
            tangent,
        )
        return run("direct", stepping, dict(example, inputs=inputs), step)[0]

    difference = (at(eps) - at(-eps)) / (2 * eps)
    terms = [
        float(np.sum(np.asarray(g) * np.asarray(v)))
        for g, v in zip(
            jtu.tree_leaves(grads),
            jtu.tree_leaves(eqx.filter(tangent, eqx.is_array)),
            strict=True,
        )
    ]
    # Relative to the sum of the terms' sizes, so that cancellation cannot hide
    # an error or make rounding look like one.
    assert sum(abs(x) for x in terms) > 0
    assert abs(difference - sum(terms)) <= tol * sum(abs(x) for x in terms), (
        difference,
        terms,
    )


# --- 4. solves of zero length ------------------------------------------------------


def check_zero_length(name, stepping, example):
    """Spec 4 (and 5): the formulas, independent of any reference."""
    kind = "continuous" if name in CONTINUOUS else "discrete"
    _, aux, grads = run(name, stepping, example, step_value(stepping, example, kind))
    check_closure(grads)
    g = groups(grads)
    cot = np.where(np.asarray(aux["valid"])[:, None], aux["cotangents"], 0.0)
    f0 = np.asarray(aux["f0"])
    end, at_ts, at_steps = row_layout(stepping, cot.shape[0])
    d_ts = cot[at_ts] @ f0
    # y(t0) (the constant layout's end row) does not move with the times; y(t1)
    # and the ends of steps (if any) do.
    moving = cot[at_steps].sum(0) + (cot[end] if stepping == "adaptive" else 0.0)
    d_t1 = moving @ f0
    expected = dict(
        y0=cot.sum(0), ts=d_ts, t1=np.array([d_t1]), t0=np.array([-d_t1 - d_ts.sum()])
    )
    scale = max(np.max(np.abs(cot.sum(0))), np.max(np.abs(f0)) * np.abs(cot).sum())
    assert scale > 0
    for key, value in expected.items():
        np.testing.assert_allclose(
            g[key], value, rtol=1e-12, atol=1e-12 * scale, err_msg=key
        )
    for key in ("params", "w_closed"):
        np.testing.assert_allclose(g[key], 0.0, atol=1e-12 * scale, err_msg=key)


# --- the tests ---------------------------------------------------------------------

CHECKS = {
    **{name: check_discrete for name in DISCRETE},
    **{name: check_continuous for name in CONTINUOUS},
    "direct": check_central_differences,
}


@pytest.mark.parametrize(
    ("name", "stepping"), crossed(list(ADJOINTS), STEPPINGS, fast=DEFAULT_PAIRS)
)
def test_random_problems(name, stepping):
    """Spec 1, 2 or 3, and 5, on random problems; then spec 4 on random problems
    of zero length. One test item per adjoint and stepping mode, so that
    pytest-xdist gives each compiled program to one worker."""

    @_settings(20)
    @given(example=examples())
    def random_problems(example):
        CHECKS[name](name, stepping, example)

    @_settings(10)
    @given(example=examples(zero_length=True))
    def zero_length_problems(example):
        check_zero_length(name, stepping, example)

    random_problems()
    zero_length_problems()
