"""`DirectAdjoint`: differentiating straight through the solver loop.

Specifications, in order:

1. Its gradients are Diffrax's (the same discrete solution, differentiated the
   same way), forward and backward in time, on both of its loop paths.
2. They are the derivatives of the computed solution: central finite differences
   agree. For adaptive solves, they are the derivatives of the discrete map with
   the accepted step pattern held fixed.
3. Forward mode agrees with reverse mode.
4. They survive `jit`, `vmap`, pytrees, Equinox modules, float32, dense output.
5. On a linear ODE they are the exact (expm) sensitivities up to a discretisation
   error that Dopri8 makes negligible.
6. Memory grows with the number of steps of a constant-step solve, and hardly
   with `max_steps` for an adaptive one, which stops at `max_steps` exactly.

Two loop paths are exercised explicitly:

- "scan": `t0`, `t1`, `dt0` known at trace time (Python numbers, no `jit`), so a
  constant-step solve is a `lax.scan` of exactly N steps;
- "bounded": `t0`, `t1` traced (`jit` arguments, or differentiated), so the solve
  is a bounded while loop (nested scans that skip whole blocks once done), as
  every adaptive solve is.
"""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import adjointkit as ak
from adjointkit.benchmarking import temp_bytes
from helpers import A3, M2, Y2, Y3, rel_err


# Every solve in this file differentiates the loop itself.
solve = functools.partial(ak.solve, adjoint=ak.DirectAdjoint())


# Grid points of dt = 0.05 are multiples of 0.05; save times avoid them, since the
# dense output is only continuous (not differentiable in t) at grid points.
TS_FORWARD = (0.123, 0.5071, 0.8642)
B3 = np.array([0.3, -0.1, 0.2])
MAX_STEPS = 64  # >= every step count below

# Tolerances used throughout, each with its numerical reason.
# Same discrete solution and the same chain rule in a different operation order:
# only float64 rounding differs, accumulated over the steps (observed <= 6e-14);
# a different grid or interpolant would already show at ~1e-12 (see diffrax_solve).
TOL_SAME_DERIVATIVE = 1e-10
# Identical arithmetic rearranged by jit/vmap fusion or forward-vs-reverse
# accumulation: differences are rounding only (~1e-15 relative on these sizes).
TOL_ROUNDING = 1e-12
# Central differences with h = eps^(1/3) ~ 6e-6: truncation h^2 |L'''| / 6 ~ 1e-11,
# rounding dL / h with dL up to ~100 ulps of L (the solve's accumulated rounding)
# ~ 1e-14 / 6e-6 ~ 2e-9; so agreement is ~2e-9 at worst (observed ~5e-11), and
# 1e-7 leaves a 50x margin while any missing derivative term is far larger.
TOL_FD = 1e-7


def field(t, y, args):
    """Nonlinear and non-autonomous, with a dict of arrays as args."""
    return args["A"] @ jnp.tanh(y) + args["b"] * jnp.sin(t)


def default_args():
    return {"A": jnp.asarray(A3), "b": jnp.asarray(B3)}


def interval(direction):
    """(t0, t1, dt0, ts) for integrating over [0, 1] forward or backward."""
    if direction == "forward":
        return 0.0, 1.0, 0.05, jnp.asarray(TS_FORWARD)
    return 1.0, 0.0, -0.05, jnp.asarray(TS_FORWARD[::-1])


def weights(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def ak_loss(
    y0, args, t0, t1, ts, w, *, dt0, solver=None, controller=None, max_steps=MAX_STEPS
):
    """w-weighted sum of y at `ts` then at `t1` (SaveAt order: ts, t1)."""
    sol = solve(
        field,
        ak.Tsit5() if solver is None else solver,
        t0,
        t1,
        y0,
        args,
        dt0=dt0,
        controller=controller,
        saveat=ak.SaveAt(ts=ts, t1=True),
        adjoint=ak.DirectAdjoint(),
        max_steps=max_steps,
    )
    return jnp.sum(w * sol.ys)


def diffrax_solve(f, t0, t1, y0, args, num_steps, saveat):
    """Diffrax's Tsit5 with N constant steps, its adjoint storing every step."""
    return diffrax.diffeqsolve(
        diffrax.ODETerm(f),
        diffrax.Tsit5(),
        t0,
        t1,
        # dt0 tied to the interval: Diffrax's first step then ends at
        # t0 + (t1 - t0) / N like every adjointkit grid point, so the grid has the
        # same dependence on t0 and t1 (a fixed dt0 would make the t0/t1
        # derivatives differ by a discretisation-sized amount).
        (t1 - t0) / num_steps,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=MAX_STEPS),
        max_steps=MAX_STEPS,
    )


def diffrax_loss(y0, args, t0, t1, ts, w, *, num_steps):
    sol = diffrax_solve(
        field, t0, t1, y0, args, num_steps, diffrax.SaveAt(ts=ts, t1=True)
    )
    return jnp.sum(w * sol.ys)


ALL_INPUTS = (0, 1, 2, 3, 4, 5)
NAMES = ("y0", "args", "t0", "t1", "ts", "w")


@functools.cache
def diffrax_gradients(direction):
    t0, t1, _, ts = interval(direction)
    w = weights((4, 3), seed=0)
    grad = jax.jit(
        jax.grad(functools.partial(diffrax_loss, num_steps=20), argnums=ALL_INPUTS)
    )
    return grad(
        jnp.asarray(Y3), default_args(), jnp.asarray(t0), jnp.asarray(t1), ts, w
    )


@pytest.mark.parametrize(
    # Backward in time through DirectAdjoint is also checked against the other
    # adjoints in the default run (tests/test_property.py); this one on demand.
    "direction",
    ["forward", pytest.param("backward", marks=pytest.mark.slow)],
)
def test_gradients_equal_diffrax(direction):
    """Gradients w.r.t. y0, args (dict), t0, t1, the saved values (through their
    weights w) and the save times ts equal Diffrax 0.7's, with Diffrax set up to
    compute the same discrete solution and differentiate it the same way: Tsit5,
    `ConstantStepSize` with 20 steps over [0, 1] (dt0 = 0.05 divides the interval),
    `RecursiveCheckpointAdjoint(checkpoints=max_steps)` (every step stored, no
    recomputation), `max_steps=64`, float64. Tsit5's dense output is identical in
    both libraries, so the values at ts agree too."""
    t0, t1, dt0, ts = interval(direction)
    y0, args, w = jnp.asarray(Y3), default_args(), weights((4, 3), seed=0)
    g_y0, g_args, g_t0, g_t1, g_ts, g_w = diffrax_gradients(direction)

    # Scan path: times are Python numbers (constants of the jitted function), so
    # the solve is a lax.scan of exactly 20 steps; t0 and t1 are constants there.
    loss = functools.partial(ak_loss, t0=t0, t1=t1, dt0=dt0)
    got = jax.jit(
        jax.grad(lambda y0, args, ts, w: loss(y0, args, ts=ts, w=w), (0, 1, 2, 3))
    )(y0, args, ts, w)
    assert rel_err(got, (g_y0, g_args, g_ts, g_w)) < TOL_SAME_DERIVATIVE

    # Bounded path: t0 and t1 are traced, so every input gets a cotangent.
    grad = jax.jit(jax.grad(functools.partial(ak_loss, dt0=dt0), argnums=ALL_INPUTS))
    got = grad(y0, args, jnp.asarray(t0), jnp.asarray(t1), ts, w)
    expected = (g_y0, g_args, g_t0, g_t1, g_ts, g_w)
    for name, a, b in zip(NAMES, got, expected, strict=True):
        assert rel_err(a, b) < TOL_SAME_DERIVATIVE, name


def central_difference_gradient(fn, x):
    """Gradient of scalar `fn` at the flat float64 vector `x`, by central
    differences one coordinate at a time with h = eps^(1/3) * max(1, |x_i|):
    the step that balances the O(h^2) truncation against the O(eps / h)
    rounding of a float64 evaluation (see TOL_FD)."""
    x = np.asarray(x, dtype=np.float64)
    h = np.finfo(np.float64).eps ** (1 / 3) * np.maximum(1.0, np.abs(x))
    grad = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h[i]
        grad[i] = (float(fn(x + e)) - float(fn(x - e))) / (2 * h[i])
    return grad


@pytest.mark.parametrize(
    # Backward in time on demand: test_property checks it against the others.
    "direction",
    ["forward", pytest.param("backward", marks=pytest.mark.slow)],
)
def test_gradients_match_central_differences(direction):
    """All of the gradient (y0, args, t0, t1, ts, w) is the derivative of the
    computed solution: central differences of the same solve agree."""
    t0, t1, _, ts = interval(direction)
    # dt0 = 0.06 does not divide the interval: N = ceil(1 / 0.06) = 17 stays the
    # same when t0 or t1 move by h (with dt0 = 0.05, 1/0.05 = 20 exactly and t1 + h
    # would add a 21st step, a jump in the function being differenced).
    dt0 = 0.06 if direction == "forward" else -0.06
    inputs = (
        jnp.asarray(Y3),
        default_args(),
        jnp.asarray(t0),
        jnp.asarray(t1),
        ts,
        weights((4, 3), seed=1),
    )
    flat, unravel = ravel_pytree(inputs)
    loss = functools.partial(ak_loss, dt0=dt0)
    flat_loss = jax.jit(lambda x: loss(*unravel(x)))

    grad = jax.jit(jax.grad(flat_loss))(flat)
    fd = central_difference_gradient(flat_loss, flat)
    assert rel_err(grad, fd) < TOL_FD


def accepted_step_pattern(y0, args, t0, t1, controller, dt0):
    """The accepted step ends of an adaptive solve, and its statistics."""
    sol = solve(
        field,
        ak.Tsit5(),
        t0,
        t1,
        y0,
        args,
        dt0=dt0,
        controller=controller,
        saveat=ak.SaveAt(steps=True),
        max_steps=MAX_STEPS,
    )
    ends = np.asarray(sol.ts)
    return ends[np.isfinite(ends)], sol.stats


def frozen_step_loss(y0, args, t0, t1, w, *, offsets):
    """The adaptive solve's discrete map with its accepted steps held fixed: one
    constant step per accepted step, from t0 + offsets[i] to t0 + offsets[i + 1],
    the last ending at t1. That is how the adaptive loop's step ends depend on t0
    and t1 (step sizes are controller outputs that are not differentiated; the
    last end is clipped onto t1)."""
    starts = t0 + offsets[:-1]
    ends = jnp.concatenate([t0 + offsets[1:-1], jnp.reshape(t1, (1,))])

    def one_step(y, interval):
        ta, tb = interval
        # dt0 larger than every step: each solve is exactly one step, however ta
        # and tb move (they are traced, so this is a one-iteration bounded loop).
        sol = solve(field, ak.Tsit5(), ta, tb, y, args, dt0=1.0, max_steps=1)
        return sol.ys[0], None

    y, _ = jax.lax.scan(one_step, y0, (starts, ends))
    return jnp.sum(w * y)


def test_adaptive_gradients_are_those_of_the_accepted_step_pattern():
    """With a PIDController the discrete solution also depends on the step sizes,
    and those are not differentiated (the controller's step sizes are constants:
    every step end moves with t0, only the last one with t1). So a finite difference of
    the adaptive solve itself would also pick up d(step sizes)/d(input) — an
    O(tolerance) term that is not part of the derivative — and may even change the
    accepted-step pattern. The right reference is the discrete map with the
    accepted steps frozen: replay them as single constant steps. Its gradient must
    equal the adaptive one, and central differences of it must agree."""
    y0, args, w = jnp.asarray(Y3), default_args(), weights((3,), seed=2)
    t0, t1 = 0.0, 1.0
    controller = ak.PIDController(rtol=1e-8, atol=1e-8)
    # A first step far too big, so the pattern includes rejected steps.
    ends, stats = accepted_step_pattern(y0, args, t0, t1, controller, dt0=0.5)
    assert int(stats["num_rejected_steps"]) > 0
    assert 5 <= ends.size < MAX_STEPS
    offsets = jnp.asarray(np.concatenate([[0.0], ends - t0]))

    def adaptive_loss(y0, args, t0, t1, w):
        sol = solve(
            field,
            ak.Tsit5(),
            t0,
            t1,
            y0,
            args,
            dt0=0.5,
            controller=controller,
            max_steps=MAX_STEPS,
        )
        return jnp.sum(w * sol.ys[-1])

    inputs = (y0, args, jnp.asarray(t0), jnp.asarray(t1), w)
    argnums = (0, 1, 2, 3, 4)
    adaptive = jax.jit(jax.grad(adaptive_loss, argnums))(*inputs)
    frozen_loss = functools.partial(frozen_step_loss, offsets=offsets)
    frozen = jax.jit(jax.grad(frozen_loss, argnums))(*inputs)
    # The same steps in the same arithmetic; a replayed step end t0 + (t_i - t0)
    # may differ from t_i by an ulp, a ~1e-16 relative perturbation.
    for name, a, b in zip(NAMES[:4] + ("w",), adaptive, frozen, strict=True):
        assert rel_err(a, b) < TOL_SAME_DERIVATIVE, name

    flat, unravel = ravel_pytree(inputs)
    flat_frozen = jax.jit(lambda x: frozen_loss(*unravel(x)))
    fd = central_difference_gradient(flat_frozen, flat)
    assert rel_err(ravel_pytree(adaptive)[0], fd) < TOL_FD


@pytest.mark.slow  # exactness under PID: test_adaptive_gradients_equal_checkpointed...
def test_adaptive_gradients_converge_to_the_continuous_sensitivities():
    """At a tight tolerance the adaptive gradient approaches the exact
    sensitivities of the ODE, which constant-step Dopri8 with 50 steps gives to
    ~1e-14 (8th order at h = 0.02; halving h changes its gradient by ~1e-14)."""
    y0, args, w = jnp.asarray(Y3), default_args(), weights((4, 3), seed=3)
    ts = jnp.asarray(TS_FORWARD)

    def grads(dt0, solver, controller):
        loss = functools.partial(
            ak_loss, dt0=dt0, solver=solver, controller=controller, max_steps=64
        )
        return jax.jit(jax.grad(loss, argnums=ALL_INPUTS))(
            y0, args, jnp.asarray(0.0), jnp.asarray(1.0), ts, w
        )

    # Tsit5 takes 19 steps at this tolerance.
    adaptive = grads(None, ak.Tsit5(), ak.PIDController(rtol=1e-10, atol=1e-10))
    reference = grads(0.02, ak.Dopri8(), None)
    # The global error at rtol = atol = 1e-10 is ~1e-10 relative in y and in
    # dL/dy0 and dL/dargs; dL/dts and dL/dt0 go through the slope of Tsit5's
    # 4th-order dense output and are ~100x worse (measured: 1e-8 relative to the
    # largest gradient entry). 1e-7 bounds all of them, still far below the O(1)
    # error of a wrong derivative.
    assert rel_err(adaptive, reference) < 1e-7


def test_jvp_equals_gradient_dot_tangent():
    """Forward mode gives the directional derivative that reverse mode's gradient
    predicts, for tangents in y0, args and t1 (each alone, then all together)."""
    t0, _, dt0, ts = interval("forward")
    w = weights((4, 3), seed=4)
    y0, args, t1 = jnp.asarray(Y3), default_args(), jnp.asarray(1.0)

    def loss(y0, args, t1):
        return ak_loss(y0, args, t0, t1, ts, w, dt0=dt0)

    v_y0 = weights((3,), seed=5)
    v_args = {"A": weights((3, 3), seed=6), "b": weights((3,), seed=7)}
    v_t1 = jnp.asarray(0.7)
    zero = jtu.tree_map(jnp.zeros_like, (y0, args, t1))
    tangents = [
        (v_y0, zero[1], zero[2]),
        (zero[0], v_args, zero[2]),
        (zero[0], zero[1], v_t1),
        (v_y0, v_args, v_t1),
    ]
    jvp = jax.jit(lambda v: jax.jvp(loss, (y0, args, t1), v)[1])
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(y0, args, t1)
    flat_grad = ravel_pytree(grad)[0]
    for v in tangents:
        expected = jnp.dot(flat_grad, ravel_pytree(v)[0])
        # Two accumulation orders of the same chain rule: rounding only.
        assert abs(jvp(v) - expected) < TOL_ROUNDING * jnp.linalg.norm(flat_grad)

    # The scan path (t1 constant) in forward mode, for y0 and args.
    def scan_loss(y0, args):
        return ak_loss(y0, args, t0, 1.0, ts, w, dt0=dt0)

    _, tangent_out = jax.jit(lambda *v: jax.jvp(scan_loss, (y0, args), v))(v_y0, v_args)
    scan_grad = ravel_pytree(jax.jit(jax.grad(scan_loss, (0, 1)))(y0, args))[0]
    expected = jnp.dot(scan_grad, ravel_pytree((v_y0, v_args))[0])
    assert abs(tangent_out - expected) < TOL_ROUNDING * jnp.linalg.norm(scan_grad)


@pytest.mark.slow  # forward mode by default: test_jvp_equals_gradient_dot_tangent
def test_jacfwd_equals_jacrev():
    """The full Jacobian of the saved values (3 save times and t1, 3 components)
    with respect to y0, args, t0 and t1 is the same in forward and reverse mode."""
    t0, t1, dt0, ts = interval("forward")

    def saved(y0, args, t0, t1):
        return solve(
            field,
            ak.Tsit5(),
            t0,
            t1,
            y0,
            args,
            dt0=dt0,
            saveat=ak.SaveAt(ts=ts, t1=True),
            max_steps=MAX_STEPS,
        ).ys

    inputs = (jnp.asarray(Y3), default_args(), jnp.asarray(t0), jnp.asarray(t1))
    argnums = (0, 1, 2, 3)
    fwd = jax.jit(jax.jacfwd(saved, argnums))(*inputs)
    rev = jax.jit(jax.jacrev(saved, argnums))(*inputs)
    assert jtu.tree_structure(fwd) == jtu.tree_structure(rev)
    assert rel_err(fwd, rev) < TOL_ROUNDING  # same derivative, two orders: rounding


@pytest.mark.slow  # every other test compares jitted gradients with references
def test_jit_gives_the_eager_gradients():
    """jit changes nothing: with times as Python constants inside the jitted
    function, or as jit arguments (traced, the bounded path), the gradient equals
    the eager scan-path one."""
    t0, t1, dt0, ts = interval("forward")
    y0, args, w = jnp.asarray(Y3), default_args(), weights((4, 3), seed=8)

    def loss(y0, args):
        return ak_loss(y0, args, t0, t1, ts, w, dt0=dt0)

    def loss_traced_times(y0, args, t0, t1):
        return ak_loss(y0, args, t0, t1, ts, w, dt0=dt0)

    eager = jax.grad(loss, (0, 1))(y0, args)
    jitted = jax.jit(jax.grad(loss, (0, 1)))(y0, args)
    traced = jax.jit(jax.grad(loss_traced_times, (0, 1)))(y0, args, t0, t1)
    # Fusion may reorder floating-point operations: rounding-level differences.
    assert rel_err(jitted, eager) < TOL_ROUNDING
    assert rel_err(traced, eager) < TOL_ROUNDING


def test_vmap_gives_per_example_gradients():
    """vmap over a batch of initial states, and over a batch of args: each
    per-example gradient is the gradient of that example alone."""
    t0, t1, dt0, ts = interval("forward")
    w = weights((4, 3), seed=9)
    batch = 3

    def loss(y0, args):
        return ak_loss(y0, args, t0, t1, ts, w, dt0=dt0)

    grad = jax.jit(jax.grad(loss, (0, 1)))
    args = default_args()
    y0s = jnp.asarray(Y3) + 0.3 * weights((batch, 3), seed=10)
    batched = jax.jit(jax.vmap(grad, in_axes=(0, None)))(y0s, args)
    for i in range(batch):
        single = grad(y0s[i], args)
        one = jtu.tree_map(lambda x, i=i: x[i], batched)
        assert rel_err(one, single) < TOL_ROUNDING  # batching reorders rounding only

    y0 = jnp.asarray(Y3)
    args_batch = {
        "A": args["A"] + 0.2 * weights((batch, 3, 3), seed=11),
        "b": args["b"] + 0.2 * weights((batch, 3), seed=12),
    }
    batched = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(y0, args_batch)
    for i in range(batch):
        args_i = jtu.tree_map(lambda x, i=i: x[i], args_batch)
        single = grad(y0, args_i)
        one = jtu.tree_map(lambda x, i=i: x[i], batched)
        assert rel_err(one, single) < TOL_ROUNDING  # batching reorders rounding only
    # The batch really differs per example (the test would catch broadcasting one).
    assert rel_err(batched[1]["A"][0], batched[1]["A"][1]) > 1e-3


def oscillator(t, y, args):
    """A pytree state {"q": position (2,), "p": (momentum (2,), energy ())} and a
    pytree of args {"k": stiffness (2,), "damping": (c, forcing)}."""
    q, (p, _) = y["q"], y["p"]
    c, forcing = args["damping"]
    dq = p
    dp = -args["k"] * jnp.sin(q) - c * p + forcing * jnp.cos(t)
    de = jnp.sum(p * dp)
    return {"q": dq, "p": (dp, de)}


# Pytree states and args through DirectAdjoint run by default in test_property
# (a dict state, an Equinox module of parameters, checked by central differences)
# and test_gradients_equal_diffrax (dict args against Diffrax): on demand here.
@pytest.mark.slow
def test_pytree_states_and_args_equal_diffrax():
    """Gradients with respect to a pytree state and pytree args (nested dicts and
    tuples, a scalar leaf) equal Diffrax's (Tsit5, 20 constant steps on [0, 1],
    RecursiveCheckpointAdjoint(checkpoints=max_steps), float64)."""
    y0 = {"q": jnp.array([0.5, -0.2]), "p": (jnp.array([0.1, 0.3]), jnp.asarray(0.0))}
    args = {"k": jnp.array([1.5, 0.7]), "damping": (jnp.asarray(0.2), jnp.asarray(0.4))}
    wq, wp, we = weights((2,), 13), weights((2,), 14), 0.5

    def readout(y):
        return (
            jnp.sum(wq * y["q"][-1]) + jnp.sum(wp * y["p"][0][-1]) + we * y["p"][1][-1]
        )

    def ak_pytree_loss(y0, args):
        sol = solve(
            oscillator, ak.Tsit5(), 0.0, 1.0, y0, args, dt0=0.05, max_steps=MAX_STEPS
        )
        return readout(sol.ys)

    def diffrax_pytree_loss(y0, args):
        sol = diffrax_solve(oscillator, 0.0, 1.0, y0, args, 20, diffrax.SaveAt(t1=True))
        return readout(sol.ys)

    got = jax.jit(jax.grad(ak_pytree_loss, (0, 1)))(y0, args)
    expected = jax.jit(jax.grad(diffrax_pytree_loss, (0, 1)))(y0, args)
    assert jtu.tree_structure(got) == jtu.tree_structure(expected)
    assert rel_err(got, expected) < TOL_SAME_DERIVATIVE


class MLPField(eqx.Module):
    """A vector field with its own parameters: scale * mlp(y) - args * y."""

    mlp: eqx.nn.MLP
    scale: jax.Array

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(2, 2, width_size=8, depth=1, activation=jnp.tanh, key=key)
        self.scale = jnp.asarray(0.8)

    def __call__(self, t, y, args):
        return self.scale * self.mlp(y) - args * y


def test_equinox_module_field_parameters_equal_diffrax():
    """An eqx.Module as f: eqx.filter_grad gives the gradient with respect to its
    own parameters (and y0), equal to Diffrax's with the same module."""
    f = MLPField(jax.random.PRNGKey(0))
    y0, damping = jnp.array([0.4, -0.7]), jnp.asarray(0.1)

    @eqx.filter_jit
    @eqx.filter_grad
    def ak_grad(f, y0):
        sol = solve(f, ak.Tsit5(), 0.0, 1.0, y0, damping, dt0=0.05, max_steps=MAX_STEPS)
        return jnp.sum(sol.ys[-1] ** 2)

    @eqx.filter_jit
    @eqx.filter_grad
    def diffrax_grad(f, y0):
        sol = diffrax_solve(f, 0.0, 1.0, y0, damping, 20, diffrax.SaveAt(t1=True))
        return jnp.sum(sol.ys[-1] ** 2)

    got = ak_grad(f, y0)
    expected = diffrax_grad(f, y0)
    got_leaves = jtu.tree_leaves(eqx.filter(got, eqx.is_inexact_array))
    expected_leaves = jtu.tree_leaves(eqx.filter(expected, eqx.is_inexact_array))
    # Every parameter of the MLP (2 weights, 2 biases) and `scale` gets a gradient.
    assert len(got_leaves) == len(expected_leaves) == 5
    assert rel_err(got_leaves, expected_leaves) < TOL_SAME_DERIVATIVE
    # ...and the parameter gradients are not trivially zero.
    assert float(jnp.max(jnp.abs(got.mlp.layers[0].weight))) > 1e-3


def test_float32_gradients_approximate_float64():
    """A float32 solve differentiates in float32 and lands near the float64
    gradient."""
    t0, t1, dt0, ts = interval("forward")
    w = weights((4, 3), seed=15)

    def loss(y0, args, ts, w):
        return ak_loss(y0, args, t0, t1, ts, w, dt0=dt0)

    def to32(tree):
        return jtu.tree_map(lambda x: jnp.asarray(x, jnp.float32), tree)

    inputs64 = (jnp.asarray(Y3), default_args(), ts, w)
    grad = jax.jit(jax.grad(loss, (0, 1, 2, 3)))
    # Full float32 matmuls: on GPUs the default may be TF32 (~1e-3 relative),
    # which would measure the hardware's matmul rather than the solve.
    with jax.default_matmul_precision("float32"):
        g64 = grad(*inputs64)
        g32 = grad(*to32(inputs64))
    assert all(x.dtype == jnp.float32 for x in jtu.tree_leaves(g32))
    assert all(x.dtype == jnp.float64 for x in jtu.tree_leaves(g64))
    # float32 unit roundoff 6e-8 accumulated linearly over 20 steps x 7 stages,
    # forward and backward: at most ~1e-5 relative (observed ~1e-6, the rounding
    # errors partly cancel); a float64 error would be ~1e-15, a wrong one O(1).
    assert rel_err(g32, g64) < 1e-5


@pytest.mark.parametrize(
    # Backward in time on demand: by default, test_checkpointed_adjoint compares
    # DirectAdjoint's dense-output gradients backward in time with
    # CheckpointedAdjoint's, and test_dense_output the values with Diffrax's.
    "direction",
    ["forward", pytest.param("backward", marks=pytest.mark.slow)],
)
def test_dense_output_gradients_equal_diffrax(direction):
    """Through `sol.evaluate(t)` (SaveAt(dense=True)): the gradient with respect
    to args and to the evaluation times t equals Diffrax's (Tsit5 dense output,
    20 constant steps on [0, 1], RecursiveCheckpointAdjoint(checkpoints=max_steps),
    float64), forward and backward in time."""
    t0, t1, dt0, ts = interval(direction)
    y0, w = jnp.asarray(Y3), weights((3, 3), seed=16)

    def ak_dense_loss(args, t):
        saveat = ak.SaveAt(dense=True)
        sol = solve(
            field, ak.Tsit5(), t0, t1, y0, args, dt0=dt0, saveat=saveat, max_steps=64
        )
        return jnp.sum(w * sol.evaluate(t))

    def diffrax_dense_loss(args, t):
        sol = diffrax_solve(field, t0, t1, y0, args, 20, diffrax.SaveAt(dense=True))
        return jnp.sum(w * jax.vmap(sol.evaluate)(t))

    got = jax.jit(jax.grad(ak_dense_loss, (0, 1)))(default_args(), ts)
    expected = jax.jit(jax.grad(diffrax_dense_loss, (0, 1)))(default_args(), ts)
    assert rel_err(got[0], expected[0]) < TOL_SAME_DERIVATIVE
    assert rel_err(got[1], expected[1]) < TOL_SAME_DERIVATIVE
    # d/dt of the dense output is the interpolant's slope, ~ f(t, y(t)): not 0.
    assert float(jnp.min(jnp.abs(got[1]))) > 1e-3


def test_linear_ode_gradient_equals_expm_frechet():
    """y' = M y: y(T) = expm(M T) y0, so for L = c . y(T)
    dL/dM_ij = c . Dexpm(M T)[T E_ij] y0 (the Frechet derivative) and
    dL/dy0 = expm(M T)^T c. The discrete gradient differs from these by the
    discretisation error only, which Dopri8 makes negligible: its stability
    polynomial matches e^z through z^8, so each step errs by ~|h lambda|^9 / 9!
    = (0.05 * 2)^9 / 9! ~ 3e-15, and 40 steps by ~1e-13."""
    M, y0, T = jnp.asarray(M2), jnp.asarray(Y2), 2.0
    c = weights((2,), seed=17)

    def loss(M, y0):
        sol = solve(
            lambda t, y, M: M @ y, ak.Dopri8(), 0.0, T, y0, M, dt0=0.05, max_steps=64
        )
        return jnp.dot(c, sol.ys[-1]), sol.ys[-1]

    (g_M, g_y0), y_T = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(M, y0)
    # Precondition: the forward solve is exact to ~1e-13, as estimated above.
    expm = scipy.linalg.expm(M2 * T)
    assert rel_err(y_T, expm @ Y2) < 1e-12

    expected_M = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            E = np.zeros((2, 2))
            E[i, j] = T
            d_expm = scipy.linalg.expm_frechet(M2 * T, E, compute_expm=False)
            expected_M[i, j] = np.asarray(c) @ d_expm @ Y2
    # Discretisation ~1e-13 (docstring) plus rounding ~1e-14: 1e-11 is 100x that.
    assert rel_err(g_M, expected_M) < 1e-11
    assert rel_err(g_y0, expm.T @ np.asarray(c)) < 1e-11


def compiled_gradient_temp_bytes(num_steps, dim=16):
    """XLA's temporary buffer size for the jitted gradient of a constant-step
    solve with `num_steps` steps (times and dt0 are Python constants)."""
    M = weights((dim, dim), seed=18) / np.sqrt(dim)
    y0 = jnp.ones(dim)

    def loss(y0, M):
        sol = solve(
            lambda t, y, M: M @ jnp.tanh(y),
            ak.Tsit5(),
            0.0,
            1.0,
            y0,
            M,
            dt0=1.0 / num_steps,
            # The same generous bound for both sizes: a constant-step solve whose
            # step count is known at trace time must not pay for max_steps.
            max_steps=512,
        )
        return jnp.sum(sol.ys**2)

    compiled = jax.jit(jax.grad(loss, (0, 1))).lower(y0, M).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_grows_with_the_number_of_steps():
    """DirectAdjoint stores every step's intermediates for the backward pass, so a
    constant-step solve of 4N steps needs ~4x the temporary memory of N steps
    (and, its step count being known at trace time, nothing in proportion to
    max_steps). This is the documented use: times and dt0 as Python numbers inside
    the jitted function.

    Memory is a + b * steps, a the step-independent workspace and b one step's
    residuals (7 stages of a 16-vector, tanh's, ...: ~1.5 KB), so the ratio is
    4 less a's share; a is ~2 KB, small next to b * N = ~50 KB at N = 32 (ratio
    ~3.9). Bounds [3, 4.5]: 3 tolerates a workspace up to ~b * N / 2, 4.5 allows
    for allocator padding; a ratio near 1 means memory follows max_steps instead.
    """
    small, large = compiled_gradient_temp_bytes(32), compiled_gradient_temp_bytes(128)
    ratio = large / small
    assert 3.0 <= ratio <= 4.5, f"temp bytes {small} (N=32) -> {large} (N=128)"


# --- adaptive steps: the bounded loop --------------------------------------------

# An adaptive solve of `field` over [0, 10] from dt0 = 1: 33 attempts, 2 of them
# rejected (the first steps), 31 accepted. 33 is no power of the loop's base (8),
# so the loop's blocks end part-way and its bound is not a block boundary.
ADAPTIVE_T1 = 10.0
ADAPTIVE_ATTEMPTS = 33
ADAPTIVE_TS = jnp.asarray([0.7, 3.3, 6.1, 9.2])


def adaptive_solve(y0, args, t1, *, adjoint, max_steps, **options):
    return ak.solve(
        field,
        ak.Tsit5(),
        0.0,
        t1,
        y0,
        args,
        dt0=1.0,
        controller=ak.PIDController(rtol=3e-7, atol=3e-7),
        adjoint=adjoint,
        max_steps=max_steps,
        **options,
    )


def adaptive_loss(y0, args, t1, ts, *, adjoint, max_steps):
    sol = adaptive_solve(
        y0, args, t1, adjoint=adjoint, max_steps=max_steps,
        saveat=ak.SaveAt(ts=ts, t1=True),
    )  # fmt: skip
    return jnp.sum(jnp.sin(sol.ys)), sol.stats["num_steps"]


def adaptive_grad(adjoint):
    """The jitted gradient of `adaptive_loss` in y0, args, t1 and ts, with a bound
    of 40 attempts (7 more than needed: the last block is partly skipped)."""
    loss = functools.partial(adaptive_loss, adjoint=adjoint, max_steps=40)
    return jax.jit(jax.grad(lambda *a: loss(*a)[0], (0, 1, 2, 3)))


def adaptive_inputs():
    return jnp.asarray(Y3), default_args(), jnp.asarray(ADAPTIVE_T1), ADAPTIVE_TS


# The same equality, the other way round, is test_checkpointed_adjoint's
# test_equals_direct_adjoint[AllSteps()-adaptive], in the default run.
@pytest.mark.slow
def test_adaptive_gradients_equal_checkpointed_all_steps():
    """With adaptive steps, DirectAdjoint's gradients (in y0, args, t1 and the
    save times) are CheckpointedAdjoint(AllSteps())'s: the same steps
    differentiated by the same chain rule (step sizes held fixed by both), only
    in another order, so they agree to rounding (TOL_ROUNDING)."""
    inputs = adaptive_inputs()
    _, num_steps = adaptive_loss(*inputs, adjoint=ak.DirectAdjoint(), max_steps=40)
    assert int(num_steps) == ADAPTIVE_ATTEMPTS
    direct = adaptive_grad(ak.DirectAdjoint())(*inputs)
    reference = adaptive_grad(ak.CheckpointedAdjoint(ak.AllSteps()))(*inputs)
    assert rel_err(direct, reference) < TOL_ROUNDING


@pytest.mark.slow  # vmap of adaptive solves: test_checkpointed_adjoint by default
def test_adaptive_vmap_gives_per_example_gradients():
    """Batched, the adaptive loop's `cond`s become selects that run every
    iteration up to max_steps: the iterations an example did not need must leave
    it and its gradient alone."""
    y0, args, t1, ts = adaptive_inputs()
    y0s = y0 + 0.05 * weights((2, 3), seed=30)
    one = adaptive_grad(ak.DirectAdjoint())
    batched = jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))(y0s, args, t1, ts)
    for i in range(2):
        single = one(y0s[i], args, t1, ts)
        mine = jtu.tree_map(lambda x, i=i: x[i], batched)
        assert rel_err(mine, single) < TOL_ROUNDING  # batching reorders rounding only
    assert rel_err(batched[0][0], batched[0][1]) > 1e-3  # the examples differ


def test_adaptive_max_steps_is_honoured_exactly():
    """The loop runs in blocks of 8 iterations, but stops at `max_steps` exactly:
    the solve needing 33 attempts fails with 32 (a block boundary) and with 30 (not
    one), reporting exactly `max_steps` attempts, and succeeds with 33."""
    y0, args = jnp.asarray(Y3), default_args()

    def attempt(max_steps):
        sol = adaptive_solve(
            y0, args, ADAPTIVE_T1, adjoint=ak.DirectAdjoint(), max_steps=max_steps,
            throw=False,
        )  # fmt: skip
        return sol.result, int(sol.stats["num_steps"])

    for max_steps in (30, ADAPTIVE_ATTEMPTS - 1):
        assert attempt(max_steps) == (ak.RESULTS.max_steps_reached, max_steps)
    assert attempt(ADAPTIVE_ATTEMPTS) == (ak.RESULTS.successful, ADAPTIVE_ATTEMPTS)


def test_adaptive_memory_does_not_follow_max_steps():
    """The adaptive loop's reverse mode keeps 8 carries per level of its scan tree
    plus one block of 8 steps' intermediate values, not an iteration's worth per
    `max_steps`: from max_steps 256 to 4096 (16x) the levels go from 3 (the top
    one of 4 blocks) to 4 (8 blocks), so the kept carries go from 4 + 8 = 12 to
    8 + 8 + 8 = 24 (2x). Nothing else depends on max_steps: the values at `ts`
    are written into `len(ts)` slots as the steps pass them, not read off a
    stored dense output. So temp bytes grow by at most ~2x (observed ~1.1x:
    the carries are a small part); the bound 3x leaves room for XLA's layout,
    and a loop storing every iteration would grow ~16x."""
    inputs = adaptive_inputs()

    def temp(max_steps):
        loss = functools.partial(
            adaptive_loss, adjoint=ak.DirectAdjoint(), max_steps=max_steps
        )
        return temp_bytes(jax.grad(lambda *a: loss(*a)[0], (0, 1, 2, 3)), *inputs)

    small, large = temp(256), temp(4096)
    assert large < 3 * small, f"temp bytes {small} (256) -> {large} (4096)"
