"""`adjointkit compare`: what each adjoint costs and gives, measured here."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from .. import benchmarking as bench


def _adjointkit_adjoints(steps: int):
    import adjointkit as ak

    k = max(1, round(steps**0.5))
    return {
        "checkpointed": ak.CheckpointedAdjoint(),
        "checkpointed-allsteps": ak.CheckpointedAdjoint(ak.AllSteps()),
        "checkpointed-every-k": ak.CheckpointedAdjoint(ak.EveryKSteps(k)),
        "direct": ak.DirectAdjoint(),
        "backsolve": ak.BacksolveAdjoint(),
        "interpolated": ak.InterpolatedAdjoint(),
        "interpolated-every-k": ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(k)),
        "quadrature": ak.QuadratureAdjoint(),
    }


def _diffrax_adjoints(steps: int):
    try:
        import diffrax
    except ImportError:
        return {}
    return {
        "diffrax-recursive": diffrax.RecursiveCheckpointAdjoint(),
        "diffrax-recursive-all": diffrax.RecursiveCheckpointAdjoint(checkpoints=steps),
        "diffrax-direct": diffrax.DirectAdjoint(),
        "diffrax-backsolve": diffrax.BacksolveAdjoint(),
    }


def add_parser(sub):
    p = sub.add_parser(
        "compare",
        help="measure every adjoint on one problem: time, memory, accuracy",
        description=(
            "Measure forward time, value-and-grad time, XLA temp memory, "
            "f-evaluations and gradient error of every adjoint (and Diffrax's, when "
            "installed) on one problem, side by side in one run."
        ),
    )
    p.add_argument("--problem", default="neural_ode", choices=sorted(bench.PROBLEMS))
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="numbers of constant Tsit5 steps (default: 100)",
    )
    p.add_argument(
        "--adjoints",
        nargs="+",
        default=None,
        metavar="NAME",
        help="which adjoints to run (default: all available)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a small problem, fewer repeats"
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        metavar="DIR",
        help="write results.json here",
    )
    p.set_defaults(run=run)
    return p


def _problem(name: str, quick: bool) -> bench.BenchProblem:
    if name == "neural_ode":
        size = dict(state=8, width=32, batch=16) if quick else dict(width=64, batch=64)
        return bench.neural_ode(**size)
    return bench.PROBLEMS[name]()


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree,
    )


def _reference_grad(problem: bench.BenchProblem):
    """Float64 gradient from Dopri8 with many constant steps: accurate to near
    rounding for these smooth problems, whatever adjoint is being judged."""
    import adjointkit as ak

    with jax.enable_x64(True):
        params, y0 = _to64(problem.params), _to64(problem.y0)
        n = 400

        def loss(p):
            sol = ak.solve(
                problem.f,
                ak.Dopri8(),
                problem.t0,
                problem.t1,
                y0,
                p,
                dt0=(problem.t1 - problem.t0) / n,
                max_steps=n,
            )
            return problem.loss(sol.ys[-1])

        grad = jax.jit(jax.grad(loss))(params)
        return jax.tree_util.tree_map(np.asarray, grad)


def _rel_error(grad, ref) -> float:
    g = np.concatenate(
        [np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(grad)]
    )
    r = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(ref)])
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))


def _measure(problem, steps, adjoint, library, repeats):
    make = bench.adjointkit_loss if library == "adjointkit" else bench.diffrax_loss
    forward = make(problem, adjoint, steps)

    def loss(p):
        return forward(p)[0]

    fwd = jax.jit(forward)
    vg = jax.jit(jax.value_and_grad(loss))
    t_fwd = bench.time_call(fwd, problem.params, repeats=repeats)
    t_vg = bench.time_call(vg, problem.params, repeats=repeats)
    mem = bench.temp_bytes(jax.value_and_grad(loss), problem.params)
    _, grad = vg(problem.params)
    f_evals = int(fwd(problem.params)[1])
    return dict(
        forward_s=t_fwd,
        value_and_grad_s=t_vg,
        ratio=t_vg / t_fwd,
        temp_bytes=mem,
        forward_f_evals=f_evals,
    ), grad


def run(args) -> int:
    steps_list = args.steps or ([20] if args.quick else [100])
    if any(n < 1 for n in steps_list):
        print("adjointkit compare: --steps must be positive integers", file=sys.stderr)
        return 2

    def adjoints_for(steps):
        ours = {k: ("adjointkit", v) for k, v in _adjointkit_adjoints(steps).items()}
        theirs = {k: ("diffrax", v) for k, v in _diffrax_adjoints(steps).items()}
        return {**ours, **theirs}

    available = adjoints_for(steps_list[0])
    names = args.adjoints or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(
            f"adjointkit compare: unknown adjoint(s) {unknown}; available: "
            f"{sorted(available)}",
            file=sys.stderr,
        )
        return 2
    problem = _problem(args.problem, args.quick)
    reference = _reference_grad(problem)
    repeats = 3 if args.quick else 10
    rows = []
    for steps in steps_list:
        for name in names:
            library, adjoint = adjoints_for(steps)[name]
            row, grad = _measure(problem, steps, adjoint, library, repeats)
            row.update(
                adjoint=name, steps=steps, grad_rel_error=_rel_error(grad, reference)
            )
            rows.append(row)
            print(f"  measured {name} at N={steps}", file=sys.stderr)
    _print_table(rows, problem.name)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = dict(
            problem=problem.name,
            backend=jax.default_backend(),
            device=str(jax.devices()[0]),
            jax=jax.__version__,
        )
        (args.out / "results.json").write_text(
            json.dumps(dict(meta=meta, rows=rows), indent=2)
        )
    return 0


def _print_table(rows, problem_name):
    headers = [
        "adjoint",
        "N",
        "fwd ms",
        "v+g ms",
        "v+g/fwd",
        "temp MiB",
        "f-evals",
        "grad rel err",
    ]
    lines = [
        [
            r["adjoint"],
            str(r["steps"]),
            f"{1e3 * r['forward_s']:.2f}",
            f"{1e3 * r['value_and_grad_s']:.2f}",
            f"{r['ratio']:.2f}",
            f"{r['temp_bytes'] / 2**20:.2f}",
            str(r["forward_f_evals"]),
            f"{r['grad_rel_error']:.2e}",
        ]
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"adjointkit compare: {problem_name} ({jax.default_backend()})"
        )
        for h in headers:
            table.add_column(
                h, justify="left" if h == "adjoint" else "right", no_wrap=True
            )
        for line in lines:
            table.add_row(*line)
        console = Console()
        if not console.is_terminal:  # a log or a pipe: never squeeze the table
            console = Console(width=160)
        console.print(table)
    except ImportError:
        widths = [
            max(len(h), *(len(line[i]) for line in lines))
            for i, h in enumerate(headers)
        ]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for line in lines:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
