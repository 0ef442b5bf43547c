"""Forward-solve time: adjointkit against Diffrax, side by side in one run.

Tsit5 with N constant steps on the Neural ODE of DESIGN §4 (MLP 32→128→128→32,
tanh, batch 256, float32, t in [0, 1]). Both libraries solve the same problem in
the same process; the figure that matters is the ratio.

    python benchmarks/forward.py                       # DESIGN §4 sizes, N = 100, 1000
    python benchmarks/forward.py --batch 64 --width 64 --steps 100 --out results/
"""

import argparse
import json
import pathlib

import diffrax
import jax

import adjointkit as ak
from adjointkit import benchmarking as bench


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()

    problem = bench.neural_ode(state=args.state, width=args.width, batch=args.batch)
    rows = []
    for n in args.steps:
        # The shared runners, each with its library's default adjoint (a forward
        # solve alone does not store anything for it): solve, then the loss.
        ak_forward = jax.jit(
            bench.adjointkit_loss(problem, ak.CheckpointedAdjoint(), n)
        )
        dfx_forward = jax.jit(
            bench.diffrax_loss(problem, diffrax.RecursiveCheckpointAdjoint(), n)
        )

        # Interleave the two so that drifts in machine load hit both alike.
        t_ak, t_dfx = [], []
        for _ in range(3):
            t_ak.append(
                bench.time_call(ak_forward, problem.params, repeats=args.repeats)
            )
            t_dfx.append(
                bench.time_call(dfx_forward, problem.params, repeats=args.repeats)
            )
        row = dict(steps=n, adjointkit_ms=1e3 * min(t_ak), diffrax_ms=1e3 * min(t_dfx))
        row["ratio"] = row["adjointkit_ms"] / row["diffrax_ms"]
        rows.append(row)
        print(
            f"N={n:6d}  adjointkit {row['adjointkit_ms']:9.2f} ms   diffrax "
            f"{row['diffrax_ms']:9.2f} ms   ratio {row['ratio']:.3f}"
        )

    meta = bench.run_metadata(
        benchmark="forward", batch=args.batch, width=args.width, state=args.state
    )
    print(json.dumps(meta))
    if args.out is not None:
        bench.write_results(args.out, "forward.json", meta, rows)


if __name__ == "__main__":
    main()
