"""Choose an adjoint: memory, accuracy and time of each, on one problem.

What it shows: the same loss differentiated with every kind of adjoint, each passed
as an object to `ak.solve`, and what each costs:

- memory: XLA's temporary buffers for `value_and_grad` (what grows with the number
  of steps N: everything for `DirectAdjoint`, about sqrt(N) states for the
  default `CheckpointedAdjoint()`, nothing for `BacksolveAdjoint`);
- accuracy: the gradient's relative error against a float64 reference of the
  exact ODE's gradient. The discrete adjoints give the exact gradient of the
  computed (Tsit5) solution; the continuous ones solve the adjoint ODE backward,
  and `BacksolveAdjoint` also re-solves the primal backward, which is unstable
  here: the field damps some components much faster than others (contracting
  forward, so expanding backward: its rounding errors grow like e^20);
- time of one `value_and_grad`.

The problem: a Neural ODE (an MLP field, state 16, a batch of 64) with damping,
`dy/dt = mlp(y) - d * y`, the rates `d` from 0 to 20 across the components, over
[0, 1] in N = 200 constant Tsit5 steps, float32; the loss is mean(y(1)^2).
Prints a table and writes choose_adjoint.png.

    python examples/choose_adjoint.py           # under a minute on a CPU
    python examples/choose_adjoint.py --quick   # N = 20, three adjoints (the tests)
"""

import argparse
import dataclasses
import pathlib

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np

import adjointkit as ak
from adjointkit import benchmarking as bench


# `jax.enable_x64` is JAX 0.8's name; older JAX has only the experimental one.
if hasattr(jax, "enable_x64"):
    enable_x64 = jax.enable_x64
else:
    enable_x64 = jax.experimental.enable_x64

# Damping rates from 0 to 20 across the state's components: fast and slow modes.
DAMPING = 20.0
QUICK = ("Checkpointed (binomial)", "Direct", "Backsolve")


def adjoints(n: int) -> dict:
    """Every adjoint to compare, by label. `k = sqrt(n)` balances the segment
    length and the number of checkpoints."""
    k = max(1, round(n**0.5))
    return {
        "Checkpointed (binomial)": ak.CheckpointedAdjoint(),
        "Checkpointed (AllSteps)": ak.CheckpointedAdjoint(ak.AllSteps()),
        f"Checkpointed (every {k})": ak.CheckpointedAdjoint(ak.EveryKSteps(k)),
        "Direct": ak.DirectAdjoint(),
        "Backsolve": ak.BacksolveAdjoint(),
        "Interpolated": ak.InterpolatedAdjoint(),
        f"Interpolated (every {k})": ak.InterpolatedAdjoint(
            checkpoints=ak.EveryKSteps(k)
        ),
        "Quadrature": ak.QuadratureAdjoint(),
    }


def make_loss(problem, field, n, adjoint, solver=None):
    def loss(params):
        sol = ak.solve(
            field,
            solver or ak.Tsit5(),
            0.0,
            1.0,
            problem.y0,
            params,
            dt0=1.0 / n,
            adjoint=adjoint,
        )
        return problem.loss(sol.ys[-1])

    return loss


def reference_gradient(problem, field):
    """The gradient of the exact ODE's loss, to near float64 rounding: Dopri8, 400
    steps, in float64."""
    with enable_x64(True):

        def to64(tree):
            return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)

        problem64 = dataclasses.replace(
            problem, params=to64(problem.params), y0=to64(problem.y0)
        )
        loss = make_loss(problem64, field, 400, ak.DirectAdjoint(), ak.Dopri8())
        grad = jax.jit(jax.grad(loss))(problem64.params)
        return np.concatenate(
            [np.ravel(np.asarray(g)) for g in jax.tree_util.tree_leaves(grad)]
        )


def measure(problem, field, n, adjoint, reference, repeats):
    loss = make_loss(problem, field, n, adjoint)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(problem.params).compile()
    memory = compiled.memory_analysis().temp_size_in_bytes
    seconds = bench.time_call(compiled, problem.params, repeats=repeats)
    _, grad = compiled(problem.params)
    flat = np.concatenate(
        [np.ravel(np.asarray(g, np.float64)) for g in jax.tree_util.tree_leaves(grad)]
    )
    error = np.linalg.norm(flat - reference) / np.linalg.norm(reference)
    return dict(memory_mib=memory / 2**20, seconds=seconds, error=float(error))


def main(quick: bool = False, out: pathlib.Path = pathlib.Path(".")):
    problem = bench.neural_ode(state=16, width=64, batch=64, dtype=jnp.float32)

    def field(t, y, params):
        rates = jnp.linspace(0.0, DAMPING, y.shape[-1], dtype=y.dtype)
        return problem.f(t, y, params) - rates * y

    n = 20 if quick else 200
    chosen = adjoints(n)
    if quick:
        chosen = {k: v for k, v in chosen.items() if k in QUICK}
    reference = reference_gradient(problem, field)
    rows = {}
    print(f"N = {n} Tsit5 steps, {problem.y0.shape[0]} states of {problem.y0.shape[1]}")
    print(f"{'adjoint':26s}{'temp MiB':>10s}{'grad rel err':>14s}{'v+g ms':>9s}")
    for label, adjoint in chosen.items():
        row = rows[label] = measure(
            problem, field, n, adjoint, reference, 3 if quick else 10
        )
        print(
            f"{label:26s}{row['memory_mib']:10.3f}{row['error']:14.2e}"
            f"{1e3 * row['seconds']:9.2f}"
        )
    _plot(out / "choose_adjoint.png", rows, n)
    return rows


def _plot(path, rows, n):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return
    labels = list(rows)
    colours = [f"C{i}" for i in range(len(labels))]
    panels = [
        ("memory_mib", 1.0, "temporary memory (MiB)", True),
        ("error", 1.0, "gradient relative error", True),
        ("seconds", 1e3, "value_and_grad time (ms)", False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.45 * len(labels) + 1.6), sharey=True)
    for ax, (key, scale, title, log) in zip(axes, panels, strict=True):
        ax.barh(labels, [scale * rows[k][key] for k in labels], color=colours)
        ax.set_xlabel(title)
        if log:
            ax.set_xscale("log")
            smallest = min(scale * rows[k][key] for k in labels)
            ax.set_xlim(left=min(smallest / 5, 1e-8 if key == "error" else 1.0))
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(f"one loss, every adjoint: N = {n} Tsit5 steps, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, 3 adjoints")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)
