"""Continuous adjoints: value-and-grad time, memory, backward f-evaluations and
gradient error, for rtol from 1e-3 to 1e-8, against Diffrax's BacksolveAdjoint (and
torchdiffeq's odeint_adjoint where installed), side by side in one run.

The Neural ODE of DESIGN §4 (size settable), float32, Tsit5 with a PID controller
(rtol = atol) forward and backward. The gradient error is the relative 2-norm
distance to a float64 reference (Dopri8, 400 constant steps, differentiated
exactly). Backward evaluations are counted by a host callback in the vector field,
for every library alike: all evaluations of a value-and-grad, less the forward
solve's.

    python benchmarks/continuous.py
    python benchmarks/continuous.py --batch 64 --width 64 --rtols 1e-3 1e-5 \
        --out results/
"""

import argparse
import functools
import json
import pathlib

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import adjointkit as ak
from adjointkit import benchmarking as bench


class _Counter:
    def __init__(self):
        self.count = 0

    def add(self, *_):
        self.count += 1


def _counted(f, counter):
    def field(t, y, args):
        jax.debug.callback(counter.add, t)
        return f(t, y, args)

    return field


def _ak_loss(problem, adjoint, rtol, max_steps, f=None):
    controller = ak.PIDController(rtol=rtol, atol=rtol)

    def loss(params):
        sol = ak.solve(
            f or problem.f, ak.Tsit5(), problem.t0, problem.t1, problem.y0, params,
            controller=controller, adjoint=adjoint, max_steps=max_steps,
        )  # fmt: skip
        return problem.loss(sol.ys[-1])

    return loss


def _dfx_loss(problem, rtol, max_steps, f=None):
    controller = diffrax.PIDController(rtol=rtol, atol=rtol)
    adjoint = diffrax.BacksolveAdjoint(
        solver=diffrax.Tsit5(), stepsize_controller=controller
    )

    def loss(params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f or problem.f), diffrax.Tsit5(), problem.t0, problem.t1,
            None, problem.y0, params, stepsize_controller=controller, adjoint=adjoint,
            max_steps=max_steps,
        )  # fmt: skip
        return problem.loss(sol.ys[-1])

    return loss


def _reference(problem):
    to64 = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda x: jnp.asarray(x, jnp.float64), tree
    )
    with jax.enable_x64(True):
        y0, params = to64(problem.y0), to64(problem.params)

        def loss(p):
            sol = ak.solve(
                problem.f, ak.Dopri8(), problem.t0, problem.t1, y0, p,
                dt0=(problem.t1 - problem.t0) / 400, max_steps=400,
            )  # fmt: skip
            return problem.loss(sol.ys[-1])

        return jax.tree_util.tree_map(np.asarray, jax.jit(jax.grad(loss))(params))


def _error(grad, reference) -> float:
    g = np.concatenate(
        [np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(grad)]
    )
    r = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(reference)])
    return float(np.linalg.norm(g - r) / np.linalg.norm(r))


def _evaluations(make_loss, problem):
    """Forward and backward evaluations of f, counted on the host."""
    counter = _Counter()
    loss = make_loss(_counted(problem.f, counter))
    jax.block_until_ready(jax.jit(loss)(problem.params))
    forward = counter.count
    counter.count = 0
    jax.block_until_ready(jax.jit(jax.grad(loss))(problem.params))
    return forward, counter.count - forward


def _torchdiffeq_row(problem, rtol, reference, repeats):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = [
        (torch.tensor(np.asarray(w), device=device, requires_grad=True),
         torch.tensor(np.asarray(b), device=device, requires_grad=True))
        for w, b in problem.params
    ]  # fmt: skip

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = torch.nn.ParameterList(
                [torch.nn.Parameter(x) for pair in layers for x in pair]
            )

        def forward(self, t, y):
            h = y
            n = len(self.params) // 2
            for i in range(n):
                h = h @ self.params[2 * i] + self.params[2 * i + 1]
                if i < n - 1:
                    h = torch.tanh(h)
            return h

    field = Field().to(device)
    y0 = torch.tensor(np.asarray(problem.y0), device=device)
    ts = torch.tensor([problem.t0, problem.t1], device=device)

    def value_and_grad():
        field.zero_grad()
        y1 = torchdiffeq.odeint_adjoint(
            field, y0, ts, rtol=rtol, atol=rtol, method="dopri5"
        )[-1]
        loss = torch.mean(y1**2)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return [p.grad.detach().cpu().numpy() for p in field.params]

    import time

    value_and_grad()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        grads = value_and_grad()
        times.append(time.perf_counter() - start)
    grads = [(grads[2 * i], grads[2 * i + 1]) for i in range(len(grads) // 2)]
    return dict(
        method="torchdiffeq odeint_adjoint (dopri5)",
        rtol=rtol,
        ms=1e3 * min(times),
        temp_mib=None,
        backward_f_evals=None,
        forward_f_evals=None,
        grad_error=_error(grads, reference),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rtols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    # The interpolating adjoints keep a buffer of max_steps steps for adaptive
    # solves (shapes are static in JAX): keep it near the steps actually taken.
    parser.add_argument("--max-steps", type=int, default=256)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()

    problem = bench.neural_ode(state=args.state, width=args.width, batch=args.batch)
    reference = _reference(problem)
    rows = []
    for rtol in args.rtols:
        adjoints = {
            "ak BacksolveAdjoint()": ak.BacksolveAdjoint(),
            "ak InterpolatedAdjoint()": ak.InterpolatedAdjoint(),
            "ak QuadratureAdjoint()": ak.QuadratureAdjoint(),
        }
        methods = {
            name: functools.partial(_ak_loss, problem, adjoint, rtol, args.max_steps)
            for name, adjoint in adjoints.items()
        }
        methods["dfx BacksolveAdjoint"] = functools.partial(
            _dfx_loss, problem, rtol, args.max_steps
        )
        for name, make_loss in methods.items():
            loss = make_loss()
            value_and_grad = jax.value_and_grad(loss)
            fn = jax.jit(value_and_grad)
            seconds = bench.time_call(fn, problem.params, repeats=args.repeats)
            _, grad = fn(problem.params)
            forward, backward = _evaluations(make_loss, problem)
            row = dict(
                method=name,
                rtol=rtol,
                ms=1e3 * seconds,
                temp_mib=bench.temp_bytes(value_and_grad, problem.params) / 2**20,
                forward_f_evals=forward,
                backward_f_evals=backward,
                grad_error=_error(grad, reference),
            )
            rows.append(row)
            print(
                f"rtol={rtol:.0e}  {name:28s} {row['ms']:9.1f} ms "
                f"{row['temp_mib']:8.2f} MiB  f-evals fwd {forward:5d} bwd "
                f"{backward:6d}  grad err {row['grad_error']:.2e}",
                flush=True,
            )
        torch_row = _torchdiffeq_row(problem, rtol, reference, args.repeats)
        if torch_row is not None:
            rows.append(torch_row)
            print(
                f"rtol={rtol:.0e}  {torch_row['method']:28s} {torch_row['ms']:9.1f} ms"
                f"  grad err {torch_row['grad_error']:.2e}",
                flush=True,
            )
        by = {r["method"]: r for r in rows if r["rtol"] == rtol}
        ours, theirs = by["ak BacksolveAdjoint()"], by["dfx BacksolveAdjoint"]
        ratio = ours["ms"] / theirs["ms"]
        print(f"rtol={rtol:.0e}  Backsolve time ratio (ak / Diffrax) {ratio:.2f}")
    meta = bench.run_metadata(
        benchmark="continuous",
        batch=args.batch,
        width=args.width,
        state=args.state,
        max_steps=args.max_steps,
    )
    print(json.dumps(meta))
    if args.out is not None:
        bench.write_results(args.out, "continuous.json", meta, rows)


if __name__ == "__main__":
    main()
