"""Algebraically reversible solvers: a step can be undone in closed form.

Two methods, both carrying a second solution alongside `y`:

- `Reversible(solver, coupling)`: McCallum & Foster's reversible Runge--Kutta
  scheme around any explicit Runge--Kutta method.
- `ReversibleHeun()`: Kidger, Foster, Li & Lyons' reversible Heun method.

`ReversibleAdjoint` runs the steps backward with `backward_step` instead of storing
or recomputing the forward states, so its memory does not grow with the number of
steps.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree, Real

from .._solution import RESULTS
from .._tree import tree_lincomb, tree_stack
from ..interpolation._base import step_fraction
from ._base import AbstractAuxiliaryState, AbstractSolver, SolverStep
from ._runge_kutta import AbstractExplicitRungeKutta


class AbstractReversibleSolver(AbstractSolver):
    """A solver whose steps can be inverted exactly (up to rounding).

    An implementation provides, besides what every `AbstractSolver` provides:

    - `backward_step(f, t0, t1, y1, args, state1) -> (y0, state0)`: the inverse of
      `step` over `[t0, t1]`: from the state `y1` and carried `state1` at `t1`
      that a `step` from `t0` returned, the `y0` and `state0` it started from;
    - `reverse_step(unpack, p, y1, state1, ct_y1, ct_state1, record_pullback)`:
      one step of a reverse-mode backward pass (`ReversibleAdjoint`): undo the
      step and pull the cotangents back through it (see its docstring);
      `reverse_by_inverse` implements it for any solver from `backward_step` and
      a VJP of `step`.

    Its carried state is an `AbstractAuxiliaryState` (it holds more than
    `(t, y)` determines), so checkpoints keep it whole.
    """

    @abc.abstractmethod
    def backward_step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y1: PyTree,
        args: PyTree,
        state,
    ) -> tuple[PyTree, PyTree]:
        """Undo one step from `t0` to `t1`.

        **Arguments:** the vector field `f`, the step's end points `t0`, `t1`,
        the state `y1` at `t1`, `args`, and the carried `state` at `t1`.

        **Returns:** `(y0, state0)`: the state and carried state at `t0`.
        """

    @abc.abstractmethod
    def reverse_step(
        self,
        unpack: Callable,
        p: PyTree,
        y1: PyTree,
        state1,
        ct_y1: PyTree,
        ct_state1: PyTree,
        record_pullback: Callable | None,
        recompute_stages: bool = False,
    ):
        """Undo one step and pull cotangents back through it.

        **Arguments:**

        - `unpack(p) -> (f, t0, t1, args)`: the step's vector field, end points
          and `args` as a function of the differentiable `p`;
        - `y1`, `state1`: the state and carried state at the step's end;
        - `ct_y1`, `ct_state1`: their cotangents (explicit zeros where none);
        - `record_pullback(y0, y1, f0, f1, dense_info) -> (cts, aux)`: the
          cotangents `(ct_y0, ct_y1, ct_f0, ct_f1, ct_dense_info)` that what was
          saved from this step sends back into it (from the step's values), and
          anything the caller wants back; `None` when nothing was saved;
        - `recompute_stages`: hold the intermediate values of one evaluation of
          `f` at a time, evaluating each stage again to pull back through it,
          where the method supports it (less memory, more evaluations).

        **Returns:** `(y0, state0, ct_p, ct_y0, ct_state0, aux)`: the reconstructed
        start of the step, the cotangents of `p`, `y0` and `state0`, and
        `record_pullback`'s `aux` (`None` without it).
        """


def reverse_by_inverse(
    solver: AbstractReversibleSolver,
    unpack,
    p,
    y1,
    state1,
    ct_y1,
    ct_state1,
    record_pullback,
):
    """`reverse_step` for any reversible solver: `backward_step`, then the VJP
    of `step` taken afresh from the reconstructed start."""
    f, t0, t1, args = unpack(p)
    y0, state0 = solver.backward_step(f, t0, t1, y1, args, state1)

    def forward(p, y0, state0):
        f, t0, t1, args = unpack(p)
        out = solver.step(f, t0, t1, y0, args, state0)
        saved = (out.y1, solver.func(state0), solver.func(out.state), out.dense_info)
        return (out.y1, out.state), saved

    ((_, _), saved), vjp_fn = eqx.filter_vjp(forward, p, y0, state0)
    y1_again, f0, f1, dense_info = saved
    aux = None
    ct_y0_saved = None
    ct_saved = jtu.tree_map(jnp.zeros_like, saved)
    if record_pullback is not None:
        (ct_y0_saved, ct_y1_saved, ct_f0, ct_f1, ct_dense), aux = record_pullback(
            y0, y1_again, f0, f1, dense_info
        )
        ct_saved = (ct_y1_saved, ct_f0, ct_f1, ct_dense)
    ct_p, ct_y0, ct_state0 = vjp_fn(((ct_y1, ct_state1), ct_saved))
    if ct_y0_saved is not None:
        ct_y0 = _add(ct_y0, ct_y0_saved)
    return y0, state0, ct_p, ct_y0, ct_state0, aux


def _base_step_by_stages(base, unpack, p, x, backward: bool, dense: bool = False):
    """A step of the explicit Runge--Kutta `base` from `x`, over `[t0, t1]` or
    (`backward`) from `t1` to `t0`, with a pullback that holds the
    intermediate values of one evaluation of `f` at a time.

    **Returns:** `(phi, k0, dense_info, pullback)`: the step's result, its first
    stage `f(t_a, x)`, with `dense` its `dense_info` as `base.step` returns it
    (else `None`), and `pullback(ct_phi, ct_k0, ct_dense=None) -> (ct_p, ct_x)`.

    `jax.vjp` of the whole step keeps what each of its `s` evaluations of `f`
    computed inside (a Neural ODE's hidden activations, `s` times over) until
    the step is pulled back. Here only the stages' inputs and values are kept
    (`2 s` states); the pullback is a loop over the stages, last first, that
    evaluates each stage's `f` again to linearise it. It is a loop rather than
    unrolled because XLA merges an unrolled re-evaluation with the original one
    (same inputs, same result) and so keeps every intermediate again; on the
    CPU it does so even across `lax.optimization_barrier`, which is why
    `jax.checkpoint` around `f` saves nothing here. Cost: `s` more evaluations
    of `f` per step.
    """
    tab = base.tableau
    used = tab.num_stages - (1 if tab.fsal else 0)  # the FSAL stage is f(t1, y1)

    def ends(p):
        _, t0, t1, _ = unpack(p)
        return (t1, t0) if backward else (t0, t1)

    def stage(p, c, y):
        f, _, _, args = unpack(p)
        ta, tb = ends(p)
        return f(ta + c * (tb - ta), y, args)

    ta, tb = ends(p)
    h = tb - ta
    ys, ks = [], []
    for i in range(used):  # as `base.step` evaluates them
        y = x if i == 0 else tree_lincomb(x, h, tab.a[i], ks)
        ys.append(y)
        ks.append(stage(p, tab.c[i], y))
    phi = tree_lincomb(x, h, tab.b[:used], ks)

    def at_end(p, y):
        f, _, _, args = unpack(p)
        return f(ends(p)[1], y, args)

    # The stages and f(t_b, phi) (FSAL methods' last stage, the others' extra
    # evaluation), as `base.step` stacks them.
    dense_info = tree_stack([*ks, at_end(p, phi)]) if dense else None
    ys, ks = tree_stack(ys), tree_stack(ks)
    a = np.zeros((used, used))  # the strictly lower triangle a[i][j], dense
    for i in range(used):
        a[i, :i] = tab.a[i]
    b = np.asarray(tab.b[:used])
    c = np.asarray(tab.c[:used])

    def spread(w, ct):
        """`h w_j ct` for each stage j, stacked: the cotangents that
        `h sum_j w_j k_j` sends to the stages."""
        w = (h * w).astype(ct.dtype)
        return w.reshape((used,) + (1,) * ct.ndim) * ct[None]

    def dot_h(w, ct):
        """The cotangent that `h sum_j w_j k_j` sends to `h`."""
        total = sum(
            jnp.vdot(u, jnp.tensordot(w.astype(u.dtype), k, axes=1))
            for u, k in zip(jtu.tree_leaves(ct), jtu.tree_leaves(ks), strict=True)
        )
        return total.astype(h.dtype)

    def pullback(ct_phi, ct_k0, ct_dense=None):
        ct_p_end = None
        if ct_dense is not None:
            _, vjp_end = eqx.filter_vjp(at_end, p, phi)
            ct_p_end, ct_phi_end = vjp_end(jtu.tree_map(lambda v: v[used], ct_dense))
            ct_phi = _add(ct_phi, ct_phi_end)
        # phi = x + h sum_j b_j k_j
        ct_ks = jtu.tree_map(lambda ct: spread(jnp.asarray(b), ct), ct_phi)
        if ct_dense is not None:
            ct_ks = jtu.tree_map(lambda u, v: u + v[:used], ct_ks, ct_dense)
        if ct_k0 is not None:
            ct_ks = jtu.tree_map(lambda u, v: u.at[0].add(v), ct_ks, ct_k0)
        ct_h = dot_h(jnp.asarray(b), ct_phi)
        ct_p = jtu.tree_map(
            lambda v: jnp.zeros_like(v) if eqx.is_inexact_array(v) else None, p
        )

        def body(n, carry):
            ct_ks, ct_x, ct_p, ct_h = carry
            i = used - 1 - n
            y, ct_k = jtu.tree_map(lambda v: v[i], (ys, ct_ks))
            c_i = jnp.asarray(c, jnp.result_type(h))[i]
            _, stage_vjp = eqx.filter_vjp(lambda p, y: stage(p, c_i, y), p, y)
            ct_p_i, ct_y = stage_vjp(ct_k)
            # y_i = x + h sum_j a_ij k_j
            row = jnp.asarray(a)[i]
            ct_ks = jtu.tree_map(lambda u, v: u + spread(row, v), ct_ks, ct_y)
            ct_h = ct_h + dot_h(row, ct_y)
            return ct_ks, _add(ct_x, ct_y), _add_none(ct_p, ct_p_i), ct_h

        _, ct_x, ct_p, ct_h = lax.fori_loop(0, used, body, (ct_ks, ct_phi, ct_p, ct_h))
        _, vjp_h = eqx.filter_vjp(lambda p: (lambda u, v: v - u)(*ends(p)), p)
        (ct_p_h,) = vjp_h(ct_h)
        ct_p = _add_none(ct_p, ct_p_h)
        if ct_p_end is not None:
            ct_p = _add_none(ct_p, ct_p_end)
        return ct_p, ct_x

    return phi, jtu.tree_map(lambda k: k[0], ks), dense_info, pullback


def _add_none(a, b):
    """Leafwise sum of two cotangent trees in which a leaf may be `None`."""
    return jtu.tree_map(
        lambda u, v: v if u is None else (u if v is None else u + v),
        a,
        b,
        is_leaf=lambda x: x is None,
    )


def _axpy(a, x, y):
    """`a * x + y` leaf by leaf (`a` a Python float)."""
    return jtu.tree_map(lambda u, v: a * u + v, x, y)


def _add(x, y):
    return jtu.tree_map(jnp.add, x, y)


def _sub(x, y):
    return jtu.tree_map(jnp.subtract, x, y)


def _both_successful(a: RESULTS, b: RESULTS) -> RESULTS:
    return RESULTS.where(a == RESULTS.successful, b, a)


class ReversibleState(AbstractAuxiliaryState):
    """What `Reversible` carries between steps: the second solution `z`, and `f`
    at `(t, z)` and at `(t, y)`."""

    z: PyTree
    fz: PyTree
    fy: PyTree


class Reversible(AbstractReversibleSolver):
    r"""McCallum & Foster's reversible Runge--Kutta scheme around an explicit
    Runge--Kutta `solver`.

    With `Φ(t_a, t_b, x)` a step of `solver` from `x` at `t_a` to `t_b`, and a
    second solution `z` carried alongside `y` (`z_0 = y_0`), one step over
    `[t_n, t_{n+1}]` is

    $$y_{n+1} = λ y_n + (1 - λ) z_n + (Φ(t_n, t_{n+1}, z_n) - z_n),$$

    $$z_{n+1} = z_n - (Φ(t_{n+1}, t_n, y_{n+1}) - y_{n+1}):$$

    `y` advances by the base method's increment computed from `z`, and `z` by
    minus the increment of a base step *backward* in time from the new `y`. Each
    line only changes one of the two solutions by a function of the other, so the
    step is undone in closed form (`backward_step`), last line first:
    `z_n = z_{n+1} + (Φ(t_{n+1}, t_n, y_{n+1}) - y_{n+1})`, then
    `y_n = (y_{n+1} - Φ(t_n, t_{n+1}, z_n)) / λ + z_n`. The method converges with
    the base method's order (`tests/test_reversible.py` measures it).

    **Stability.** On `y' = μ y` with `w = h μ`, a step multiplies the two modes
    of `(y, z)` by about `e^w` (the solution) and `λ e^(-w)` (a parasitic mode,
    mostly `y - z`; the product of the two is exactly `λ`). So for a decaying
    mode (`Re w < 0`) the parasitic mode grows unless `λ <= e^(Re w)`, roughly
    `h |Re μ| <= 1 - λ`; and `backward_step`, which multiplies by the
    reciprocals, amplifies rounding errors by `e^(|Re μ| T)` along the solution
    and by `(λ e^(-Re w))^(-N)` along the parasitic mode over `N` steps. With `λ`
    near one (the default 0.999) both stay moderate for the non-stiff problems
    this method is for (Neural ODEs on `[0, 1]`, oscillatory dynamics); on a
    strongly dissipative problem over a long interval the forward solve itself
    grows a spurious mode: use another solver there. With `λ = 1` the parasitic
    mode is never damped. Rounding in float32 is amplified by the same
    factors, so float64 is advisable when `|Re μ| T` or `N (1 - λ)` exceed a few.

    Per step: one base step from `z_n` and one backward from `y_{n+1}` (whose
    final-stage evaluation XLA drops when nothing uses it), plus `f(t_{n+1},
    z_{n+1})` for the next step's first stage -- about twice the base method's
    evaluations. The carried `f(t, y)` is the first stage of the backward step, so
    `func` is exact at no cost.

    **Error estimate:** the base method's embedded estimate of the step from
    `z_n`, the step that advances `y`. `error_order` is the base method's; a base
    method without one (`Euler`, `RK4`) runs with constant steps only.

    **Dense output:** on `[t_n, t_{n+1}]`, with `θ = (t - t_n) / h` and `P(t)` the
    base method's own continuous extension of its step from `z_n`,
    `y(t) = (1 - (1 - λ) θ) (y_n - z_n) + P(t)`. It is exact at both ends
    (`y_n` at `θ = 0`, `y_{n+1}` at `θ = 1`), so the dense solution is
    continuous, and it is the base method's interpolant of its own increment
    shifted by `y_n - z_n` (which is of the method's global order), so it is as
    accurate as the base method's dense output, at no extra evaluation. Linear
    interpolation (as the reference implementation in Diffrax's pull request uses)
    would be second order whatever the base method; cubic Hermite through
    `f(t, y)` at both ends would be third order.

    **Arguments:**

    - `solver`: an explicit Runge--Kutta method (`Tsit5()`, `Dopri5()`, `RK4()`,
      ...). Anything else raises a `TypeError`.
    - `coupling`: `λ` in `(0, 1]`; default 0.999.

    References: S. McCallum and J. Foster, "Efficient, accurate and stable
    gradients for Neural ODEs", arXiv:2410.11648, 2024 (the scheme, its order and
    stability); P. Kidger, J. Foster, X. Li and T. Lyons, "Efficient and accurate
    gradients for neural SDEs", NeurIPS 2021 (reversible Heun, which it
    generalises).
    """

    solver: AbstractExplicitRungeKutta
    coupling: float = eqx.field(static=True)

    def __init__(self, solver: AbstractExplicitRungeKutta, coupling: float = 0.999):
        if not isinstance(solver, AbstractExplicitRungeKutta):
            raise TypeError(
                "Reversible wraps an explicit Runge--Kutta method (Tsit5(), "
                f"Dopri5(), RK4(), ...); got {type(solver).__name__}."
            )
        coupling = float(coupling)
        if not 0.0 < coupling <= 1.0:
            raise ValueError(f"`coupling` must be in (0, 1]; got {coupling}.")
        self.solver = solver
        self.coupling = coupling

    @property
    def order(self) -> int:
        return self.solver.order

    @property
    def error_order(self) -> int | None:
        return self.solver.error_order

    @property
    def evals_per_step(self) -> int:
        # The base step from z, the backward base step from y1 (its stages up to
        # y1, the first of which is f(t1, y1)), and f(t1, z1).
        tab = self.solver.tableau
        backward = tab.num_stages - (1 if tab.fsal else 0)
        return self.solver.evals_per_step + backward + 1

    def init(self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree):
        f0 = f(t0, y0, args)
        return ReversibleState(z=y0, fz=f0, fy=f0)

    def func(self, state: ReversibleState) -> PyTree:
        return state.fy

    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state: ReversibleState,
    ) -> SolverStep:
        lam = self.coupling
        z0 = state.z
        forward = self.solver.step(f, t0, t1, z0, args, state.fz)
        # λ y0 + (1 - λ) z0 + (Φ(z0) - z0), written so that the inverse is as
        # short: y0 = (y1 - Φ(z0)) / λ + z0.
        y1 = _axpy(lam, _sub(y0, z0), forward.y1)
        fy1 = f(t1, y1, args)
        backward = self.solver.step(f, t1, t0, y1, args, fy1)
        z1 = _add(z0, _sub(y1, backward.y1))
        fz1 = f(t1, z1, args)
        return SolverStep(
            y1=y1,
            y_error=forward.y_error,
            dense_info=(z0, forward.dense_info),
            state=ReversibleState(z=z1, fz=fz1, fy=fy1),
            result=_both_successful(forward.result, backward.result),
            num_f_evals=jnp.asarray(self.evals_per_step, jnp.int32),
            num_jac_evals=jnp.asarray(0, jnp.int32),
        )

    def backward_step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y1: PyTree,
        args: PyTree,
        state: ReversibleState,
    ) -> tuple[PyTree, ReversibleState]:
        lam = self.coupling
        backward = self.solver.step(f, t1, t0, y1, args, state.fy)
        z0 = _sub(state.z, _sub(y1, backward.y1))
        fz0 = f(t0, z0, args)
        forward = self.solver.step(f, t0, t1, z0, args, fz0)
        y0 = _axpy(1 / lam, _sub(y1, forward.y1), z0)
        fy0 = f(t0, y0, args)
        return y0, ReversibleState(z=z0, fz=fz0, fy=fy0)

    def reverse_step(
        self,
        unpack: Callable,
        p: PyTree,
        y1: PyTree,
        state1: ReversibleState,
        ct_y1: PyTree,
        ct_state1: ReversibleState,
        record_pullback: Callable | None,
        recompute_stages: bool = False,
    ):
        """Undo the step and pull back through it, one half at a time.

        The step is two shears, `y1 = λ y0 + G(z0)` with `G(z) = Φ(t0, t1, z) -
        λ z`, then `z1 = z0 + y1 - Φ(t1, t0, y1)`. Undoing each one evaluates its
        base step at exactly the point its VJP needs, so the base step is
        linearised once, where `reverse_by_inverse` would evaluate it for the
        inverse and again for the VJP; and (when nothing was saved from the step)
        the second shear is pulled back before the first is linearised, so only
        one base step's intermediate values are held at a time. `f(t0, z0)` is
        recomputed inside the first shear rather than taken from the carried
        state (the same function), so the cotangent of the carried `fz` is
        neither used nor produced (it is zero here, as every caller's is). When
        nothing was saved from the step, the returned state's `fz` and `fy` are
        not recomputed (the next `reverse_step` reads only `z`).

        With `recompute_stages`, each base step is pulled back stage by stage
        (`_base_step_by_stages`): the intermediate values of one evaluation of
        `f` are held instead of `s`, for `s` more evaluations per base step
        (`2 s` per step, one more when the step saved something).
        """
        lam = self.coupling
        base = self.solver
        want_dense = record_pullback is not None

        def back_half(p, y1):
            f, t0, t1, args = unpack(p)
            fy1 = f(t1, y1, args)
            return base.step(f, t1, t0, y1, args, fy1).y1, fy1

        if recompute_stages:
            phi_back, fy1, _, pull_back = _base_step_by_stages(
                base, unpack, p, y1, backward=True
            )

            def vjp_back(cts):
                return pull_back(*cts)
        else:
            (phi_back, fy1), vjp_back = eqx.filter_vjp(back_half, p, y1)
        z0 = _add(_sub(state1.z, y1), phi_back)

        def forward_half(p, z0):
            f, t0, t1, args = unpack(p)
            fz0 = f(t0, z0, args)
            out = base.step(f, t0, t1, z0, args, fz0)
            return out.y1, (out.dense_info if want_dense else None)

        if want_dense:
            if recompute_stages:
                phi, fz0, base_dense, pull_forward = _base_step_by_stages(
                    base, unpack, p, z0, backward=False, dense=True
                )

                def vjp_forward(cts):
                    return pull_forward(cts[0], None, cts[1])
            else:
                (phi, base_dense), vjp_forward = eqx.filter_vjp(forward_half, p, z0)
            y0 = _axpy(1 / lam, _sub(y1, phi), z0)
            f, t0, _, args = unpack(p)
            fy0 = f(t0, y0, args)
            (ct_y0_s, ct_y1_s, ct_f0, ct_f1, ct_dense), aux = record_pullback(
                y0, y1, fy0, fy1, (z0, base_dense)
            )
            ct_z0_s, ct_base_dense = ct_dense
            ct_y1 = _add(ct_y1, ct_y1_s)
            ct_fy1 = _add(ct_state1.fy, ct_f1)
        else:
            aux = None
            ct_fy1 = ct_state1.fy
        # z1 = z0 + y1 - Φ(t1, t0, y1)
        ct_z1 = ct_state1.z
        neg = jtu.tree_map(jnp.negative, ct_z1)
        ct_p_back, ct_y1_back = vjp_back((neg, ct_fy1))
        ct_y1 = _add(_add(ct_y1, ct_z1), ct_y1_back)
        if not want_dense:
            # Pull back the second shear before linearising the first.
            z0, ct_y1, ct_p_back = lax.optimization_barrier((z0, ct_y1, ct_p_back))
            if recompute_stages:
                phi, _, _, pull_forward = _base_step_by_stages(
                    base, unpack, p, z0, backward=False
                )
                ct_p_fwd, ct_z0_fwd = pull_forward(ct_y1, None)
            else:
                (phi, _), vjp_forward = eqx.filter_vjp(forward_half, p, z0)
                ct_p_fwd, ct_z0_fwd = vjp_forward((ct_y1, None))
            y0 = _axpy(1 / lam, _sub(y1, phi), z0)
            ct_y0 = jtu.tree_map(lambda c: lam * c, ct_y1)
            ct_fy0 = jtu.tree_map(jnp.zeros_like, ct_state1.fy)
        else:
            ct_p_fwd, ct_z0_fwd = vjp_forward((ct_y1, ct_base_dense))
            ct_y0 = _axpy(lam, ct_y1, ct_y0_s)
            ct_z0_fwd = _add(ct_z0_fwd, ct_z0_s)
            ct_fy0 = ct_f0
        # y1 = λ (y0 - z0) + Φ(t0, t1, z0)
        ct_z0 = _add(_axpy(-lam, ct_y1, ct_z1), ct_z0_fwd)
        ct_p = _add_none(ct_p_back, ct_p_fwd)
        if want_dense:
            if not recompute_stages:
                fz0 = f(t0, z0, args)  # as forward_half computes it: XLA shares them
            state0 = ReversibleState(z=z0, fz=fz0, fy=fy0)
        else:
            # Nothing reads the carried evaluations here (the next reverse_step
            # recomputes what it needs): leave them, and two evaluations of `f`
            # and their working memory, out.
            state0 = ReversibleState(z=z0, fz=state1.fz, fy=state1.fy)
        ct_state0 = ReversibleState(
            z=ct_z0, fz=jtu.tree_map(jnp.zeros_like, ct_state1.fz), fy=ct_fy0
        )
        return y0, state0, ct_p, ct_y0, ct_state0, aux

    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        z0, base_info = dense_info
        theta = step_fraction(t0, t1, t)
        weight = 1 - (1 - self.coupling) * theta
        base = self.solver.interpolate(t0, t1, z0, base_info, t)
        return jtu.tree_map(
            lambda y, z, p: weight.astype(y.dtype) * (y - z) + p, y0, z0, base
        )

    def with_controller(self, controller) -> "Reversible":
        return Reversible(self.solver.with_controller(controller), self.coupling)


class ReversibleHeunState(AbstractAuxiliaryState):
    """What `ReversibleHeun` carries: the auxiliary solution `ŷ` and `f(t, ŷ)`."""

    yhat: PyTree
    fhat: PyTree


class ReversibleHeun(AbstractReversibleSolver):
    r"""The reversible Heun method of Kidger, Foster, Li & Lyons: second order,
    one evaluation of `f` per step, algebraically reversible.

    An auxiliary solution `ŷ` (`ŷ_0 = y_0`) is carried with `f(t, ŷ)`:

    $$ŷ_{n+1} = 2 y_n - ŷ_n + h f(t_n, ŷ_n),$$

    $$y_{n+1} = y_n + \tfrac{h}{2} (f(t_n, ŷ_n) + f(t_{n+1}, ŷ_{n+1})).$$

    Undone by `ŷ_n = 2 y_{n+1} - ŷ_{n+1} - h f(t_{n+1}, ŷ_{n+1})`, then `y_n =
    y_{n+1} - h/2 (f(t_n, ŷ_n) + f(t_{n+1}, ŷ_{n+1}))` (one evaluation). The error
    estimate compares with the Euler step from `ŷ`, `h/2 (f(t_{n+1}, ŷ_{n+1}) -
    f(t_n, ŷ_n))` (local order 2).

    The method's parasitic mode (`y - ŷ` changes sign every step) is only
    neutrally stable, so on stiff or strongly dissipative problems it can grow;
    `Reversible(solver, coupling=λ < 1)` damps it.

    `func(state)` is `f(t, ŷ)`, not `f(t, y)` (which the method never evaluates):
    `ŷ - y` changes sign each step and stays O(h²), so it agrees with `f(t, y)` to
    the method's order. **Dense output** is linear interpolation between `y_n` and
    `y_{n+1}`: its error, O(h²), is of the method's order, and it needs no
    derivative at `y`.

    **Arguments:** none.

    Reference: P. Kidger, J. Foster, X. Li and T. Lyons, "Efficient and accurate
    gradients for neural SDEs", NeurIPS 2021, Section 3.
    """

    @property
    def order(self) -> int:
        return 2

    @property
    def error_order(self) -> int | None:
        return 2

    @property
    def evals_per_step(self) -> int:
        return 1

    def init(self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree):
        return ReversibleHeunState(yhat=y0, fhat=f(t0, y0, args))

    def func(self, state: ReversibleHeunState) -> PyTree:
        return state.fhat

    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state: ReversibleHeunState,
    ) -> SolverStep:
        h = t1 - t0

        def hat(y, yh, k):
            return 2 * y - yh + h.astype(k.dtype) * k

        yhat1 = jtu.tree_map(hat, y0, state.yhat, state.fhat)
        fhat1 = f(t1, yhat1, args)
        y1 = jtu.tree_map(
            lambda y, a, b: y + (h / 2).astype(a.dtype) * (a + b),
            y0,
            state.fhat,
            fhat1,
        )
        y_error = jtu.tree_map(
            lambda a, b: (h / 2).astype(a.dtype) * (b - a), state.fhat, fhat1
        )
        return SolverStep(
            y1=y1,
            y_error=y_error,
            dense_info=y1,
            state=ReversibleHeunState(yhat=yhat1, fhat=fhat1),
            result=RESULTS.successful,
            num_f_evals=jnp.asarray(1, jnp.int32),
            num_jac_evals=jnp.asarray(0, jnp.int32),
        )

    def backward_step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y1: PyTree,
        args: PyTree,
        state: ReversibleHeunState,
    ) -> tuple[PyTree, ReversibleHeunState]:
        h = t1 - t0
        yhat0 = jtu.tree_map(
            lambda y, yh, k: 2 * y - yh - h.astype(k.dtype) * k,
            y1,
            state.yhat,
            state.fhat,
        )
        fhat0 = f(t0, yhat0, args)
        y0 = jtu.tree_map(
            lambda y, a, b: y - (h / 2).astype(a.dtype) * (a + b),
            y1,
            fhat0,
            state.fhat,
        )
        return y0, ReversibleHeunState(yhat=yhat0, fhat=fhat0)

    def reverse_step(
        self,
        unpack: Callable,
        p: PyTree,
        y1: PyTree,
        state1: ReversibleHeunState,
        ct_y1: PyTree,
        ct_state1: ReversibleHeunState,
        record_pullback: Callable | None,
        recompute_stages: bool = False,
    ):
        """`reverse_by_inverse`: one evaluation to undo the step, and the VJP of
        a step (one more). `recompute_stages` changes nothing: a step has one
        evaluation of `f`."""
        del recompute_stages
        return reverse_by_inverse(
            self, unpack, p, y1, state1, ct_y1, ct_state1, record_pullback
        )

    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        theta = step_fraction(t0, t1, t)
        return jtu.tree_map(
            lambda a, b: a + theta.astype(a.dtype) * (b - a), y0, dense_info
        )
