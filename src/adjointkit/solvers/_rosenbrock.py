"""Rosenbrock methods: linearly implicit, one LU factorisation and no Newton
iteration per step. A new method is a `RosenbrockTableau`."""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree, Real

from .._solution import RESULTS
from ..interpolation._base import step_fraction
from ._base import AbstractSolver, SolverStep
from ._newton import factorise, flat_field, jacobian, lu_solve
from ._stage_rows import stage_rows


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """A Rosenbrock method in the transformed variables of E. Hairer and
    G. Wanner (*Solving ODEs II*, section IV.7, (7.25)), which need no
    matrix-vector products with the Jacobian `J`:

        (I/(hγ) - J) k_i = f(t0 + c_i h, y0 + Σ_{j<i} a_ij k_j)
                           + Σ_{j<i} (C_ij / h) k_j + h d_i ∂f/∂t,

    `y1 = y0 + Σ b_i k_i`, error estimate `Σ b_error_i k_i`.

    **Arguments:** `gamma`; `a` and `C`, strictly lower triangles (row `i` with `i`
    entries); `c`, `d`, `b`, `b_error` (one entry per stage); `order`,
    `embedded_order`; `dense`, an `(m, s)` matrix giving the continuous extension
    `y(θ) = (1-θ) y0 + θ (y1 + (1-θ)(K_0 + θ (K_1 + θ K_2 ...)))` with
    `K_r = Σ_i dense[r, i] k_i`.
    """

    gamma: float
    a: tuple[tuple[float, ...], ...]
    C: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    d: tuple[float, ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...]
    order: int
    embedded_order: int
    dense: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        s = len(self.b)
        for name in ("c", "d", "b_error"):
            if len(getattr(self, name)) != s:
                raise ValueError(f"`{name}` must have one entry per stage.")
        for name in ("a", "C"):
            rows = getattr(self, name)
            if len(rows) != s or any(len(r) != i for i, r in enumerate(rows)):
                raise ValueError(f"row i of `{name}` must have i entries, for s rows.")
        if any(len(r) != s for r in self.dense):
            raise ValueError("each row of `dense` must have one entry per stage.")

    @property
    def num_stages(self) -> int:
        return len(self.b)


def _combine(coeffs, ks, like):
    out = None
    for w, k in zip(coeffs, ks, strict=False):
        if w != 0:
            out = w * k if out is None else out + w * k
    return jnp.zeros_like(like) if out is None else out


def _unpack(diff, unravel):
    """`(field, t0, t1, y0, f0, h)` from a step's differentiable inputs."""
    f, args, t0, t1, y0, f0 = diff
    return flat_field(f, args, unravel), t0, t1, y0, f0, (t1 - t0).astype(y0.dtype)


def _stage_point(tab: RosenbrockTableau, i: int, t0, t1, y0, ks):
    """Where stage `i` evaluates `f`: `(t0 + c_i h, y0 + Σ_{j<i} a_ij k_j)`."""
    return t0 + tab.c[i] * (t1 - t0), y0 + _combine(tab.a[i], ks, y0)


def _solve_stages(tab: RosenbrockTableau, diff, unravel):
    """The stages `k_i` of one step (stacked, `(s, n)`), and the factorisation of
    `I - hγ J` that produced them. Multiplied through by `hγ`, stage `i` solves

        (I - hγ J) k_i = hγ f_i + γ Σ_{j<i} C_ij k_j + hγ h d_i ∂f/∂t

    with no division by `h` (a zero-length step is fine)."""
    field, t0, t1, y0, f0, h = _unpack(diff, unravel)
    hgamma = h * tab.gamma
    jac = jacobian(field, t0, y0)
    _, f_t = jax.jvp(lambda t: field(t, y0), (t0,), (jnp.ones_like(t0),))
    lu = factorise(jnp.eye(y0.shape[0], dtype=y0.dtype) - hgamma * jac)
    ks = []
    for i in range(tab.num_stages):
        fi = f0 if i == 0 else field(*_stage_point(tab, i, t0, t1, y0, ks))
        rhs = hgamma * fi + tab.gamma * _combine(tab.C[i], ks, y0)
        if tab.d[i] != 0:
            rhs = rhs + (hgamma * h * tab.d[i]) * f_t
        ks.append(lu_solve(lu, rhs))
    return jnp.stack(ks), lu


@eqx.filter_custom_jvp
def _stages(diff, *, tableau: RosenbrockTableau, unravel: Callable):
    """The stages of one Rosenbrock step, `(s, n)`, from its differentiable inputs
    `diff = (f, args, t0, t1, y0, f0)` (`y0`, `f0 = f(t0, y0)` flat).

    Differentiated by its own rule (`_stage_tangents`), not through the Jacobian
    that the step evaluates: see there."""
    return _solve_stages(tableau, diff, unravel)[0]


def _stage_tangents(tab: RosenbrockTableau, unravel, diff, ks, lu, ddiff):
    """The tangents of the stages `ks` along `ddiff`, by differentiating the stage
    equations at the computed stages rather than the computation.

    With `k_i` held fixed, stage `i` is the fixed point `k_i = G_i(p, k_{<i})` of

        G_i = hγ (f_i + J k_i + h d_i ∂f/∂t) + γ Σ_{j<i} C_ij k_j,

    where `J k_i + h d_i ∂f/∂t` is one directional derivative of `f` at
    `(t0, y0)` along `(h d_i, k_i)`. So `(I - hγ J) k̇_i = Ġ_i`: one solve with
    the step's own factorisation per stage, and `Ġ_i` takes one forward-mode
    product of `f` at the stage point and one second-order product at `(t0, y0)`.
    Differentiating the computation instead would push `n` tangents through
    the Jacobian `J` itself (`n` the state's size), and reverse mode would keep
    their intermediate values: on the stiff Neural ODE of `benchmarks/stiff.py`
    (n = 32), most of the gradient's memory. This rule needs `s` (the number of
    stages) of those products, and, checkpointed, reverse mode keeps only the
    rule's inputs.
    """
    dtype = ks.dtype

    def coupling(diff):
        # hγ (J k_i + h d_i ∂f/∂t) for every stage at once, k_i held fixed.
        field, t0, _, y0, _, h = _unpack(diff, unravel)
        d = jnp.asarray(tab.d, dtype)

        def along(d_i, k_i):
            dt = (h * d_i).astype(jnp.result_type(t0))
            return jax.jvp(field, (t0, y0), (dt, k_i))[1]

        return (h * tab.gamma) * jax.vmap(along)(d, ks)

    _, dcoupling = eqx.filter_jvp(coupling, (diff,), (ddiff,))
    if dcoupling is None:
        dcoupling = jnp.zeros_like(ks)

    def first_part(diff):
        # Stage 0's explicit part: hγ f0.
        *_, f0, h = _unpack(diff, unravel)
        return (h * tab.gamma) * f0

    _, df0 = eqx.filter_jvp(first_part, (diff,), (ddiff,))
    first = dcoupling[0] if df0 is None else df0 + dcoupling[0]
    dks = jnp.zeros_like(ks).at[0].set(lu_solve(lu, first))

    # The later stages in a loop, whose transpose accumulates the parameters'
    # cotangent in its carry: unrolled, each stage's was a buffer of its own, all
    # alive until summed (measured on the stiff Neural ODE: 312 -> 247 KiB).
    # Stage i reads only k_{<i} and their tangents (the rest are still zero).
    def explicit_part(diff, stages, i):
        # hγ f_i + γ Σ_{j<i} C_ij k_j, as a function of the inputs and k_{<i}.
        field, t0, t1, y0, _, h = _unpack(diff, unravel)
        c_i, a_part, C_part = stage_rows(i, stages, tab.c, tab.a, tab.C)
        ti = t0 + (c_i * (t1 - t0)).astype(jnp.result_type(t0))
        fi = field(ti, y0 + a_part)
        return (h * tab.gamma) * fi + tab.gamma * C_part

    # The tangents (`ddiff`, `dcoupling`) ride in the carry rather than being
    # closed over: JAX 0.4.30 (the oldest supported) fails to transpose a loop
    # that closes over a tangent.
    def stage(i, carry):
        dks, ddiff, dcoupling = carry
        _, dpart = eqx.filter_jvp(
            lambda d, k: explicit_part(d, k, i), (diff, ks), (ddiff, dks)
        )
        return dks.at[i].set(lu_solve(lu, dpart + dcoupling[i])), ddiff, dcoupling

    carry = (dks, ddiff, dcoupling)
    return lax.fori_loop(1, tab.num_stages, stage, carry)[0]


@_stages.def_jvp
def _stages_jvp(primals, tangents, *, tableau: RosenbrockTableau, unravel: Callable):
    (diff,), (ddiff,) = primals, tangents
    ks, lu = _solve_stages(tableau, diff, unravel)
    # Checkpointed: reverse mode keeps only this rule's inputs per step and
    # re-evaluates f's products when it transposes them.
    tangent = eqx.filter_checkpoint(
        lambda diff, ks, lu, ddiff: _stage_tangents(
            tableau, unravel, diff, ks, lu, ddiff
        )
    )(diff, ks, lu, ddiff)
    return ks, tangent


class AbstractRosenbrock(AbstractSolver):
    """A Rosenbrock method defined by its `tableau` (a `RosenbrockTableau`
    class attribute).

    Each step evaluates the exact Jacobian `J = ∂f/∂y` and `∂f/∂t` at its start
    (forward mode), factorises `I - hγ J` once (lineax's LU) and solves one
    linear system per stage: no iteration, so a step cannot fail to converge. The
    method's order needs the exact Jacobian, which is why it is re-evaluated
    every step. Derivatives through a step do not differentiate that Jacobian's
    evaluation: the stages have their own forward-mode rule (`_stage_tangents`),
    which reverse mode transposes, so `jax.jvp` through `DirectAdjoint` works
    too.

    The state carried between steps is `f(t, y)` (one evaluation at each step's
    end, for interpolations and continuous adjoints).
    """

    tableau: eqx.AbstractClassVar[RosenbrockTableau]

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        return self.tableau.embedded_order + 1

    @property
    def evaluates_jacobian(self) -> bool:
        return True

    def init(self, f: Callable, t0: Real[Array, ""], y0: PyTree, args: PyTree):
        return f(t0, y0, args)

    def step(
        self,
        f: Callable,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        args: PyTree,
        state,
    ) -> SolverStep:
        tab = self.tableau
        y0_flat, unravel = ravel_pytree(y0)
        dtype = y0_flat.dtype
        f0 = ravel_pytree(state)[0].astype(dtype)
        ks = list(_stages((f, args, t0, t1, y0_flat, f0), tableau=tab, unravel=unravel))
        y1_flat = y0_flat + _combine(tab.b, ks, y0_flat)
        f1 = flat_field(f, args, unravel)(t1, y1_flat)
        y_error = unravel(_combine(tab.b_error, ks, y0_flat))
        dense_info = jnp.stack([_combine(row, ks, y0_flat) for row in tab.dense])
        dense_info = jnp.concatenate([dense_info, y1_flat[None]])
        ok = jnp.all(jnp.isfinite(y1_flat))
        return SolverStep(
            y1=unravel(y1_flat),
            y_error=y_error,
            dense_info=dense_info,
            state=unravel(f1),
            # A singular matrix shows as a non-finite step: say which it was.
            result=RESULTS.where(ok, RESULTS.successful, RESULTS.nonfinite_state),
            num_f_evals=jnp.asarray(tab.num_stages, jnp.int32),
            num_jac_evals=jnp.asarray(1, jnp.int32),
        )

    def interpolate(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: PyTree,
        dense_info,
        t: Real[Array, ""],
    ) -> PyTree:
        y0_flat, unravel = ravel_pytree(y0)
        theta = step_fraction(t0, t1, t)
        theta = theta.astype(dense_info.dtype)
        *Ks, y1_flat = dense_info
        inner = Ks[-1]
        for K in reversed(Ks[:-1]):
            inner = K + theta * inner
        out = (1 - theta) * y0_flat + theta * (y1_flat + (1 - theta) * inner)
        return unravel(out)


# Rodas5: G. Di Marzo, "RODAS5(4) -- Méthodes de Rosenbrock d'ordre 5(4) adaptées
# aux problèmes différentiels-algébriques", MSc thesis, University of Geneva,
# 1993; coefficients in the transformed form (with its dense output) as
# tabulated in OrdinaryDiffEq.jl's `Rodas5Tableau`. Stiffly accurate: the last two
# stages are corrections at t1, the last one the error estimate.
_a6 = (
    -14.09640773051259,
    6.925207756232704,
    -41.47510893210728,
    2.343771018586405,
    24.13215229196062,
)
_rodas5 = RosenbrockTableau(
    gamma=0.19,
    a=(
        (),
        (2.0,),
        (3.040894194418781, 1.041747909077569),
        (2.576417536461461, 1.622083060776640, -0.9089668560264532),
        (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
        _a6,
        _a6 + (1.0,),
        _a6 + (1.0, 1.0),
    ),
    C=(
        (),
        (-10.31323885133993,),
        (-21.04823117650003, -7.234992135176716),
        (32.22751541853323, -4.943732386540191, 19.44922031041879),
        (
            -20.69865579590063,
            -8.816374604402768,
            1.260436877740897,
            -0.7495647613787146,
        ),
        (
            -46.22004352711257,
            -17.49534862857472,
            -289.6389582892057,
            93.60855400400906,
            318.3822534212147,
        ),
        (
            34.20013733472935,
            -14.15535402717690,
            57.82335640988400,
            25.83362985412365,
            1.408950972071624,
            -6.551835421242162,
        ),
        (
            42.57076742291101,
            -13.80770672017997,
            93.98938432427124,
            18.77919633714503,
            -31.58359187223370,
            -6.685968952921985,
            -5.810979938412932,
        ),
    ),
    c=(0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580, 1, 1, 1),
    d=(
        0.19,
        -0.1823079225333714636,
        -0.319231832186874912,
        0.3449828624725343,
        -0.377417564392089818,
        0.0,
        0.0,
        0.0,
    ),
    b=_a6 + (1.0, 1.0, 1.0),
    b_error=(0.0,) * 7 + (1.0,),
    order=5,
    embedded_order=4,
    dense=(
        (
            27.354592673333357,
            -6.925207756232857,
            26.40037733258859,
            0.5635230501052979,
            -4.699151156849391,
            -1.6008677469422725,
            -1.5306074446748028,
            -1.3929872940716344,
        ),
        (
            44.19024239501722,
            1.3677947663381929e-13,
            202.93261852171622,
            -35.5669339789154,
            -181.91095152160645,
            3.4116351403665033,
            2.5793540257308067,
            2.2435122582734066,
        ),
        (
            -44.0988150021747,
            -5.755396159656812e-13,
            -181.26175034586677,
            56.99302194811676,
            183.21182741427398,
            -7.480257918273637,
            -5.792426076169686,
            -5.32503859794143,
        ),
    ),
)


class Rodas5(AbstractRosenbrock):
    """Rodas5: a stiffly accurate, L-stable Rosenbrock method of order 5 with an
    embedded order-4 estimate and a 4th-order continuous extension; 8 stages,
    one Jacobian and one LU factorisation per step, no Newton iteration
    (G. Di Marzo, University of Geneva, 1993). A good default for stiff problems
    of moderate size at moderate to tight tolerances.

    **Arguments:** none (the method is fixed; step sizes come from the
    controller, and its linear solves are exact, so it has no iteration
    settings).
    """

    tableau = _rodas5
