"""A failed solve stops where it failed, says why, and never passes for a success.

Specifications (each was a silent wrong number before its fix), each checked
eagerly and under `jax.jit`:

1. With constant steps, a step whose Newton iteration fails ends the solve
   there: the step is rejected (not kept), `sol.result` is
   `RESULTS.nonlinear_solve_failed`, and, as Diffrax fills a failed solve, every
   time and value `SaveAt` would have saved after the point reached is `inf`,
   while `SaveAt(t1=True)` saves that point (its time and state). The values
   saved before it are those of a solve that stops there. This holds on the scan
   path (times known at trace time) and on the while-loop path (`t1` traced
   under `jax.jit`), with the same statistics (the attempts up to the failed
   one), and with every adjoint. Before: on y' = -p y^3 + sin(10 y) (p = 100,
   y0 = (3, -2), dt0 = 5) the failed first step was kept (y = -1758 at t = 5),
   every later saved value was a finite number, and under `jax.jit` over `t1`
   `sol.result` said the solve had succeeded.
2. A failure for `max_steps` (with constant or adaptive steps, forward or
   backward in time, with every adjoint) is filled the same way; before, the
   values at unreached `SaveAt(ts=...)` times were 0 and `SaveAt(t1=True)`
   labelled the last state reached with `t1`.
3. With a `PIDController` the same failing step is retried shorter and the
   solve succeeds (the failure is never kept).
4. With `throw=True` a failed solve raises however the solution is used:
   eagerly, under `jax.jit`, `jax.grad`, `jax.jit(jax.grad(...))` with the
   result as the auxiliary output or with a loss linear in `ys` (where only the
   gradient is computed), `jax.vmap`, forward mode, and a jitted function that
   returns only `sol.result` or `sol.stats`. Before, XLA dropped the check
   (attached to `ts`, `ys` and `dense` only) whenever those values were unused,
   and the gradient of the failed solve was returned. A successful solve's
   values and gradients are unchanged, and `throw=False` never raises.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adjointkit as ak


# --- 1. a Newton failure with constant steps --------------------------------------

P = 100.0
Y0_CUBIC = np.array([3.0, -2.0])
TS_CUBIC = np.arange(0.0, 51.0, 5.0)


def cubic(t, y, p):
    return -p * y**3 + jnp.sin(10 * y)


def _cubic_solve(solver, t1, **kwargs):
    return ak.solve(
        cubic, solver, 0.0, t1, jnp.asarray(Y0_CUBIC), jnp.asarray(P), dt0=5.0,
        saveat=ak.SaveAt(ts=jnp.asarray(TS_CUBIC), t1=True), **kwargs,
    )  # fmt: skip


def _run(mode, solve, t1):
    """`solve(t1)` eagerly (constant steps as a scan) or under `jax.jit` with `t1`
    traced (their number only known at run time: the while loop)."""
    if mode == "eager":
        return solve(t1)
    return jax.jit(solve)(jnp.asarray(t1))


def _stats(sol):
    return {k: int(v) for k, v in sol.stats.items()}


def _assert_stopped_at(sol, num_before, ts_grid, ys_before, t_stop, y_stop):
    """`sol` saved `ts_grid` (and `t1`): the first `num_before` values are
    `ys_before`, the rest `inf` (time and value), and the `t1` entry is
    `(t_stop, y_stop)`."""
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    n = len(ts_grid)
    np.testing.assert_array_equal(ts[:num_before], ts_grid[:num_before])
    np.testing.assert_allclose(ys[:num_before], ys_before, rtol=1e-12, atol=0)
    assert np.all(ts[num_before:n] == np.inf)
    assert np.all(ys[num_before:n] == np.inf)
    assert ts[n] == t_stop
    np.testing.assert_allclose(ys[n], y_stop, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("solver", [ak.ImplicitEuler(), ak.Kvaerno5()], ids=repr)
def test_failed_newton_step_with_constant_steps_stops_the_solve(solver, mode):
    # Fails on the old code: the failed step's y = -1758 was saved at t = 5 and
    # every later value was finite; under jit, `result` said successful.
    sol = _run(mode, lambda t1: _cubic_solve(solver, t1, throw=False), 50.0)
    assert sol.result == ak.RESULTS.nonlinear_solve_failed
    # The chord iterations from y0 = (3, -2) across a step of 5 (h |df/dy| =
    # 5 * 3 p y0^2 ~ 1e4) do not reach the root of the stage equation, near
    # |y| = 0.2: the first step fails, and nothing after t = 0 is kept.
    stats = _stats(sol)
    k = stats["num_accepted_steps"]
    assert (stats["num_steps"], stats["num_rejected_steps"]) == (k + 1, 1)
    assert k < len(TS_CUBIC) - 1
    if k == 0:
        before = Y0_CUBIC[None]
    else:  # the solve that stops at the last point reached, successfully
        before = np.asarray(
            _cubic_solve(solver, 5.0 * k, saveat=ak.SaveAt(ts=TS_CUBIC[: k + 1])).ys
        )
    _assert_stopped_at(sol, k + 1, TS_CUBIC, before, 5.0 * k, before[-1])


class FailsAfter(ak.ImplicitEuler):
    """Implicit Euler whose steps ending after `T_FAIL` report a failed Newton
    iteration: with steps of 0.1, steps 1-5 succeed and the sixth fails."""

    def step(self, f, t0, t1, y0, args, state):
        out = super().step(f, t0, t1, y0, args, state)
        result = ak.RESULTS.where(
            t1 > T_FAIL, ak.RESULTS.nonlinear_solve_failed, out.result
        )
        return eqx.tree_at(lambda s: s.result, out, result)


T_FAIL = 0.55
RATE = 1.3
Y0 = np.array([1.0, 2.0])
TS = np.linspace(0.0, 1.0, 11)
STOP = 5  # steps accepted before the failure, to t = 0.5


def decay(t, y, a):
    return -a * y


def _implicit_euler(a, n):
    """Implicit Euler's exact values after n steps of 0.1 on y' = -a y."""
    return Y0[None] / (1 + 0.1 * a) ** np.asarray(n)[:, None]


ADJOINTS = {
    "direct": ak.DirectAdjoint(),
    "binomial": ak.CheckpointedAdjoint(),
    "allsteps": ak.CheckpointedAdjoint(ak.AllSteps()),
    "every3": ak.CheckpointedAdjoint(ak.EveryKSteps(3)),
    "backsolve": ak.BacksolveAdjoint(),
    "interpolated": ak.InterpolatedAdjoint(),
    "interpolated-every3": ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(3)),
}
DISCRETE = ["direct", "binomial", "allsteps", "every3"]


def _decay_solve(adjoint, t1, a, **kwargs):
    return ak.solve(
        decay, FailsAfter(), 0.0, t1, jnp.asarray(Y0), a, dt0=0.1,
        saveat=ak.SaveAt(ts=jnp.asarray(TS), t1=True), adjoint=adjoint,
        throw=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("name", list(ADJOINTS))
def test_a_failure_mid_solve_keeps_what_came_before(name, mode):
    adjoint = ADJOINTS[name]
    sol = _run(mode, lambda t1: _decay_solve(adjoint, t1, jnp.asarray(RATE)), 1.0)
    assert sol.result == ak.RESULTS.nonlinear_solve_failed
    stats = _stats(sol)
    # The attempts up to the failed one, on the scan and while-loop paths alike
    # (one Jacobian each).
    assert (stats["num_steps"], stats["num_accepted_steps"]) == (STOP + 1, STOP)
    assert (stats["num_rejected_steps"], stats["num_jac_evals"]) == (1, STOP + 1)
    before = _implicit_euler(RATE, np.arange(STOP + 1))
    _assert_stopped_at(sol, STOP + 1, TS, before, TS[STOP], before[-1])
    if name not in DISCRETE:
        return
    # The derivative of the values saved before the failure is that of implicit
    # Euler's: d/da y0 (1 + 0.1 a)^-n = -0.1 n y0 (1 + 0.1 a)^-(n + 1).
    n = np.arange(STOP + 1)
    exact = np.sum(-0.1 * n[:, None] * _implicit_euler(RATE, n + 1))

    def loss(a, t1):
        return jnp.sum(_decay_solve(adjoint, t1, a).ys[: STOP + 1])

    grad = jax.grad(loss) if mode == "eager" else jax.jit(jax.grad(loss))
    np.testing.assert_allclose(grad(jnp.asarray(RATE), 1.0), exact, rtol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_a_failed_step_leaves_no_trace_in_steps_and_dense_output(mode):
    def solve(t1):
        return ak.solve(
            decay, FailsAfter(), 0.0, t1, jnp.asarray(Y0), jnp.asarray(RATE),
            dt0=0.1, saveat=ak.SaveAt(steps=True, dense=True), throw=False,
        )  # fmt: skip

    sol = _run(mode, solve, 1.0)
    assert sol.result == ak.RESULTS.nonlinear_solve_failed
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    # The failed sixth step wrote its end (0.6) before it was rejected: gone.
    np.testing.assert_allclose(ts[:STOP], TS[1 : STOP + 1], rtol=1e-15)
    np.testing.assert_allclose(
        ys[:STOP], _implicit_euler(RATE, np.arange(1, STOP + 1)), rtol=1e-12
    )
    assert np.all(ts[STOP:] == np.inf) and np.all(ys[STOP:] == np.inf)
    # Dense output covers what was solved: exact at the points reached.
    np.testing.assert_allclose(
        sol.evaluate(jnp.asarray(TS[: STOP + 1])),
        _implicit_euler(RATE, np.arange(STOP + 1)),
        rtol=1e-12,
    )


# --- 2. max_steps, filled the same way ----------------------------------------------

MAX_STEPS_ADJOINTS = {
    **{k: ADJOINTS[k] for k in ("direct", "binomial", "backsolve", "interpolated")},
    "reversible": ak.ReversibleAdjoint(),
}


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("name", list(MAX_STEPS_ADJOINTS))
def test_max_steps_failure_is_filled_with_inf(name, mode):
    # Fails on the old code: the values at unreached save times were 0, and the
    # t1 entry was labelled t1 = 1 while holding y(0.5).
    adjoint = MAX_STEPS_ADJOINTS[name]
    solver = ak.ReversibleHeun() if name == "reversible" else ak.Tsit5()

    def solve(t1, **kwargs):
        return ak.solve(
            decay, solver, 0.0, t1, jnp.asarray(Y0), jnp.asarray(RATE), dt0=0.1,
            adjoint=adjoint, **kwargs,
        )  # fmt: skip

    sol = _run(
        mode,
        lambda t1: solve(
            t1,
            saveat=ak.SaveAt(ts=jnp.asarray(TS), t1=True),
            max_steps=STOP,
            throw=False,
        ),
        1.0,
    )
    assert sol.result == ak.RESULTS.max_steps_reached
    stats = _stats(sol)
    assert (stats["num_steps"], stats["num_accepted_steps"]) == (STOP, STOP)
    # What came before: the same steps, solved to 0.5 successfully.
    before = np.asarray(solve(TS[STOP], saveat=ak.SaveAt(ts=TS[: STOP + 1])).ys)
    _assert_stopped_at(sol, STOP + 1, TS, before, TS[STOP], before[-1])


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_adaptive_max_steps_failure_is_filled_with_inf(mode):
    def solve(t1, **kwargs):
        return ak.solve(
            decay, ak.Tsit5(), 0.0, t1, jnp.asarray(Y0), jnp.asarray(RATE),
            controller=ak.PIDController(rtol=1e-8, atol=1e-8), **kwargs,
        )  # fmt: skip

    sol = _run(
        mode,
        lambda t1: solve(
            t1,
            saveat=ak.SaveAt(ts=jnp.asarray(TS), t1=True, steps=True),
            max_steps=4,
            throw=False,
        ),
        1.0,
    )
    assert sol.result == ak.RESULTS.max_steps_reached
    accepted = _stats(sol)["num_accepted_steps"]
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    # ts, then 4 rows of steps, then t1: the point reached is the last step's end.
    steps_ts = ts[len(TS) : len(TS) + 4]
    t_stop = steps_ts[accepted - 1]
    assert 0 < t_stop < 1 and np.all(steps_ts[accepted:] == np.inf)
    reached = TS <= t_stop
    assert np.all(ts[: len(TS)][~reached] == np.inf)
    assert np.all(ys[: len(TS)][~reached] == np.inf)
    np.testing.assert_allclose(
        ys[: len(TS)][reached], Y0 * np.exp(-RATE * TS[reached, None]), rtol=1e-7
    )
    assert ts[-1] == t_stop
    np.testing.assert_array_equal(ys[-1], ys[len(TS) + accepted - 1])


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_backward_in_time_failure_fills_with_plus_inf(mode):
    # As Diffrax: unreached times are +inf whatever the direction; the t1 entry
    # is the time reached, in the user's (descending) time.
    def solve(t1):
        return ak.solve(
            decay, ak.Tsit5(), 0.0, t1, jnp.asarray(Y0), jnp.asarray(-RATE),
            dt0=-0.1, saveat=ak.SaveAt(ts=-jnp.asarray(TS), t1=True),
            max_steps=STOP, throw=False,
        )  # fmt: skip

    sol = _run(mode, solve, -1.0)
    assert sol.result == ak.RESULTS.max_steps_reached
    ts, ys = np.asarray(sol.ts), np.asarray(sol.ys)
    np.testing.assert_allclose(ts[: STOP + 1], -TS[: STOP + 1], rtol=1e-15)
    np.testing.assert_allclose(
        ys[: STOP + 1], Y0 * np.exp(-RATE * TS[: STOP + 1, None]), rtol=1e-6
    )
    assert np.all(ts[STOP + 1 : len(TS)] == np.inf)
    assert np.all(ys[STOP + 1 : len(TS)] == np.inf)
    np.testing.assert_allclose(ts[-1], -TS[STOP], rtol=1e-15)
    # The state reached; the value saved there is read off the dense output.
    np.testing.assert_allclose(ys[-1], ys[STOP], rtol=1e-14)


# --- 3. adaptive steps retry the failing step --------------------------------------


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_adaptive_steps_retry_the_failing_newton_step(mode):
    def solve(t1):
        return _cubic_solve(
            ak.Kvaerno5(), t1, controller=ak.PIDController(rtol=1e-6, atol=1e-6)
        )

    sol = _run(mode, solve, 50.0)
    assert sol.result == ak.RESULTS.successful
    assert _stats(sol)["num_rejected_steps"] >= 1  # dt0 = 5 was not kept
    # By t = 5 the solution sits at the stable equilibria -p y^3 + sin(10 y) = 0,
    # y = +-0.20649 (Newton's method on the scalar equation, from 0.2).
    y = 0.2
    for _ in range(20):
        y -= (-P * y**3 + np.sin(10 * y)) / (-3 * P * y**2 + 10 * np.cos(10 * y))
    np.testing.assert_allclose(np.asarray(sol.ys)[1:], [[y, -y]] * 11, rtol=1e-5)


# --- 4. throw=True raises however the solution is used ------------------------------


def _exhausted(p, adjoint=None, max_steps=2, throw=True):
    """A solve that needs 100 steps, allowed `max_steps`."""
    kwargs = {} if adjoint is None else dict(adjoint=adjoint)
    return ak.solve(
        decay, ak.Tsit5(), 0.0, 1.0, jnp.asarray(Y0), p, dt0=0.01,
        max_steps=max_steps, throw=throw, **kwargs,
    )  # fmt: skip


def _loss_with_result(p, **kwargs):
    sol = _exhausted(p, **kwargs)
    return jnp.sum(sol.ys[-1]), sol.result


def _linear_loss(p, **kwargs):
    return jnp.sum(_exhausted(p, **kwargs).ys[-1])


USES = {
    "eager": lambda p: _exhausted(p).ys,
    "jit": jax.jit(lambda p: _exhausted(p).ys),
    "jit, result only": jax.jit(lambda p: _exhausted(p).result),
    "jit, stats only": jax.jit(lambda p: _exhausted(p).stats),
    "grad": jax.grad(_linear_loss),
    "jit(grad), result as aux": jax.jit(jax.grad(_loss_with_result, has_aux=True)),
    "jit(grad), linear loss": jax.jit(jax.grad(_linear_loss)),
    "jit(grad), direct": jax.jit(
        jax.grad(lambda p: _linear_loss(p, adjoint=ak.DirectAdjoint()))
    ),
    "jit(grad), backsolve": jax.jit(
        jax.grad(lambda p: _linear_loss(p, adjoint=ak.BacksolveAdjoint()))
    ),
    "vmap": jax.vmap(lambda p: _exhausted(p).ys),
    "jit(vmap(grad))": jax.jit(jax.vmap(jax.grad(_linear_loss))),
    "jit(jvp), direct": jax.jit(
        lambda p: jax.jvp(
            lambda q: _linear_loss(q, adjoint=ak.DirectAdjoint()), (p,), (1.0,)
        )[1]
    ),
}


@pytest.mark.parametrize("use", list(USES))
def test_a_failure_raises_however_the_solution_is_used(use):
    # Fails on the old code for the jitted uses that return only the result or
    # the stats, and for jit(grad) and jit(jvp): the derivative came back (or,
    # through BacksolveAdjoint, an error about its backward solve, not the
    # forward solve's cause).
    p = jnp.asarray([RATE, 2 * RATE]) if "vmap" in use else jnp.asarray(RATE)
    with pytest.raises(Exception, match="maximum number of steps"):
        jax.block_until_ready(USES[use](p))


def test_a_failed_newton_step_raises_under_jit_grad_with_result_as_aux():
    def loss(p):
        sol = ak.solve(
            cubic, ak.Kvaerno5(), 0.0, 50.0, jnp.asarray(Y0_CUBIC), p, dt0=5.0
        )
        return jnp.sum(sol.ys[-1]), sol.result

    with pytest.raises(Exception, match="Newton iteration did not converge"):
        jax.block_until_ready(jax.jit(jax.grad(loss, has_aux=True))(jnp.asarray(P)))


def test_success_and_throw_false_are_unchanged():
    p = jnp.asarray(RATE)
    # A successful solve: the gradient is right (Tsit5's error, 1e-9 relative),
    # under every transformation that raises above, and forward over reverse.
    exact = -np.sum(Y0) * np.exp(-RATE)

    def loss(p, adjoint=None):
        return jnp.sum(_exhausted(p, adjoint, max_steps=100).ys[-1])

    grad, result = jax.jit(
        jax.grad(lambda p: (loss(p), _exhausted(p, max_steps=100).result), has_aux=True)
    )(p)
    assert result == ak.RESULTS.successful
    np.testing.assert_allclose(grad, exact, rtol=1e-9)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(p), exact, rtol=1e-9)
    direct = ak.DirectAdjoint()
    hessian = jax.jit(jax.hessian(lambda p: loss(p, direct)))(p)
    np.testing.assert_allclose(hessian, -exact, rtol=1e-8)
    # throw=False: the failure is reported, the gradient returned.
    grad, result = jax.jit(
        jax.grad(lambda p: _loss_with_result(p, throw=False), has_aux=True)
    )(p)
    assert result == ak.RESULTS.max_steps_reached
    assert np.isfinite(grad)
