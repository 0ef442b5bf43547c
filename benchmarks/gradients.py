"""Value-and-grad time and memory: adjointkit's discrete adjoints against Diffrax's,
side by side in one run.

Tsit5 with N constant steps on the Neural ODE of DESIGN §4 (MLP 32→128→128→32,
tanh, batch 256, float32, t in [0, 1], loss mean(y(1)²)). Memory is XLA's temp
bytes of the compiled value-and-grad (DESIGN §3). Compared pairs:

- each library's default: `CheckpointedAdjoint()` (BinomialCheckpoints, c from N)
  against `RecursiveCheckpointAdjoint()`;
- the same number of checkpoints: `BinomialCheckpoints(c)` with Diffrax's c;
- every state kept: `AllSteps()` against `RecursiveCheckpointAdjoint(checkpoints=N)`.

    python benchmarks/gradients.py                          # N = 100, 1000
    python benchmarks/gradients.py --steps 100 1000 10000 --out results/
"""

import argparse
import json
import pathlib

import diffrax
import jax

import adjointkit as ak
from adjointkit import benchmarking as bench


def methods(n: int):
    c = bench.diffrax_default_checkpoints(n)
    k = max(1, round(n**0.5))
    return {
        "ak CheckpointedAdjoint()": ("adjointkit", ak.CheckpointedAdjoint()),
        f"ak BinomialCheckpoints({c})": (
            "adjointkit",
            ak.CheckpointedAdjoint(ak.BinomialCheckpoints(c)),
        ),
        "ak AllSteps()": ("adjointkit", ak.CheckpointedAdjoint(ak.AllSteps())),
        f"ak EveryKSteps({k})": (
            "adjointkit",
            ak.CheckpointedAdjoint(ak.EveryKSteps(k)),
        ),
        "dfx RecursiveCheckpointAdjoint()": (
            "diffrax",
            diffrax.RecursiveCheckpointAdjoint(),
        ),
        "dfx RecursiveCheckpointAdjoint(N)": (
            "diffrax",
            diffrax.RecursiveCheckpointAdjoint(checkpoints=n),
        ),
    }


PAIRS = [
    ("defaults", "ak CheckpointedAdjoint()", "dfx RecursiveCheckpointAdjoint()"),
    ("same checkpoints", "ak BinomialCheckpoints", "dfx RecursiveCheckpointAdjoint()"),
    ("every state", "ak AllSteps()", "dfx RecursiveCheckpointAdjoint(N)"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()

    problem = bench.neural_ode(state=args.state, width=args.width, batch=args.batch)
    rows = []
    for n in args.steps:
        fns = {}
        for name, (library, adjoint) in methods(n).items():
            make = (
                bench.adjointkit_loss if library == "adjointkit" else bench.diffrax_loss
            )
            loss = make(problem, adjoint, n)
            value_and_grad = jax.value_and_grad(lambda p, loss=loss: loss(p)[0])
            fns[name] = jax.jit(value_and_grad)
            mib = bench.temp_bytes(value_and_grad, problem.params) / 2**20
            rows.append(dict(steps=n, method=name, temp_mib=mib, ms=None))
        # On a GPU, the allocator's peak: smallest temp memory first, so that each
        # run raises the (never falling) peak and the figure is its own.
        for row in sorted(
            (r for r in rows if r["steps"] == n), key=lambda r: r["temp_mib"]
        ):
            peak, exact = bench.device_peak_bytes(fns[row["method"]], problem.params)
            row["peak_mib"] = None if peak is None else peak / 2**20
            row["peak_exact"] = exact
        # Interleave the methods over rounds so that drifting load hits all alike.
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(
                    bench.time_call(fn, problem.params, repeats=args.repeats)
                )
        for row in rows:
            if row["steps"] == n:
                row["ms"] = 1e3 * min(times[row["method"]])
                peak = ""
                if row["peak_mib"] is not None:
                    bound = "" if row["peak_exact"] else "<="
                    peak = f"  device peak {bound}{row['peak_mib']:.1f} MiB"
                print(
                    f"N={n:6d}  {row['method']:36s} {row['ms']:10.1f} ms "
                    f"{row['temp_mib']:9.2f} MiB{peak}",
                    flush=True,
                )
        by_name = {r["method"]: r for r in rows if r["steps"] == n}
        for label, ours, theirs in PAIRS:
            mine = next(r for m, r in by_name.items() if m.startswith(ours))
            ref = by_name[theirs]
            print(
                f"N={n:6d}  {label:18s} time {mine['ms'] / ref['ms']:.2f}x   "
                f"memory {mine['temp_mib'] / ref['temp_mib']:.2f}x  ({mine['method']} "
                f"vs {theirs})"
            )
    meta = bench.run_metadata(
        benchmark="gradients", batch=args.batch, width=args.width, state=args.state
    )
    print(json.dumps(meta))
    if args.out is not None:
        bench.write_results(args.out, "gradients.json", meta, rows)


if __name__ == "__main__":
    main()
