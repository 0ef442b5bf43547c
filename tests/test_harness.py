"""The measuring harness behind `adjointkit compare` and `benchmarks/`: its counts of
f-evaluations agree with what the solvers and adjoints report of themselves."""

import functools

import jax
import pytest

import adjointkit as ak
from adjointkit import benchmarking as bench
from adjointkit.benchmarking._measure import COUNTS_DIFFERENTIATED_LOOPS
from helpers import crossed


N = 10  # constant Tsit5 steps
PROBLEM = bench.neural_ode(state=4, width=8, batch=2)


def _counts(adjoint, steps=N, rtol=None):
    """(forward evaluations from `sol.stats`, counted forward, counted backward)."""
    return _counted(adjoint, steps, rtol)


@functools.cache  # shared by the tests that count the same solve in a process
def _counted(adjoint, steps, rtol):
    def make(problem):
        return lambda p: bench.adjointkit_loss(problem, adjoint, steps, rtol)(p)[0]

    loss = jax.jit(bench.adjointkit_loss(PROBLEM, adjoint, steps, rtol))
    stats = int(loss(PROBLEM.params)[1])
    forward = bench.count_f_evals(make, PROBLEM, PROBLEM.params)
    total = bench.count_f_evals(lambda pr: jax.grad(make(pr)), PROBLEM, PROBLEM.params)
    return stats, forward, total - forward


@pytest.mark.parametrize("rtol", [None, 1e-4], ids=["constant", "adaptive"])
def test_counted_forward_evaluations_equal_the_solution_statistics(rtol):
    steps = N if rtol is None else 64
    stats, forward, _ = _counts(ak.DirectAdjoint(), steps, rtol)
    assert forward == stats
    if rtol is None:
        assert forward == 1 + 6 * N  # Tsit5 is FSAL: one to start, six per step


@pytest.mark.skipif(
    not COUNTS_DIFFERENTIATED_LOOPS,
    reason="this JAX drops callbacks from differentiated loops (fixed in 0.6.2)",
)
def test_direct_adjoint_evaluates_nothing_going_back():
    # Reverse mode through the stored loop transposes it: no evaluation of f.
    assert _counts(ak.DirectAdjoint())[2] == 0


@pytest.mark.parametrize(
    ("rtol", "adjoint"),
    crossed(
        {"constant": None, "adaptive": 1e-4},
        {
            "backsolve": ak.BacksolveAdjoint(),
            "interpolated": ak.InterpolatedAdjoint(),
            "quadrature": ak.QuadratureAdjoint(),
        },
        # The replay under adaptive steps is interpolated-adaptive's; the
        # quadrature's own count is constant-quadrature's.
        # Budget: one adaptive and one constant-step count in the default suite.
        slow={
            ("adaptive", "quadrature"),
            ("adaptive", "interpolated"),
            ("constant", "interpolated"),
            ("constant", "backsolve"),
        },
    ),
)
def test_continuous_backward_evaluations_equal_the_backward_statistics(adjoint, rtol):
    steps = N if rtol is None else 64
    _, forward, backward = _counts(adjoint, steps, rtol)
    with ak.collect_backward_stats() as stats:
        jax.block_until_ready(
            jax.jit(
                jax.grad(
                    lambda p: bench.adjointkit_loss(PROBLEM, adjoint, steps, rtol)(p)[0]
                )
            )(PROBLEM.params)
        )
    (only,) = stats
    # The backward solve, plus f(t1, y(t1)) and f(t0, y0) for the end-time
    # cotangents (both computed whether or not they are asked for).
    expected = int(only["num_f_evals"]) + 2
    if rtol is not None and not isinstance(adjoint, ak.BacksolveAdjoint):
        # With adaptive steps the interpolating adjoints keep states, not the
        # trajectory, and rebuild it by replaying the forward steps: f at the
        # kept state, then six per attempted step (the forward pass's own count
        # less its start: f(t0, y0) and the initial step's probe). These few
        # steps fit one rebuilt stretch.
        attempts = (forward - 2) // 6
        expected += 1 + 6 * attempts
    assert backward == expected


@pytest.mark.parametrize("schedule", [ak.BinomialCheckpoints(3), ak.EveryKSteps(4)])
def test_checkpointed_backward_evaluations_follow_the_recomputation_count(schedule):
    _, _, all_steps = _counts(ak.CheckpointedAdjoint(ak.AllSteps()))
    # With every state kept, each step's pullback re-evaluates the step from its
    # state (seven stages: the first is not stored), plus f(t1, y(t1)).
    assert all_steps == 7 * N + 1
    # A schedule with fewer states adds its re-run steps, six evaluations each.
    _, _, backward = _counts(ak.CheckpointedAdjoint(schedule))
    recomputed = schedule.plan(N, N).num_recomputed_steps(N)
    assert recomputed > 0
    assert backward == all_steps + 6 * recomputed


def test_device_peak_is_absent_on_a_cpu():
    assert jax.default_backend() == "cpu"  # the suite runs on CPU; GPU: test_gpu.py
    assert bench.device_peak_bytes(lambda x: x + 1, jax.numpy.ones(3)) == (None, False)


class _FakeDevice:
    """An allocator whose peak only grows, as a GPU's does."""

    def __init__(self):
        self.peak = 100

    def memory_stats(self):
        return {"peak_bytes_in_use": self.peak}


@pytest.mark.parametrize("needs, expected", [(250, (250, True)), (50, (100, False))])
def test_device_peak_is_exact_only_when_the_call_raises_it(
    monkeypatch, needs, expected
):
    device = _FakeDevice()
    monkeypatch.setattr(jax, "devices", lambda: [device])

    def fn():
        device.peak = max(device.peak, needs)
        return jax.numpy.zeros(())

    assert bench.device_peak_bytes(fn) == expected


@pytest.mark.parametrize("rtol", [None, 1e-4], ids=["constant", "adaptive"])
def test_diffrax_runner_reports_the_evaluations_it_makes(rtol):
    # compare takes Diffrax's forward count from `diffrax_loss`, which derives it
    # from `num_steps` (Diffrax reports no evaluation count): watch f to check it.
    import diffrax

    adjoint, steps = diffrax.RecursiveCheckpointAdjoint(), N if rtol is None else 64

    def make(problem):
        return lambda p: bench.diffrax_loss(problem, adjoint, steps, rtol)(p)[0]

    reported = bench.diffrax_loss(PROBLEM, adjoint, steps, rtol)(PROBLEM.params)[1]
    assert bench.count_f_evals(make, PROBLEM, PROBLEM.params) == int(reported)


def test_ratio_lines_pair_the_methods_that_both_ran():
    # benchmarks/adaptive.py and benchmarks/stiff.py print these: ours over
    # theirs, and nothing for a pair with a failed or missing method.
    rows = [
        dict(method="ours", ms=2.0, temp_mib=1.0, compile_s=3.0),
        dict(method="theirs", ms=4.0, temp_mib=0.5, compile_s=6.0),
        dict(method="broken", failed="did not converge"),
    ]
    pairs = [("default", "ours", "theirs"), ("x", "ours", "broken"), ("y", "a", "b")]
    (line,) = bench.ratio_lines("robertson", rows, pairs, time_digits=3)
    assert line.split() == [
        "robertson", "default", "time", "0.500x", "memory", "2.00x",
        "compile", "0.50x", "(ours", "vs", "theirs)",
    ]  # fmt: skip
