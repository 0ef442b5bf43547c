"""ReversibleAdjoint against Diffrax's RecursiveCheckpointAdjoint and
BacksolveAdjoint, side by side in one run.

The Neural ODE of DESIGN §4 (MLP 32→128→128→32, tanh, batch 256, float32, t in
[0, 1], loss mean(y(1)²)): adjointkit solves it with `Reversible(Tsit5())` and
`ReversibleAdjoint()` (and with `recompute_stages=True`), Diffrax with `Tsit5()`
and each of its two adjoints; N constant steps, or adaptive steps (PID, rtol =
atol, at most `--max-steps`).
Reported: value+grad time (interleaved over rounds, best kept), XLA temp bytes
of the compiled value+grad (DESIGN §3), and the ratios the issue asks for:
time against `RecursiveCheckpointAdjoint()`, memory against `BacksolveAdjoint`.

    python benchmarks/reversible.py                      # N = 1000, and adaptive
    python benchmarks/reversible.py --steps 100 --batch 64 --rtol 0
    python benchmarks/reversible.py --closure   # parameters closed over by f
"""

import argparse
import json

import diffrax
import jax

import adjointkit as ak
from adjointkit import benchmarking as bench


def _ak_loss(problem, steps, rtol, closure, recompute_stages=False):
    def loss(params):
        # The parameters as args, or closed over by f (as an Equinox model's
        # weights are), the way benchmarking's runners pass them.
        if closure:
            f, f_args = (lambda t, y, args: problem.f(t, y, params)), None
        else:
            f, f_args = problem.f, params
        if rtol:
            options = dict(controller=ak.PIDController(rtol=rtol, atol=rtol))
        else:
            options = dict(dt0=(problem.t1 - problem.t0) / steps)
        sol = ak.solve(
            f, ak.Reversible(ak.Tsit5()), problem.t0, problem.t1,
            problem.y0, f_args, max_steps=steps,
            adjoint=ak.ReversibleAdjoint(recompute_stages=recompute_stages),
            **options,
        )  # fmt: skip
        return problem.loss(sol.ys[-1]), sol.stats["num_f_evals"]

    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rtol", type=float, nargs="*", default=[0.0, 1e-5])
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--closure",
        action="store_true",
        help="f closes over the parameters (as an Equinox model's fields) instead "
        "of taking them as args",
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    problem = bench.neural_ode(batch=args.batch)
    for rtol in args.rtol:
        steps = args.steps if not rtol else args.max_steps
        losses = {
            "ak ReversibleAdjoint()": _ak_loss(
                problem, steps, rtol or None, args.closure
            ),
            "ak ReversibleAdjoint(recompute_stages=True)": _ak_loss(
                problem, steps, rtol or None, args.closure, recompute_stages=True
            ),
            "dfx RecursiveCheckpointAdjoint()": bench.diffrax_loss(
                problem,
                diffrax.RecursiveCheckpointAdjoint(),
                steps,
                rtol or None,
                closure=args.closure,
            ),
        }
        if not args.closure:
            # Diffrax's BacksolveAdjoint cannot differentiate parameters that a
            # plain function closes over (JAX's custom_vjp refuses closed-over
            # values): with --closure it is left out, and so is the ratio.
            losses["dfx BacksolveAdjoint"] = bench.diffrax_loss(
                problem, diffrax.BacksolveAdjoint(), steps, rtol or None
            )
        fns, rows = {}, {}
        for name, loss in losses.items():
            value_and_grad = jax.value_and_grad(lambda p, loss=loss: loss(p)[0])
            fns[name] = jax.jit(value_and_grad)
            mib = bench.temp_bytes(value_and_grad, problem.params) / 2**20
            evals = int(jax.jit(loss)(problem.params)[1])
            rows[name] = dict(temp_mib=mib, evals=evals, ms=[])
        for _ in range(args.rounds):
            for name, fn in fns.items():
                rows[name]["ms"].append(
                    1e3 * bench.time_call(fn, problem.params, repeats=args.repeats)
                )
        label = f"N={steps}" if not rtol else f"PID rtol={rtol:g}"
        for name, row in rows.items():
            print(
                f"{label:16s} {name:44s} {min(row['ms']):10.1f} ms "
                f"{row['temp_mib']:8.2f} MiB  {row['evals']:6d} f evals",
                flush=True,
            )
        rca = rows["dfx RecursiveCheckpointAdjoint()"]
        back = rows.get("dfx BacksolveAdjoint")
        for name, ours in rows.items():
            if not name.startswith("ak "):
                continue
            memory = (
                "-" if back is None else f"{ours['temp_mib'] / back['temp_mib']:.2f}x"
            )
            print(
                f"{label:16s} {name[3:]:42s} time "
                f"{min(ours['ms']) / min(rca['ms']):.2f}x "
                f"RecursiveCheckpointAdjoint(); memory {memory} BacksolveAdjoint",
                flush=True,
            )
    print(
        json.dumps(
            bench.run_metadata(
                benchmark="reversible", batch=args.batch, closure=args.closure
            )
        )
    )


if __name__ == "__main__":
    main()
