"""Fit a Neural ODE to the spiral with optax, the adjoint chosen by object.

What it shows:

- an Equinox MLP as the vector field `dy/dt = mlp(y)`;
- `ak.solve(..., saveat=ak.SaveAt(ts=...), adjoint=...)` inside a jitted loss: the
  adjoint is an object you pass, here `InterpolatedAdjoint` with checkpoints every
  8 steps (swap in `ak.CheckpointedAdjoint()`, `ak.BacksolveAdjoint()`, ...: the
  rest of the script does not change);
- Adam from optax with a cosine-decaying rate, on windows of the classic spiral
  `y' = (y**3) A` (`adjointkit.benchmarking.spiral`, the data `adjointkit train`
  fits too);
- the learned field solved over the whole time span from `y(0)`, against the data
  (spiral_neural_ode.png).

    python examples/spiral_neural_ode.py           # about 30 s on a laptop CPU
    python examples/spiral_neural_ode.py --quick   # a few steps (the tests)
"""

import argparse
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import adjointkit as ak
from adjointkit import benchmarking as bench


class Field(eqx.Module):
    """The Neural ODE's vector field, applied to a batch of states `(batch, 2)`."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(
            2, 2, 64, depth=2, activation=jnp.tanh, dtype=jnp.float32, key=key
        )

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y)


def predict(model, y0, ts, adjoint):
    """The model's states at `ts` (from 0), one Tsit5 step between observations."""
    t1 = float(ts[-1])
    sol = ak.solve(
        model,
        ak.Tsit5(),
        0.0,
        t1,
        y0,
        dt0=t1 / (len(ts) - 1),
        saveat=ak.SaveAt(ts=ts),
        adjoint=adjoint,
    )
    return sol.ys


def main(quick: bool = False, out: pathlib.Path = pathlib.Path(".")):
    data = bench.spiral(window=40)  # windows of 40 observations, 1 time unit each
    steps, batch_size = (20, 16) if quick else (1500, 32)
    adjoint = ak.InterpolatedAdjoint(checkpoints=ak.EveryKSteps(8))

    model = Field(jax.random.PRNGKey(0))
    optimiser = optax.adam(optax.cosine_decay_schedule(1e-2, steps, alpha=0.05))
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))

    def loss(model, y0, targets):
        return jnp.mean((predict(model, y0, data.window_ts, adjoint) - targets) ** 2)

    @eqx.filter_jit
    def train_step(model, opt_state, y0, targets):
        value, grads = eqx.filter_value_and_grad(loss)(model, y0, targets)
        updates, opt_state = optimiser.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, value

    for step in range(steps):
        y0, targets = data.windows(
            data.batch_starts(seed=0, step=step, batch_size=batch_size)
        )
        model, opt_state, value = train_step(model, opt_state, y0, targets)
        if step % max(1, steps // 8) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(value):.3e}")

    # Extrapolate: the whole spiral from its first point, 25 time units.
    whole = predict(model, data.ys[:1], data.ts, ak.DirectAdjoint())[:, 0]
    error = float(jnp.sqrt(jnp.mean((whole - data.ys) ** 2)))
    print(f"the whole spiral from y(0): RMS error {error:.3f}")
    _plot(out / "spiral_neural_ode.png", data, np.asarray(whole))
    return error


def _plot(path, data, whole):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(*data.ys.T, "k.", ms=2, label="data")
    ax.plot(*whole.T, "C1", lw=1.5, label="Neural ODE from y(0)")
    ax.set_aspect("equal")
    ax.legend(loc="center", fontsize="small")
    ax.set_title("spiral: learned on 1-unit windows, solved over 25")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)
