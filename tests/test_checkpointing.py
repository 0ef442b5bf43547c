"""Checkpoint schedules: the binomial arithmetic is revolve's, and the backward pass
visits every step, last first, with the right state, re-running exactly the steps
the theory says."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak
from adjointkit._recording import StepRecord
from adjointkit.checkpointing import (
    AbstractCheckpointPlan,
    DescentPlan,
    _reverse,
    min_forward_steps,
)
from adjointkit.checkpointing._binomial import beta_table, repetitions, split, split_jnp
from adjointkit.checkpointing._plan import online_positions
from adjointkit.checkpointing._reverse import reverse_steps
from adjointkit.checkpointing._store import CheckpointRecorder


L_MAX, S_MAX = 120, 6


@pytest.fixture(scope="module")
def optimal_cost():
    """t[l][s]: the fewest forward steps to reverse l steps holding s states, by
    the recursion t(l, s) = min_m m + t(l - m, s - 1) + t(m, s) (advance m, keep
    that state, reverse the tail with one state fewer, then the head); with one
    state, every step is re-run from the start: t(l, 1) = l (l - 1) / 2."""
    t = np.zeros((L_MAX + 1, S_MAX + 1), dtype=np.int64)
    for ell in range(2, L_MAX + 1):
        t[ell, 1] = ell * (ell - 1) // 2
        for s in range(2, S_MAX + 1):
            t[ell, s] = min(m + t[ell - m, s - 1] + t[m, s] for m in range(1, ell))
    return t


def test_griewank_bound_is_the_optimal_cost(optimal_cost):
    for ell in range(1, L_MAX + 1):
        for s in range(1, S_MAX + 1):
            assert min_forward_steps(ell, s) == optimal_cost[ell, s], (ell, s)


def test_split_attains_the_optimal_cost(optimal_cost):
    for ell in range(2, L_MAX + 1):
        for s in range(1, S_MAX + 1):
            m = split(ell, s)
            tail = optimal_cost[ell - m, s - 1] if s > 1 else 0
            if s == 1:  # no state to keep: advance to the last step, reverse it
                assert m == ell - 1
                continue
            assert m + tail + optimal_cost[m, s] == optimal_cost[ell, s], (ell, s, m)


def test_traced_split_equals_the_reference():
    """Wherever revolve needs at most MAX_REPETITIONS repetitions (every case with
    at least 4 states and fewer than 46377 steps, for instance)."""
    cases = [(ell, s) for ell in range(2, 300) for s in range(1, 12)]
    cases += [(ell, s) for ell in (1000, 4096, 10**5) for s in (4, 44, 90, 300)]
    cases = [(ell, s) for ell, s in cases if s == 1 or repetitions(ell, s) <= 30]
    lengths, slots = (jnp.asarray(c, jnp.int32) for c in zip(*cases, strict=True))
    table = beta_table(300)
    traced = jax.jit(jax.vmap(lambda n, s: split_jnp(n, s, table)))(lengths, slots)
    expected = np.array([split(ell, s) for ell, s in cases])
    np.testing.assert_array_equal(np.asarray(traced), expected)


def test_traced_split_stays_valid_beyond_its_repetition_limit():
    # 3 states, 10**5 steps need ~80 repetitions; the traced split caps at 30 and
    # must still return a valid split point.
    m = int(split_jnp(jnp.int32(10**5), jnp.int32(3), beta_table(3)))
    assert 1 <= m <= 10**5 - 1


class _Counter(eqx.Module):
    """A stepper whose state is its step number: replays are checkable."""

    def advance(self, problem, state):
        del problem
        return state + 1, None

    def checkpoint(self, state):
        return state

    def restore(self, problem, kept):
        del problem
        return kept


def _record(plan: AbstractCheckpointPlan, num_steps: int):
    rec = CheckpointRecorder(
        plan=plan, stepper=_Counter(), kept_like=jax.ShapeDtypeStruct((), jnp.int32)
    )
    record = rec.init(None, None, None, None, None)
    zero = jnp.zeros(())
    for a in range(num_steps):
        step = StepRecord(
            attempt=jnp.int32(a),
            index=jnp.int32(a),
            t0=zero,
            t1=zero,
            y0=zero,
            y1=zero,
            f0=zero,
            f1=zero,
            dense_info=zero,
            accepted=jnp.array(True),
            state=jnp.int32(a),
        )
        record = rec.record(record, step)
    return record


@functools.cache
def _compiled_reverse(plan, max_static_steps, max_steps):
    """`reverse_steps` of `plan` over `_Counter`'s steps, recording the order in
    which the steps are visited and whether each came with its own state: jitted
    once per plan (and limit of the static table, which is read at trace time),
    with the number of steps an argument, as the adjoints run it. Plans that do
    not depend on the number of steps (the online ones) compile once for all."""
    del max_static_steps  # part of the cache's key only

    def leaf(carry, state, a):
        visited, count, states_ok = carry
        return visited.at[count].set(a), count + 1, states_ok & (state == a)

    @jax.jit
    def reverse(checkpoints, num_steps):
        init = (jnp.full((max_steps,), -1), jnp.int32(0), jnp.array(True))
        return reverse_steps(
            None, _Counter(), plan, checkpoints, num_steps, num_steps, leaf, init
        )

    return reverse


SCHEDULES = [
    ak.AllSteps(),
    ak.EveryKSteps(1),
    ak.EveryKSteps(3),
    ak.BinomialCheckpoints(2),
    ak.BinomialCheckpoints(3),
    ak.BinomialCheckpoints(6),
    ak.BinomialCheckpoints(),
]


@pytest.mark.parametrize("num_steps", [0, 1, 2, 7, 20, 33])
@pytest.mark.parametrize(
    "known, static_limit",
    [(True, None), (True, 0), (False, None)],
    # With N known, revolve's reversal is a table computed at trace time, or
    # (beyond a size limit, forced here by a limit of 0) the stack machine.
    ids=["known-N", "known-N-stack-machine", "online"],
)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_backward_pass_visits_every_step_last_first(
    schedule, known, static_limit, num_steps, monkeypatch
):
    if static_limit is not None:
        monkeypatch.setattr(_reverse, "_MAX_STATIC_STEPS", static_limit)
    max_steps = 40
    plan = schedule.plan(num_steps if known else None, max_steps)
    checkpoints = _record(plan, num_steps)
    reverse = _compiled_reverse(plan, _reverse._MAX_STATIC_STEPS, max_steps)
    (visited, count, states_ok), recomputed = reverse(checkpoints, jnp.int32(num_steps))
    assert int(count) == num_steps
    assert list(np.asarray(visited)[:num_steps]) == list(range(num_steps - 1, -1, -1))
    assert bool(states_ok), "a step was reversed from the wrong state"
    assert int(recomputed) == plan.num_recomputed_steps(num_steps)


@pytest.mark.parametrize("num_steps", [1, 2, 5, 10, 100, 1000, 4000])
@pytest.mark.parametrize("c", [2, 3, 5, 44])
def test_binomial_recomputation_is_revolves(num_steps, c):
    """With N known, the forward pass is revolve's first sweep and the backward
    pass re-runs the rest of revolve's t(N, c) = r N - C(c + r, r - 1) steps."""
    plan = ak.BinomialCheckpoints(c).plan(num_steps, num_steps)
    c_used = min(c, num_steps)
    first_sweep = plan.descent_positions[-1]
    assert plan.num_recomputed_steps(num_steps) == (
        min_forward_steps(num_steps, c_used) - first_sweep
    )
    r = 0
    while math.comb(c_used + r, c_used) < num_steps:
        r += 1
    if num_steps > 1:
        expected = r * num_steps - math.comb(c_used + r, r - 1)
        assert min_forward_steps(num_steps, c_used) == expected
    assert plan.num_slots == c_used


def test_stride_schedules_recompute_each_segment_once():
    for n in (1, 7, 100, 1001):
        assert ak.AllSteps().num_recomputed_steps(n) == 0
        for k in (1, 2, 10, 33):
            assert ak.EveryKSteps(k).num_recomputed_steps(n) == n - math.ceil(n / k)


def test_default_number_of_checkpoints_rereuns_each_step_at_most_twice():
    for n in (10, 100, 1000, 4096):
        c = ak.checkpointing.default_num_checkpoints(n)
        assert math.comb(c + 2, 2) >= n > math.comb(c + 1, 2)
        assert ak.BinomialCheckpoints().num_recomputed_steps(n) <= 2 * n


@pytest.mark.parametrize("num_steps", [1, 5, 17, 64, 100])
@pytest.mark.parametrize("c", [2, 4, 9])
def test_online_plan_keeps_what_its_cost_model_assumes(num_steps, c):
    plan = ak.BinomialCheckpoints(c).plan(None, 128)
    _, positions, _ = _record(plan, num_steps)
    kept = sorted(int(p) for p in np.asarray(positions) if p >= 0)
    assert kept == online_positions(num_steps, plan.outer_slots)
    assert len(kept) <= plan.outer_slots
    # Segments never exceed twice the final stride, itself about 2 N / slots.
    lengths = plan.segment_lengths(num_steps)
    assert sum(lengths) == num_steps
    assert max(lengths) <= max(1, 4 * num_steps // plan.outer_slots)


def _stack_depth(plan: AbstractCheckpointPlan, num_steps: int) -> int:
    """The backward pass's stack size, simulated in Python."""
    if isinstance(plan, DescentPlan):
        stack = [(a, n, s) for a, n, s, _ in plan.descent_stack]
        segments = []
    else:
        starts = plan.segment_starts(num_steps)
        ends = starts[1:] + [num_steps]
        segments = [
            (a, b - a, plan.root_slots) for a, b in zip(starts, ends, strict=True)
        ]
        stack = []
    deepest = len(stack)
    while stack or segments:
        if not stack:
            stack.append(segments.pop())
        deepest = max(deepest, len(stack))
        a, n, s = stack.pop()
        if n > 1:
            m = split(n, s)
            stack += [(a, m, s), (a + m, n - m, s - 1)]
            deepest = max(deepest, len(stack))
    return deepest


@pytest.mark.parametrize("schedule", SCHEDULES[2:], ids=repr)
def test_stack_never_outgrows_its_buffer(schedule):
    for n in (1, 2, 3, 10, 57, 300, 1000):
        for known in (True, False):
            plan = schedule.plan(n if known else None, 1000)
            assert _stack_depth(plan, n) <= plan.root_slots + 2, (n, known)


def test_invalid_schedules_are_rejected():
    with pytest.raises(ValueError, match="positive integer"):
        ak.EveryKSteps(0)
    with pytest.raises(ValueError, match=">= 2"):
        ak.BinomialCheckpoints(1)
