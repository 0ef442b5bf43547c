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
        dt0 = (problem.t1 - problem.t0) / n

        @jax.jit
        def ak_forward(params, n=n, dt0=dt0):
            sol = ak.solve(
                problem.f,
                ak.Tsit5(),
                problem.t0,
                problem.t1,
                problem.y0,
                params,
                dt0=dt0,
                max_steps=n,
            )
            return sol.ys[-1]

        @jax.jit
        def dfx_forward(params, n=n, dt0=dt0):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(problem.f),
                diffrax.Tsit5(),
                problem.t0,
                problem.t1,
                dt0,
                problem.y0,
                params,
                max_steps=n,
            )
            return sol.ys[-1]

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
