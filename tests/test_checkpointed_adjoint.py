"""`CheckpointedAdjoint`: the exact discrete gradient (DirectAdjoint's, to rounding)
in the memory its checkpoint schedule allows.

Specifications:

1. Every schedule gives DirectAdjoint's gradients (the same discrete solution,
   the same chain rule in another order) to 1e-12 relative in float64 — for
   constant steps known at trace time (revolve), constant steps only known at run
   time and adaptive steps (online plans) — with respect to y0, args, t0, t1, the
   values saved at `ts`, at every step and as dense output, and `ts` itself.
2. They equal Diffrax's `RecursiveCheckpointAdjoint` (constant steps, float64) to
   1e-10.
3. They survive `jit`, `vmap`, float32, pytrees, Equinox modules, integration
   backward in time; forward mode is refused with an error.
4. Memory (XLA temp bytes of the compiled gradient): `BinomialCheckpoints(c)` is
   flat in N, `AllSteps` grows linearly, `EveryKSteps(k)` like k + N/k.
5. Adaptive replays retrace the forward pass's step-size decisions, so that
   rounding in a replay cannot make them differentiate other steps.
"""

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import adjointkit as ak
from helpers import A3, BIG, Y3, crossed, gradient_temp_mib, rel_err, tanh_field


# Same discrete solution differentiated in another order: rounding only, which
# accumulates over ~20 steps to ~1e-14 (observed <= 3e-14).
TOL_SAME = 1e-12
# Diffrax: the same arithmetic in another order and a differently rounded grid
# (its first step is dt0 itself); observed ~1e-13, a wrong term would be >= 1e-6.
TOL_DIFFRAX = 1e-10

SCHEDULES = [
    ak.AllSteps(),
    ak.EveryKSteps(3),
    ak.BinomialCheckpoints(2),
    ak.BinomialCheckpoints(3),
    ak.BinomialCheckpoints(),
]
TS = jnp.array([0.0, 0.123, 0.5, 0.5, 0.8642, 1.0])
W = jnp.linspace(-1.0, 1.0, 18).reshape(6, 3)


def _loss(adjoint, controller, dt0, y0, args, t0, t1, ts):
    """A loss touching every differentiable output at once: the final state, the
    values at `ts`, at every step and the dense output."""
    saveat = ak.SaveAt(ts=ts, steps=True, t1=True, dense=True)
    sol = ak.solve(
        tanh_field, ak.Tsit5(), t0, t1, y0, args, dt0=dt0, controller=controller,
        saveat=saveat, adjoint=adjoint, max_steps=48,
    )  # fmt: skip
    at_ts, at_steps, final = sol.ys[:6], sol.ys[6:-1], sol.ys[-1]
    unused = ~jnp.isfinite(sol.ts[6:-1])[:, None]  # adaptive: rows past the end
    out = jnp.sum(W * at_ts) + jnp.sum(jnp.sin(final))
    out = out + jnp.sum(jnp.where(unused, 0.0, at_steps) ** 2)
    return out + jnp.sum(sol.evaluate(jnp.array([0.07, 0.61])) ** 2)


SOLVES = {
    # controller, dt0, whether t0/t1 are held fixed (a scan of known length)
    "constant-known-N": (None, 0.05, True),
    "constant-runtime-N": (None, 0.05, False),
    "adaptive": (ak.PIDController(rtol=1e-6, atol=1e-8), None, False),
}


@functools.cache
def _grads(adjoint, solve_kind):
    controller, dt0, fixed_times = SOLVES[solve_kind]
    loss = functools.partial(_loss, adjoint, controller, dt0)
    args = {"A": jnp.asarray(A3)}
    y0, ts = jnp.asarray(Y3), TS
    if fixed_times:
        grad = jax.jit(
            jax.grad(lambda y, a, s: loss(y, a, 0.0, 1.0, s), argnums=(0, 1, 2))
        )
        return grad(y0, args, ts)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(y0, args, 0.0, 1.0, ts)


@pytest.mark.parametrize(
    ("schedule", "solve_kind"),
    crossed(
        {repr(s): s for s in SCHEDULES},
        list(SOLVES),
        # Each schedule kind with constant steps known at trace time and with
        # adaptive ones (revolve and the online plan for the binomial); a step
        # count known only at run time with one binomial schedule (the property
        # test draws such counts for EveryKSteps(3) and checks it against
        # DirectAdjoint by default). The other numbers of checkpoints on demand:
        # test_checkpointing reverses every schedule's plans at many step counts.
        fast={
            ("AllSteps()", "constant-known-N"),
            ("AllSteps()", "adaptive"),
            ("EveryKSteps(k=3)", "constant-known-N"),
            ("EveryKSteps(k=3)", "adaptive"),
            ("BinomialCheckpoints(num_checkpoints=2)", "constant-known-N"),
            ("BinomialCheckpoints(num_checkpoints=3)", "constant-runtime-N"),
            ("BinomialCheckpoints()", "adaptive"),
        },
    ),
)
def test_equals_direct_adjoint(schedule, solve_kind):
    """Gradients w.r.t. y0, args, ts (and t0, t1 where traced), through values at
    ts, at every step, the dense output and the final state."""
    expected = _grads(ak.DirectAdjoint(), solve_kind)
    got = _grads(ak.CheckpointedAdjoint(schedule), solve_kind)
    for g, e in zip(got, expected, strict=True):
        assert rel_err(g, e) < TOL_SAME


@pytest.mark.parametrize(
    ("schedule", "adaptive"),
    crossed(
        {repr(s): s for s in (ak.AllSteps(), ak.BinomialCheckpoints(3))},
        {"constant": False, "adaptive": True},
        # Backward in time with constant steps: the property test draws it. A
        # plan does not depend on the direction: the online binomial plan with
        # its replayed decisions by default, AllSteps() on demand.
        fast={("BinomialCheckpoints(num_checkpoints=3)", "adaptive")},
    ),
)
def test_equals_direct_adjoint_backward_in_time(schedule, adaptive):
    controller = ak.PIDController(rtol=1e-6, atol=1e-8) if adaptive else None
    dt0 = None if adaptive else -0.05
    ts = jnp.array([1.0, 0.8642, 0.5, 0.5, 0.123, 0.0])

    def grads(adjoint):
        loss = functools.partial(_loss, adjoint, controller, dt0)
        grad = jax.grad(lambda y, a, s: loss(y, a, 1.0, 0.0, s), argnums=(0, 1, 2))
        return jax.jit(grad)(jnp.asarray(Y3), {"A": jnp.asarray(A3)}, ts)

    expected = grads(ak.DirectAdjoint())
    got = grads(ak.CheckpointedAdjoint(schedule))
    for g, e in zip(got, expected, strict=True):
        assert rel_err(g, e) < TOL_SAME


@pytest.mark.parametrize(
    # Backward in time against DirectAdjoint runs by default
    # (test_equals_direct_adjoint_backward_in_time); against Diffrax on demand.
    "backward",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["forward", "backward"],
)
def test_equals_diffrax_recursive_checkpoint_adjoint(backward):
    """Diffrax: Tsit5, ConstantStepSize, dt0 = (t1 - t0)/20,
    RecursiveCheckpointAdjoint(checkpoints=8), SaveAt(ts=..., t1=True), float64."""
    t0, t1 = (1.0, 0.0) if backward else (0.0, 1.0)
    ts = jnp.array([0.123, 0.5, 0.8642])
    ts = 1.0 - ts if backward else ts
    w = jnp.linspace(-1.0, 1.0, 9).reshape(3, 3)

    def ak_loss(y0, args, t0, t1, ts):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), t0, t1, y0, args, dt0=(t1 - t0) / 20,
            saveat=ak.SaveAt(ts=ts, t1=True),
            adjoint=ak.CheckpointedAdjoint(ak.BinomialCheckpoints(4)), max_steps=32,
        )  # fmt: skip
        return jnp.sum(w * sol.ys[:3]) + jnp.sum(sol.ys[3] ** 2)

    def dfx_loss(y0, args, t0, t1, ts):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(tanh_field), diffrax.Tsit5(), t0, t1, (t1 - t0) / 20, y0,
            args, saveat=diffrax.SaveAt(ts=ts, t1=True),
            adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=8), max_steps=32,
        )  # fmt: skip
        return jnp.sum(w * sol.ys[:3]) + jnp.sum(sol.ys[3] ** 2)

    inputs = (jnp.asarray(Y3), {"A": jnp.asarray(A3)}, t0, t1, ts)
    got = jax.jit(jax.grad(ak_loss, argnums=(0, 1, 2, 3, 4)))(*inputs)
    expected = jax.jit(jax.grad(dfx_loss, argnums=(0, 1, 2, 3, 4)))(*inputs)
    for g, e in zip(got, expected, strict=True):
        assert rel_err(g, e) < TOL_DIFFRAX


def _final_loss(adjoint, y0, args, t1=1.0, dtype=jnp.float64):
    sol = ak.solve(
        tanh_field, ak.Tsit5(), jnp.asarray(0.0, dtype), jnp.asarray(t1, dtype), y0,
        args, dt0=jnp.asarray(t1 / 16, dtype), adjoint=adjoint,
    )  # fmt: skip
    return jnp.sum(sol.ys[-1] ** 2)


@pytest.mark.slow  # test_vmap_of_adaptive_solves_gives_per_example_gradients: default
def test_vmap_gives_per_example_gradients():
    adjoint = ak.CheckpointedAdjoint()
    y0s = jnp.asarray(Y3) * jnp.array([[1.0], [0.5], [-2.0]])
    args = {"A": jnp.asarray(A3)}
    grad = jax.grad(functools.partial(_final_loss, adjoint), argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad, in_axes=(0, None)))(y0s, args)
    single_grad = jax.jit(grad)
    for i in range(3):
        single = single_grad(y0s[i], args)
        assert rel_err(batched[0][i], single[0]) < TOL_SAME
        assert rel_err(batched[1]["A"][i], single[1]["A"]) < TOL_SAME


def test_vmap_of_adaptive_solves_gives_per_example_gradients():
    """Each example takes its own number of steps: the batched backward pass must
    still reverse each one's own steps."""

    def loss(y0, scale):
        sol = ak.solve(
            tanh_field, ak.Tsit5(), 0.0, 1.0, y0, {"A": scale * jnp.asarray(A3)},
            controller=ak.PIDController(rtol=1e-7, atol=1e-9),
            adjoint=ak.CheckpointedAdjoint(ak.BinomialCheckpoints(3)), max_steps=64,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2)

    y0s = jnp.asarray(Y3) * jnp.array([[1.0], [0.5], [-2.0]])
    scales = jnp.array([1.0, 3.0, 0.2])
    grad = jax.grad(loss, argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad))(y0s, scales)
    single_grad = jax.jit(grad)
    for i in range(3):
        single = single_grad(y0s[i], scales[i])
        assert rel_err(batched[0][i], single[0]) < TOL_SAME
        assert rel_err(batched[1][i], single[1]) < TOL_SAME


# float32 gradients run by default for DirectAdjoint (test_direct_adjoint),
# ReversibleAdjoint (test_reversible) and InterpolatedAdjoint's replays of
# recorded steps (test_continuous_adjoints); CheckpointedAdjoint's in float32 in
# test_train and test_examples (adjointkit train, examples/lotka_volterra_fit.py,
# both float32 with this adjoint): this comparison with float64 on demand.
@pytest.mark.slow
def test_float32_gradients_approximate_float64():
    args64 = {"A": jnp.asarray(A3)}
    args32 = {"A": jnp.asarray(A3, jnp.float32)}
    g64 = jax.grad(_final_loss, argnums=2)(
        ak.CheckpointedAdjoint(), jnp.asarray(Y3), args64
    )
    with jax.default_matmul_precision("float32"):
        g32 = jax.grad(_final_loss, argnums=2)(
            ak.CheckpointedAdjoint(), jnp.asarray(Y3, jnp.float32), args32, 1.0,
            jnp.float32,
        )  # fmt: skip
    assert g32["A"].dtype == jnp.float32
    # float32 rounding (6e-8) amplified by ~16 steps of a Lipschitz-1 flow and the
    # backward pass's sums: ~1e-6; 1e-5 leaves margin, a wrong term is ~1e-2.
    assert rel_err(g32, g64) < 1e-5


# Pytree states and modules run by default in test_property (the binomial default
# and EveryKSteps(3) against DirectAdjoint, a dict state, an Equinox module of
# parameters) and test_idioms (a module as f with AllSteps()): on demand here.
@pytest.mark.slow
def test_pytree_state_and_module_field():
    class Field(eqx.Module):
        w: jax.Array

        def __call__(self, t, y, args):
            return {"x": jnp.tanh(self.w @ y["v"]) * args, "v": -y["x"]}

    def loss(field, y0, args, adjoint):
        sol = ak.solve(field, ak.Dopri5(), 0.0, 1.5, y0, args, dt0=0.1, adjoint=adjoint)
        return jnp.sum(sol.ys["x"] ** 2) + jnp.sum(sol.ys["v"])

    field = Field(jnp.asarray(A3[:2, :2]))
    y0 = {"x": jnp.array([1.0, 0.2]), "v": jnp.array([0.0, -0.3])}
    grad = eqx.filter_jit(eqx.filter_grad(loss))
    expected = grad(field, y0, 0.7, ak.DirectAdjoint())
    for schedule in (ak.AllSteps(), ak.BinomialCheckpoints(3)):
        got = grad(field, y0, 0.7, ak.CheckpointedAdjoint(schedule))
        assert rel_err(got.w, expected.w) < TOL_SAME


def test_forward_mode_is_refused():
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(
            lambda y: _final_loss(ak.CheckpointedAdjoint(), y, {"A": jnp.asarray(A3)}),
            (jnp.asarray(Y3),),
            (jnp.ones(3),),
        )


# --- memory --------------------------------------------------------------------


def test_binomial_memory_is_flat_in_the_number_of_steps():
    adjoint = ak.CheckpointedAdjoint(ak.BinomialCheckpoints(8))
    small, large = gradient_temp_mib(adjoint, 500), gradient_temp_mib(adjoint, 4000)
    assert large <= 1.25 * small, (small, large)


def test_all_steps_memory_grows_linearly():
    adjoint = ak.CheckpointedAdjoint(ak.AllSteps())
    m100, m400, m1600 = (gradient_temp_mib(adjoint, n) for n in (100, 400, 1600))
    # One kept state (y, a (4, 256) float64 array: 8 KiB) per step, on top of the
    # step's own fixed working memory; 5% covers XLA's alignment of buffers.
    kept_state = 4 * BIG * 8 / 2**20
    assert (m400 - m100) / 300 == pytest.approx(kept_state, rel=0.05)
    assert (m1600 - m400) / 1200 == pytest.approx(kept_state, rel=0.05)


def test_every_k_steps_memory_is_k_plus_n_over_k():
    n = 400
    mem = {
        k: gradient_temp_mib(ak.CheckpointedAdjoint(ak.EveryKSteps(k)), n)
        for k in (5, 20, 80)
    }
    # Stored states: N/k kept + k while reversing a segment: 85, 40, 85 states.
    assert mem[20] < mem[5] and mem[20] < mem[80]
    assert mem[5] == pytest.approx(mem[80], rel=0.1)
    per_state = (mem[5] - mem[20]) / 45
    assert per_state > 0


def _decay_loss(k, adjoint):
    sol = ak.solve(
        lambda t, y, k: -k * y, ak.Tsit5(), 0.0, 1.0, jnp.array([1.0]), k,
        dt0=0.1, adjoint=adjoint,
    )  # fmt: skip
    return sol.ys[-1, 0]


@functools.cache
def _decay_grad_direct():
    """The reference of test_gradient_with_respect_to_a_python_number, computed
    once per process (as the test computes it, eagerly at a Python float)."""
    return jax.grad(_decay_loss)(0.7, ak.DirectAdjoint())


@pytest.mark.parametrize(
    "adjoint",
    [
        ak.CheckpointedAdjoint(),
        ak.BacksolveAdjoint(),
        # The continuous adjoints share one custom VJP: Interpolated on demand.
        pytest.param(ak.InterpolatedAdjoint(), marks=pytest.mark.slow),
        ak.QuadratureAdjoint(),
    ],
    ids=lambda a: type(a).__name__,
)
def test_gradient_with_respect_to_a_python_number(adjoint):
    """jax.grad at a Python float traces it around a literal; a custom VJP must
    still see it as differentiable (it once silently returned 0)."""
    expected = _decay_grad_direct()
    got = jax.grad(_decay_loss)(0.7, adjoint)
    # Discrete adjoints: the same discrete derivative (rounding only); continuous:
    # the exact -exp(-0.7) within Tsit5's error at dt = 0.1 (~1e-7).
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert got != 0


# --- adaptive replays retrace the recorded decisions ------------------------------


class _CaptureProblem(ak.AbstractAdjoint):
    """Solves directly, keeping the internal problem for the test to replay."""

    problems: list

    def solve(self, problem):
        self.problems.append(problem)
        return ak.DirectAdjoint().solve(problem)


def _replayed_times(problem, decisions, num_attempts, scale):
    """The accepted step ends of a replay of `num_attempts` attempts of `problem`
    from its initial checkpoint with `y` multiplied by `scale`."""
    from adjointkit._integrate import init_records, make_stepper, replay_recording
    from adjointkit._recording import StepsRecorder

    stepper = make_stepper(problem).replaying(decisions)
    kept = stepper.checkpoint(stepper.init(problem))
    state = stepper.restore(problem, eqx.tree_at(lambda s: s.y, kept, kept.y * scale))
    recorders = {"steps": StepsRecorder()}
    records = init_records(problem, recorders, state.f)
    state, records = replay_recording(
        problem, stepper, state, num_attempts, recorders, records
    )
    return records["steps"][0], state.num_accepted


def test_replay_reuses_the_recorded_decisions_whatever_the_state():
    from adjointkit import benchmarking as bench
    from adjointkit._integrate import make_stepper, run
    from adjointkit._recording import StepsRecorder

    lv = bench.lotka_volterra(dtype=jnp.float64)  # oscillatory: steps get rejected
    problems = []
    ak.solve(
        lv.f, ak.Tsit5(), lv.t0, lv.t1, lv.y0, lv.params,
        controller=ak.PIDController(rtol=1e-6, atol=1e-6),
        adjoint=_CaptureProblem(problems),
    )  # fmt: skip
    (problem,) = problems
    decider = make_stepper(problem).decision_recorder(problem)
    summary, _, records = run(
        problem, {"d": decider, "steps": StepsRecorder()}, differentiable=False
    )
    times, accepted = records["steps"][0], summary.num_accepted
    assert int(summary.num_steps) > int(accepted)  # some rejections to retrace
    # A replay retraces the run; one whose state differs from the forward pass's
    # (here by far more than rounding, 1%) still takes exactly its steps ...
    replay = functools.partial(_replayed_times, problem, num_attempts=summary.num_steps)
    assert jnp.array_equal(replay(records["d"], scale=1.0)[0], times)
    replayed, replayed_accepted = replay(records["d"], scale=1.01)
    assert int(replayed_accepted) == int(accepted)
    assert jnp.array_equal(replayed, times)
    # ... where asking the controller again would have chosen other steps.
    afresh, _ = replay(None, scale=1.01)
    assert not jnp.array_equal(afresh, times)


@pytest.mark.slow  # float32: test_float32_gradients_approximate_float64 by default
def test_float32_adaptive_checkpointed_gradient_equals_all_steps():
    # Lotka--Volterra in float32 at rtol 1e-6, near float32's resolution: with the
    # controller re-run in replays, a rounding difference flipped a decision
    # and the binomial schedule's gradient was 20% off (observed). Replaying the
    # recorded decisions, the schedules differ by rounding only (observed ~1e-6
    # relative over ~740 attempts); a flipped decision costs >= 1e-3.
    from adjointkit import benchmarking as bench

    problem = bench.lotka_volterra(dtype=jnp.float32)

    def grad(schedule):
        loss = bench.adjointkit_loss(
            problem, ak.CheckpointedAdjoint(schedule), 1024, 1e-6
        )
        return jax.jit(jax.grad(lambda p: loss(p)[0]))(problem.params)

    reference = grad(ak.AllSteps())
    for schedule in (ak.BinomialCheckpoints(), ak.EveryKSteps(8)):
        assert rel_err(grad(schedule), reference) < 1e-4, schedule
