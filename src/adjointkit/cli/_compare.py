"""`adjointkit compare`: what each adjoint costs and gives, measured here."""

import contextlib
import logging
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import benchmarking as bench
from .._compat import enable_x64
from ._common import unwritable


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
        # Runs the problem's solver wrapped in `Reversible` (see the runners).
        "reversible": ak.ReversibleAdjoint(),
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


def _adjoints_for(steps: int) -> dict:
    ours = {k: ("adjointkit", v) for k, v in _adjointkit_adjoints(steps).items()}
    theirs = {k: ("diffrax", v) for k, v in _diffrax_adjoints(steps).items()}
    return {**ours, **theirs}


# Constant Tsit5 step counts when --steps is not given, per problem: (with --quick,
# without). A step fine for one problem is unstable for another, so each problem
# has its own; tests/test_cli.py checks that each problem can take them.
DEFAULT_STEPS = {
    # t in [0, 1] through a tanh MLP: smooth, and accurate from 10 steps on.
    "neural_ode": ((10, 20), (50, 200)),
    # t in [0, 10] from (10, 1): in the prey's growth phases the Jacobian's
    # eigenvalues reach |lambda| ~ 5.1. Measured, in float32 and float64 alike:
    # with N <= 39 steps (h >= 0.256) Tsit5's state blows up to inf/NaN; N = 40
    # (h |lambda| ~ 1.3) stays finite, but its gradient is ~90x too large, and at
    # N = 50 still 5% off. From N = 100 (h |lambda| ~ 0.5, well inside the stable
    # range) every adjoint's gradient is within 0.4% of the float64 reference,
    # within ~1e-4 at N = 200 and at float32's rounding (~1e-6) at N = 400.
    "lotka_volterra": ((100, 200), (100, 400)),
    # The stiff problems are measured with adaptive steps only: constant Tsit5
    # steps would need h below ~1e-4 over t1 = 1e4 (Robertson), and constant
    # implicit steps miss the fast transients that the controller finds.
    "robertson": ((), ()),
    "van_der_pol": ((), ()),
    "stiff_neural_ode": ((), ()),
}


def _steps_help() -> str:
    defaults = "; ".join(
        f"{name} {' '.join(map(str, full))} (--quick: {' '.join(map(str, quick))})"
        for name, (quick, full) in DEFAULT_STEPS.items()
        if full
    )
    adaptive_only = ", ".join(n for n, (_, full) in DEFAULT_STEPS.items() if not full)
    return (
        f"numbers of constant Tsit5 steps (default, per problem: {defaults}; "
        f"{adaptive_only}: adaptive steps only)"
    )


# The adaptive setting (Tsit5 under PIDController, rtol = atol) run after the
# constant steps when --rtol is not given, per problem. compare solves both
# problems in float32 (machine epsilon 1.2e-7), so 1e-6, about 8 epsilons, is
# about the tightest tolerance whose error estimate still stands above rounding
# (benchmarks/adaptive.py's 1e-6 for Lotka-Volterra is in float64; its 1e-5 for
# the Neural ODE leaves a gradient error 100x the constant rows' here). Measured
# in float32 against compare's float64 reference, alike with and without
# --quick. An adaptive row takes no more steps than a constant one, so it adds to
# a run about what one more --steps value would (--quick stays quick):
DEFAULT_RTOL = {
    # 5 steps, none rejected (Diffrax's controller: 6); gradient
    # error ~1e-6 for the discrete adjoints, up to ~1e-5 for the continuous ones,
    # against ~2e-7 (float32's floor) for the constant rows. rtol 1e-5: 4 steps,
    # ~2e-5; 1e-7 is below float32's resolution of a state of size ~1.
    "neural_ode": 1e-6,
    # ~103 steps accepted and ~20 rejected; gradient error ~1.5e-4 for the
    # discrete adjoints and backsolve (~1.3e-3 for the interpolating ones: their
    # Hermite interpolation of the forward solution), against ~2e-3 for constant
    # N = 100 at about the same cost. rtol 1e-5: 69 steps, ~7e-4; 1e-4: 45
    # steps, ~1e-2; 1e-3: O(1) off.
    "lotka_volterra": 1e-6,
    # The stiff problems: Kvaerno5 in float64 (atol = 1e-4 rtol for Robertson,
    # whose y2 is ~1e-5). Robertson over [0, 1e4] at 1e-6: ~50 steps, gradient
    # error ~1e-6 (measured). Van der Pol over [0, 1000] crosses its fast jump
    # at t ~ 807, whose time depends on mu: at 1e-6 every solver's gradient
    # with respect to mu is O(1) off (Kvaerno5 2.7x the reference, Rodas5 1.8x,
    # Diffrax's Kvaerno5 0.3x); at 1e-8, ~300 steps and 5% (Kvaerno5), 0.03%
    # (Rodas5), 0.2% (Diffrax, ~3000 steps, half rejected).
    "robertson": 1e-6,
    "van_der_pol": 1e-8,
    # Decay rates up to 1e4 over [0, 1]: ~50 Kvaerno5 steps at 1e-6, gradient
    # error ~4e-7 for the discrete adjoints and ~3e-4 for the interpolating ones
    # (benchmarks/stiff.py, measured against a Rodas5 solve at 1e-10).
    "stiff_neural_ode": 1e-6,
}

# Adjoints a problem's default run leaves out, and why (printed when it does;
# --adjoints runs them anyway).
SKIPPED = {
    "stiff_neural_ode": {
        # Backsolve's backward solve is implicit in (y, a, a_theta): 1680
        # components with the MLP's 1616 parameters, a dense Jacobian and LU of
        # that size per step, following y backward through decay rates up to 1e4.
        # Neither library's Backsolve finished within 20 minutes on a 2-core CPU
        # (2026-12-03). InterpolatedAdjoint and QuadratureAdjoint keep a_theta out
        # of the implicit solve.
        name: "its implicit backward solve carries the parameters' cotangents, "
        "a dense 1680-wide Jacobian per step: it did not finish in 20 minutes"
        for name in ("backsolve", "diffrax-backsolve")
    },
}


def _rtol_help() -> str:
    defaults = "; ".join(f"{name} {r:g}" for name, r in DEFAULT_RTOL.items())
    return (
        "tolerances (rtol = atol) of the adaptive Tsit5 runs that follow the "
        f"constant steps (default, per problem: {defaults}); --rtol with no value "
        "runs constant steps only. The stiff problems (robertson, van_der_pol, "
        "stiff_neural_ode) run Kvaerno5 in float64 with adaptive steps only "
        "(robertson: atol = 1e-4 rtol)"
    )


# Adaptive runs may take this many steps at most; it sizes the buffers of the
# adjoints that keep every step (the interpolating ones; DirectAdjoint only for
# SaveAt(steps=True) or dense output, its loop's memory hardly depends on it).
ADAPTIVE_MAX_STEPS = 1024
# The stiff problems' bound: Diffrax's Kvaerno5 takes ~3000 steps (half of them
# rejected) on van der Pol at 1e-8, where adjointkit's takes ~300.
STIFF_MAX_STEPS = 4096


def _max_steps(problem: bench.BenchProblem) -> int:
    return STIFF_MAX_STEPS if problem.stiff else ADAPTIVE_MAX_STEPS


def add_parser(sub):
    p = sub.add_parser(
        "compare",
        help="measure every adjoint on one problem: time, memory, accuracy",
        description=(
            "Measure forward time, value-and-grad time, XLA temp memory, "
            "f-evaluations and gradient error of every adjoint (and Diffrax's, when "
            "installed) on one problem, side by side in one run. Writes a table, "
            "results.json and PNG plots."
        ),
    )
    p.add_argument("--problem", default="neural_ode", choices=sorted(bench.PROBLEMS))
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help=_steps_help(),
    )
    p.add_argument(
        "--rtol",
        type=float,
        nargs="*",
        default=None,
        metavar="R",
        help=_rtol_help(),
    )
    p.add_argument(
        "--adjoints",
        nargs="+",
        default=None,
        metavar="NAME",
        help="which adjoints to run (default: all available)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small problem, fewer repeats (a few minutes on a laptop CPU)",
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("compare-results"),
        metavar="DIR",
        help="where results.json and the plots go (default: ./compare-results)",
    )
    p.set_defaults(run=run)
    return p


def _problem(name: str, quick: bool) -> bench.BenchProblem:
    if name == "neural_ode":
        size = dict(state=8, width=32, batch=16) if quick else dict(width=64, batch=64)
        return bench.neural_ode(**size)
    return bench.PROBLEMS[name]()


def _precision(problem: bench.BenchProblem):
    """JAX's 64-bit types on for a float64 problem (the stiff ones); the caller's
    setting, untouched, for the others."""
    return enable_x64(True) if problem.x64 else contextlib.nullcontext()


def _solve_failure(problem: bench.BenchProblem, steps: int, rtol) -> str | None:
    """Why Tsit5 cannot solve `problem` with `steps` constant steps (or, with
    `rtol`, adaptive ones, at most `steps`), in words, or `None` when it can.

    One forward solve, so that steps too large for the problem are reported in a
    line before the run starts, not as a runtime error from inside a measurement.
    """
    import adjointkit as ak

    @jax.jit
    def outcome(params):
        sol = bench.adjointkit_solve(problem, params, steps, rtol, throw=False)
        return sol.result, jnp.isfinite(problem.loss(sol.ys[-1]))

    result, finite_loss = outcome(problem.params)
    successful = result == ak.RESULTS.successful
    if problem.stiff:
        setting = (
            f"--rtol {rtol:g}: {problem.solver} with adaptive steps (at most {steps})"
        )
        hint = "try another --rtol"
    elif rtol is None:
        dt = (problem.t1 - problem.t0) / steps
        setting = f"--steps {steps}: Tsit5 with {steps} constant steps (dt = {dt:.3g})"
        defaults = " ".join(map(str, DEFAULT_STEPS[problem.name][1]))
        hint = f"take more steps (the defaults for {problem.name}: {defaults})"
    else:
        setting = f"--rtol {rtol:g}: Tsit5 with adaptive steps (at most {steps})"
        hint = "try a tighter --rtol"
    if result == ak.RESULTS.nonfinite_state:
        return f"{setting} drives the {problem.name} state to inf/NaN; {hint}"
    if not successful:
        return f"{setting} cannot solve {problem.name}: {ak.RESULTS[result]}"
    if not finite_loss:
        return f"{setting} gives {problem.name} a loss that is inf/NaN; {hint}"
    return None


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree,
    )


def _reference_grad(problem: bench.BenchProblem):
    """Float64 gradient from Dopri8 with many constant steps: accurate to near
    rounding for these smooth problems, whatever adjoint is being judged. For the
    stiff ones, from the forward sensitivity equations solved by Rodas5 at rtol
    1e-12 (no adjoint involved; see `benchmarking.sensitivity_grad`), except the
    stiff Neural ODE, whose sensitivity system (n (p + 1) = 51,744 components) is
    too large for Rodas5's dense Jacobian: there, the gradient of a Rodas5 solve
    at rtol 1e-10 (`benchmarking.tight_grad`), four orders of magnitude tighter
    than the Kvaerno5 solves judged."""
    import adjointkit as ak

    if problem.name == "stiff_neural_ode":
        return bench.tight_grad(problem, rtol=1e-10)
    if problem.stiff:
        return bench.sensitivity_grad(problem, rtol=1e-12)

    with enable_x64(True):
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


def _steps_taken(problem, steps, rtol, adjoint, library) -> tuple[int, int]:
    """`(accepted, rejected)`: the steps one forward solve of the row takes.

    With constant steps, `(steps, 0)` without solving. With adaptive ones, from
    the solve's own statistics (its `adjoint` included, so that the count is that
    of the row's forward pass), since the number is the controller's choice.
    """
    if rtol is None:
        return steps, 0
    solve = bench.adjointkit_solve if library == "adjointkit" else bench.diffrax_solve

    @jax.jit
    def counts(params):
        stats = solve(problem, params, steps, rtol, adjoint=adjoint).stats
        return stats["num_accepted_steps"], stats["num_rejected_steps"]

    accepted, rejected = counts(problem.params)
    return int(accepted), int(rejected)


def _measure(problem, steps, rtol, adjoint, library, repeats):
    make = bench.adjointkit_loss if library == "adjointkit" else bench.diffrax_loss
    forward = make(problem, adjoint, steps, rtol)

    def loss(p):
        return forward(p)[0]

    # Compile each once: the compiled value-and-grad is both timed and measured.
    fwd = jax.jit(forward).lower(problem.params).compile()
    vg = jax.jit(jax.value_and_grad(loss)).lower(problem.params).compile()
    # Before anything else runs vg, so that its peak is its own where it can be.
    peak, peak_exact = bench.device_peak_bytes(vg, problem.params)
    t_fwd = bench.time_call(fwd, problem.params, repeats=repeats)
    t_vg = bench.time_call(vg, problem.params, repeats=repeats)
    _, grad = vg(problem.params)
    forward_evals = fwd(problem.params)[1]
    if forward_evals is None or problem.stiff:
        # Diffrax reports no count for its implicit solvers: count both libraries
        # alike by watching f, where a Jacobian (jacfwd, one vmapped evaluation)
        # counts once, as do the Newton iterations' evaluations each.
        forward_evals = bench.count_f_evals(
            lambda counted: lambda p: make(counted, adjoint, steps, rtol)(p)[0],
            problem,
            problem.params,
        )
    forward_evals = int(forward_evals)
    # Counted in a separate, untimed run that watches f (alike for both libraries).
    gradient_evals = bench.count_f_evals(
        lambda counted: jax.grad(lambda p: make(counted, adjoint, steps, rtol)(p)[0]),
        problem,
        problem.params,
    )
    accepted, rejected = _steps_taken(problem, steps, rtol, adjoint, library)
    return dict(
        forward_s=t_fwd,
        value_and_grad_s=t_vg,
        ratio=t_vg / t_fwd,
        temp_bytes=int(vg.memory_analysis().temp_size_in_bytes),
        device_peak_bytes=peak,
        device_peak_exact=peak_exact,
        forward_f_evals=forward_evals,
        backward_f_evals=gradient_evals - forward_evals,
        steps_taken=accepted,
        rejected_steps=rejected,
    ), grad


# The fields of a row that a method which fails has no figures for.
_FIGURES = (
    "forward_s",
    "value_and_grad_s",
    "ratio",
    "temp_bytes",
    "device_peak_bytes",
    "forward_f_evals",
    "backward_f_evals",
    "steps_taken",
    "rejected_steps",
    "grad_rel_error",
)


def _failure_reason(error: Exception) -> str:
    """The first sentence of what went wrong, without the traceback a runtime
    error from inside a compiled program carries: e.g. "The maximum number of
    solver steps was reached."."""
    text = str(error)
    found = re.search(r"EquinoxRuntimeError: (.+)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    line = re.split(r"(?<=\.) ", line.strip(), maxsplit=1)[0]
    return f"{type(error).__name__}: {line}" if not found else line


@contextlib.contextmanager
def _quiet_callbacks():
    """JAX logs the traceback of an error raised in a callback (Equinox's runtime
    errors are) before raising it: a failed method is reported in a line of the
    table instead."""
    logger = logging.getLogger("jax._src.callback")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fail(message: str) -> int:
    print(f"adjointkit compare: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    quick_steps, full_steps = DEFAULT_STEPS[args.problem]
    adaptive_only = not full_steps
    if adaptive_only and (args.steps or args.rtol == []):
        return _fail(
            f"{args.problem} is measured with adaptive steps only: drop --steps "
            "and give --rtol a value (or leave it out)"
        )
    steps_list = args.steps or list(quick_steps if args.quick else full_steps)
    if any(n < 1 for n in steps_list):
        return _fail("--steps must be positive integers")
    rtols = [DEFAULT_RTOL[args.problem]] if args.rtol is None else args.rtol
    if any(not (0 < r < 1) for r in rtols):
        return _fail("--rtol must be in (0, 1)")
    available = _adjoints_for(steps_list[0] if steps_list else STIFF_MAX_STEPS)
    if adaptive_only:
        # The stiff problems' implicit solvers have no reversible form.
        available.pop("reversible")
    skipped = SKIPPED.get(args.problem, {})
    names = args.adjoints or [n for n in available if n not in skipped]
    unknown = [n for n in names if n not in available]
    if unknown:
        return _fail(f"unknown adjoint(s) {unknown}; available: {sorted(available)}")
    if not args.adjoints:
        for name, why in skipped.items():
            if name in available:
                print(
                    f"adjointkit compare: {args.problem} leaves out {name} ({why}); "
                    "name it with --adjoints to run it anyway",
                    file=sys.stderr,
                )
    # Before any work: a finished table is lost if it cannot be written.
    why = unwritable("--out", args.out)
    if why is not None:
        return _fail(why)

    problem = _problem(args.problem, args.quick)
    with _precision(problem):
        return _run(args, problem, names, steps_list, rtols)


def _run(args, problem, names, steps_list, rtols) -> int:
    repeats = 3 if args.quick else 10
    # (label, steps, rtol) per setting: constant steps first, then adaptive ones.
    settings = [(str(n), n, None) for n in steps_list]
    settings += [(f"rtol {r:g}", _max_steps(problem), r) for r in rtols]
    for _, steps, rtol in settings:
        why = _solve_failure(problem, steps, rtol)
        if why is not None:
            return _fail(why)
    jobs = [(s, name) for s in settings for name in names]
    rows = []
    with _Progress(len(jobs) + 1) as progress:
        progress.start("float64 reference gradient")
        reference = _reference_grad(problem)
        progress.done()
        for (label, steps, rtol), name in jobs:
            progress.start(f"{name} at {label}")
            library, adjoint = _adjoints_for(steps)[name]
            try:
                with _quiet_callbacks():
                    row, grad = _measure(
                        problem, steps, rtol, adjoint, library, repeats
                    )
            except Exception as error:  # e.g. an adjoint unstable on a stiff problem
                row = dict.fromkeys(_FIGURES)
                row.update(failed=_failure_reason(error), device_peak_exact=False)
            else:
                row.update(failed=None, grad_rel_error=_rel_error(grad, reference))
            row.update(
                adjoint=name,
                library=library,
                steps=steps if rtol is None else None,
                rtol=rtol,
                setting=label,
            )
            rows.append(row)
            if row["failed"] is not None:
                progress.done(f"failed: {row['failed']}")
                continue
            taken = "" if rtol is None else f"{_steps_label(row)} steps, "
            progress.done(
                f"{taken}v+g {1e3 * row['value_and_grad_s']:.2f} ms, "
                f"temp {row['temp_bytes'] / 2**20:.2f} MiB, "
                f"grad rel err {row['grad_rel_error']:.2e}"
            )
    _print_table(rows, problem.name)
    meta = bench.run_metadata(
        benchmark="compare",
        problem=problem.name,
        quick=args.quick,
        # The problem's size: state (shape, components, dtype) and parameters.
        **bench.problem_size(problem),
        t0=problem.t0,
        t1=problem.t1,
        # The settings measured: constant step counts, then tolerances.
        steps=list(steps_list),
        rtols=list(rtols),
        adaptive_max_steps=_max_steps(problem),
        solver=problem.solver,
        float64=bool(problem.x64),
    )
    bench.write_results(args.out, "results.json", meta, rows)
    plots = _plot(rows, args.out, meta)
    written = ", ".join(str(p) for p in [args.out / "results.json", *plots])
    print(f"wrote {written}")
    return 0


class _Progress:
    """Progress on stderr: a rich bar where stderr is a terminal; elsewhere (a pipe,
    a file, a CI log) or without rich, one line per finished task, flushed at once,
    so that a log shows how far a long run has got (a bar there shows nothing)."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        self._bar, self._finished, self._description = None, 0, ""
        self._started = time.perf_counter()
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return self
        console = Console(stderr=True)
        if console.is_interactive:  # a terminal that redraws a bar in place
            self._bar = Progress(
                TextColumn("{task.description:40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("compare", total=self.total)
        return self

    def start(self, description: str):
        """A task begins (shown on the bar)."""
        self._description = description
        self._started = time.perf_counter()
        if self._bar is not None:
            from rich.markup import escape  # rich reads "[...]" in a label as markup

            self._bar.update(self._task, description=escape(description))

    def done(self, result: str = ""):
        """The task begun last has finished, with `result` to show in a log."""
        self._finished += 1
        if self._bar is not None:
            self._bar.advance(self._task)
            return
        seconds = time.perf_counter() - self._started
        line = f"  [{self._finished}/{self.total}] {self._description}"
        line += f": {result}" if result else ""
        print(f"{line} ({seconds:.1f} s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def _steps_label(row) -> str:
    """The steps a row's forward solve took: N with constant steps; with adaptive
    ones the accepted steps, and the rejected ones after them where there were
    any."""
    rejected = row["rejected_steps"]
    return f"{row['steps_taken']}" + (f" (+{rejected} rej)" if rejected else "")


def _print_table(rows, problem_name):
    headers = [
        "adjoint",
        "N / rtol",
        "steps taken",
        "fwd ms",
        "v+g ms",
        "v+g/fwd",
        "temp MiB",
        "fwd f-evals",
        "bwd f-evals",
        "grad rel err",
    ]
    failed = [r for r in rows if r.get("failed")]
    lines = [
        [r["adjoint"], r["setting"], "failed", *["-"] * (len(headers) - 3)]
        if r.get("failed")
        else [
            r["adjoint"],
            r["setting"],
            _steps_label(r),
            f"{1e3 * r['forward_s']:.2f}",
            f"{1e3 * r['value_and_grad_s']:.2f}",
            f"{r['ratio']:.2f}",
            f"{r['temp_bytes'] / 2**20:.2f}",
            str(r["forward_f_evals"]),
            str(r["backward_f_evals"]),
            f"{r['grad_rel_error']:.2e}",
        ]
        for r in rows
    ]
    if any(r["device_peak_bytes"] is not None for r in rows):
        # A GPU: the allocator's peak too ("<=": an earlier, larger run set it).
        headers.insert(7, "peak MiB")
        for line, r in zip(lines, rows, strict=True):
            if r.get("failed"):
                line.insert(7, "-")
                continue
            bound = "" if r["device_peak_exact"] else "<= "
            line.insert(7, f"{bound}{r['device_peak_bytes'] / 2**20:.1f}")
    # A rule between the constant-step rows and the adaptive ones, which follow.
    section_ends = {
        i
        for i in range(len(rows) - 1)
        if rows[i]["rtol"] is None and rows[i + 1]["rtol"] is not None
    }
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # Every string goes through escape: rich reads "[...]" in one as markup.
        title = f"adjointkit compare: {problem_name} ({jax.default_backend()})"
        table = Table(title=escape(title))
        for h in headers:
            table.add_column(
                h, justify="left" if h == "adjoint" else "right", no_wrap=True
            )
        for i, line in enumerate(lines):
            table.add_row(*map(escape, line), end_section=i in section_ends)
        console = Console()
        if not console.is_terminal:  # a log or a pipe: never squeeze the table
            console = Console(width=160)
        console.print(table)
        for r in failed:
            console.print(escape(_failure_line(r)), soft_wrap=True)
    except ImportError:
        widths = [
            max(len(h), *(len(line[i]) for line in lines))
            for i, h in enumerate(headers)
        ]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for i, line in enumerate(lines):
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
            if i in section_ends:
                print()
        for r in failed:
            print(_failure_line(r))


def _failure_line(row) -> str:
    return f"{row['adjoint']} at {row['setting']} failed: {row['failed']}"


def _plot(rows, out: pathlib.Path, meta: dict) -> list[pathlib.Path]:
    """compare's figures (`benchmarking._plots.compare_figures`: memory against
    time, memory and time against steps, gradient error against time), or none,
    with a line that says why, where matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "adjointkit compare: matplotlib is not installed, so no plots "
            "(pip install 'adjointkit[bench]')",
            file=sys.stderr,
        )
        return []
    from ..benchmarking._plots import compare_figures

    return compare_figures(rows, meta, out)
