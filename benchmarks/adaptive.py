"""Adaptive steps (PIDController): adjointkit's adjoints against Diffrax's, side by
side in one run.

Two problems, each solved under PID control by both libraries with the same
solver, tolerances and `max_steps`:

- Lotka--Volterra, Dopri5, rtol = atol = 1e-6, t in [0, 10], float64: a small
  state, where per-step overhead is all the time there is (also the best CPU
  proxy for a GPU's per-step launch cost);
- the Neural ODE of DESIGN §4 (MLP 32-128-128-32, tanh, batch 64, float32),
  Tsit5, rtol = atol = 1e-5, t in [0, 1].

For each: the forward solve, and value+grad of the loss with every adjoint.
Reported per method: median time (interleaved over rounds, the best round
kept), XLA temp bytes of the compiled function, compile time, the steps the
solve took. Ratios pair each adjointkit method with its Diffrax counterpart.

    python benchmarks/adaptive.py
    python benchmarks/adaptive.py --problems lotka_volterra --out results/
    python benchmarks/adaptive.py --closure   # parameters closed over by f
"""

import argparse
import json
import pathlib
import time

import diffrax
import jax
import jax.numpy as jnp

import adjointkit as ak
from adjointkit import benchmarking as bench


SETTINGS = {
    "lotka_volterra": dict(solver="dopri5", rtol=1e-6, dtype=jnp.float64),
    "neural_ode": dict(solver="tsit5", rtol=1e-5, dtype=jnp.float32),
}


def _problem(name: str, dtype):
    if name == "neural_ode":
        return bench.neural_ode(batch=64, dtype=dtype)
    return bench.lotka_volterra(dtype=dtype)


def methods():
    """name -> (library, adjoint); `None` as the adjoint: the forward solve only."""
    return {
        "ak forward": ("adjointkit", None),
        "dfx forward": ("diffrax", None),
        "ak CheckpointedAdjoint()": ("adjointkit", ak.CheckpointedAdjoint()),
        "ak AllSteps()": ("adjointkit", ak.CheckpointedAdjoint(ak.AllSteps())),
        "dfx RecursiveCheckpointAdjoint()": (
            "diffrax",
            diffrax.RecursiveCheckpointAdjoint(),
        ),
        "ak BacksolveAdjoint()": ("adjointkit", ak.BacksolveAdjoint()),
        "dfx BacksolveAdjoint()": ("diffrax", diffrax.BacksolveAdjoint()),
        "ak InterpolatedAdjoint()": ("adjointkit", ak.InterpolatedAdjoint()),
        "ak QuadratureAdjoint()": ("adjointkit", ak.QuadratureAdjoint()),
        "ak DirectAdjoint()": ("adjointkit", ak.DirectAdjoint()),
        "dfx DirectAdjoint()": ("diffrax", diffrax.DirectAdjoint()),
    }


# (label, ours, theirs): theirs is a method name, or "=" + one of ours.
PAIRS = [
    ("forward", "ak forward", "dfx forward"),
    (
        "default value+grad",
        "ak CheckpointedAdjoint()",
        "dfx RecursiveCheckpointAdjoint()",
    ),
    ("AllSteps", "ak AllSteps()", "dfx RecursiveCheckpointAdjoint()"),
    ("Backsolve", "ak BacksolveAdjoint()", "dfx BacksolveAdjoint()"),
    (
        "Interpolated / ak default",
        "ak InterpolatedAdjoint()",
        "ak CheckpointedAdjoint()",
    ),
    ("Quadrature / ak default", "ak QuadratureAdjoint()", "ak CheckpointedAdjoint()"),
    ("Direct", "ak DirectAdjoint()", "dfx DirectAdjoint()"),
]


def _function(problem, library, adjoint, settings, max_steps, closure):
    """The jitted function measured: the loss (forward) or its value and grad."""
    options = dict(solver=settings["solver"], closure=closure)
    rtol = settings["rtol"]
    # The forward solve (`adjoint` None) with each library's default adjoint.
    if library == "adjointkit":
        used = adjoint or ak.CheckpointedAdjoint()
        loss = bench.adjointkit_loss(problem, used, max_steps, rtol, **options)
    else:
        used = adjoint or diffrax.RecursiveCheckpointAdjoint()
        loss = bench.diffrax_loss(problem, used, max_steps, rtol, **options)
    if adjoint is None:
        return jax.jit(lambda p: loss(p)[0]), loss
    return jax.jit(jax.value_and_grad(lambda p: loss(p)[0])), loss


def run_problem(name: str, args) -> list[dict]:
    settings = SETTINGS[name]
    problem = _problem(name, settings["dtype"])
    params = problem.params
    rows, fns = [], {}
    for method, (library, adjoint) in methods().items():
        if args.only and not any(word in method for word in args.only):
            continue
        fn, loss = _function(
            problem, library, adjoint, settings, args.max_steps, args.closure
        )
        start = time.perf_counter()
        try:
            compiled = fn.lower(params).compile()
        except Exception as error:  # a method that cannot run this way: say so
            # (Diffrax's BacksolveAdjoint refuses parameters closed over by f.)
            print(f"{name:15s} {method:34s} fails: {type(error).__name__}")
            continue
        compile_s = time.perf_counter() - start
        mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
        evals = int(jax.jit(lambda p, loss=loss: loss(p)[1])(params))
        fns[method] = compiled
        rows.append(
            dict(
                problem=name,
                method=method,
                temp_mib=mib,
                compile_s=compile_s,
                forward_f_evals=evals,
            )
        )
    # Interleave the methods over rounds so that drifting load hits all alike.
    times = {method: [] for method in fns}
    for _ in range(args.rounds):
        for method, fn in fns.items():
            times[method].append(bench.time_call(fn, params, repeats=args.repeats))
    for row in rows:
        row["ms"] = 1e3 * min(times[row["method"]])
        print(
            f"{name:15s} {row['method']:34s} {row['ms']:9.2f} ms "
            f"{row['temp_mib']:9.2f} MiB  compile {row['compile_s']:5.1f} s  "
            f"forward f-evals {row['forward_f_evals']}",
            flush=True,
        )
    for line in bench.ratio_lines(name, rows, PAIRS):
        print(line, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems", nargs="+", default=list(SETTINGS), choices=list(SETTINGS)
    )
    parser.add_argument("--max-steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", nargs="*", default=None, help="methods whose name contains a word"
    )
    parser.add_argument(
        "--closure",
        action="store_true",
        help="f closes over the parameters (as an Equinox model's fields) instead "
        "of taking them as args",
    )
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    rows = []
    for name in args.problems:
        rows += run_problem(name, args)
    meta = bench.run_metadata(
        benchmark="adaptive",
        max_steps=args.max_steps,
        closure=args.closure,
        settings=str(SETTINGS),
    )
    print(json.dumps(meta))
    if args.out is not None:
        bench.write_results(args.out, "adaptive.json", meta, rows)


if __name__ == "__main__":
    main()
