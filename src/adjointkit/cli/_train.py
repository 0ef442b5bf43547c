"""`adjointkit train`: fit a Neural ODE to the spiral with optax, the adjoint chosen
by name.

The model is an MLP vector field (Equinox); a training sample is a window of
consecutive observations of the spiral (`adjointkit.benchmarking.spiral`), solved
from its first observation with Tsit5, one constant step per observation, and
compared with all of them at `SaveAt(ts=...)` by mean squared error.

Determinism: the model is initialised from `--seed` and the batch of step `s` is a
pure function of `(seed, s)`, so a run resumed from a checkpoint takes exactly the
steps an uninterrupted run would have and ends with the same parameters, bit for
bit.

Data parallelism: the batch is sharded over a one-axis `jax.sharding.Mesh` of
`--devices` devices and the parameters and optimiser state are replicated; the
training step is one `jit`-compiled function whatever the number of devices, and
XLA inserts the reductions over the batch. With `--distributed`
(`jax.distributed.initialize`) the mesh spans the devices of every process.
"""

import dataclasses
import functools
import json
import os
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import benchmarking as bench
from ._common import unwritable
from ._compare import _adjointkit_adjoints


CHECKPOINT_NAME = "checkpoint.eqx"
_CHECKPOINT_FORMAT = "adjointkit-train-1"
# Settings that decide the trajectory of a run: a checkpoint can only be resumed
# with the same ones (`--steps`, `--devices`, `--out`, ... may change).
_RUN_SETTINGS = ("adjoint", "lr", "batch_size", "seed", "width", "window")


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a Neural ODE on the spiral with a chosen adjoint",
        description=(
            "Fit an MLP Neural ODE to windows of the classic spiral with Adam "
            "(optax), differentiating each solve with the adjoint named by "
            "--adjoint. Shows the loss as it trains, writes a loss curve "
            "(loss.png) and train.json to --out, and checkpoints the model and "
            "optimiser atomically every --checkpoint-every steps; --resume "
            "continues from the last checkpoint exactly as if never interrupted."
        ),
    )
    p.add_argument(
        "--adjoint",
        default="checkpointed",
        metavar="NAME",
        help="how to differentiate the solves (default: checkpointed); one of: "
        + ", ".join(_adjointkit_adjoints(1)),
    )
    p.add_argument(
        "--steps", type=int, default=500, metavar="N", help="optimisation steps"
    )
    p.add_argument("--lr", type=float, default=1e-2, metavar="X", help="Adam's rate")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="B",
        help="windows per step, split evenly over the devices (default: 32)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=40,
        metavar="W",
        help="observations per window, W - 1 solver steps (default: 40)",
    )
    p.add_argument(
        "--width", type=int, default=64, metavar="H", help="MLP hidden width"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="model init and data order (default: 0)"
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="shard each batch over the first N devices (default: 1)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host: auto-detected "
        "on Slurm, Open MPI, TPU pods; elsewhere set JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID); the mesh spans every process",
    )
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("adjointkit-train"),
        metavar="DIR",
        help="where loss.png and train.json go (default: ./adjointkit-train)",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=pathlib.Path,
        default=None,
        metavar="DIR",
        help="where checkpoints go (default: OUT/checkpoints)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="K",
        help="write a checkpoint every K steps, and at the end (default: 100)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --checkpoint-dir (start afresh, "
        "saying so, if there is none)",
    )
    p.set_defaults(run=run)
    return p


class _UsageError(Exception):
    """Bad arguments: reported in one line, exit code 2."""


def _fail(message: str) -> int:
    print(f"adjointkit train: {message}", file=sys.stderr)
    return 2


def _validate(args) -> None:
    for name, least in [
        ("steps", 1),
        ("batch_size", 1),
        ("window", 2),
        ("width", 1),
        ("devices", 1),
        ("checkpoint_every", 1),
        ("seed", 0),
    ]:
        if getattr(args, name) < least:
            flag = "--" + name.replace("_", "-")
            raise _UsageError(f"{flag} must be an integer >= {least}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        raise _UsageError("--lr must be a positive number")
    if args.batch_size % args.devices:
        raise _UsageError(
            f"--batch-size {args.batch_size} must be a multiple of --devices "
            f"{args.devices} (each device takes an equal share of the batch)"
        )
    known = _adjointkit_adjoints(args.window - 1)
    if args.adjoint not in known:
        raise _UsageError(
            f"unknown adjoint {args.adjoint!r}; available: {sorted(known)}"
        )


# --- the model, the loss, one step ---------------------------------------------


class SpiralField(eqx.Module):
    """The Neural ODE's vector field: one MLP applied to each state of a batch."""

    mlp: eqx.nn.MLP

    def __init__(self, width: int, *, key):
        self.mlp = eqx.nn.MLP(
            2, 2, width, depth=2, activation=jnp.tanh, dtype=jnp.float32, key=key
        )

    def __call__(self, t, y, args):
        del t, args
        return jax.vmap(self.mlp)(y)


def _loss(model, y0, targets, adjoint, window_ts):
    """Mean squared error of the solve from `y0` at the window's times. `window_ts`
    is a tuple (static: the solve's grid is known at trace time, so the constant
    steps run as a `lax.scan`)."""
    import adjointkit as ak

    ts = np.asarray(window_ts, np.float32)
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
    return jnp.mean((sol.ys - targets) ** 2)


@functools.lru_cache(maxsize=16)
def _optimiser(lr: float):
    """Adam, one object per rate: `_train_step` is compiled once per optimiser
    object, so equal settings reuse the compiled step within a process."""
    import optax

    return optax.adam(lr)


@eqx.filter_jit
def _train_step(model, opt_state, y0, targets, optimiser, adjoint, window_ts, rep):
    """One Adam step on a batch. `y0` and `targets` may be sharded over the batch
    axis; `model` and `opt_state` are replicated (`rep`) in and out. The same code
    runs on one device or many: XLA reduces the loss and the gradients over the
    batch shards."""
    loss, grads = eqx.filter_value_and_grad(_loss)(
        model, y0, targets, adjoint, window_ts
    )
    updates, opt_state = optimiser.update(
        grads, opt_state, eqx.filter(model, eqx.is_array)
    )
    model = eqx.apply_updates(model, updates)
    model, opt_state = eqx.filter_shard((model, opt_state), rep)
    return model, opt_state, loss


@eqx.filter_jit
def _eval_loss(model, y0, targets, adjoint, window_ts):
    return _loss(model, y0, targets, adjoint, window_ts)


# --- devices and data --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where arrays live: the batch split over the mesh, everything else copied."""

    mesh: jax.sharding.Mesh
    batch: jax.sharding.NamedSharding  # (batch, 2): split along the batch axis
    series: jax.sharding.NamedSharding  # (time, batch, 2): likewise
    replicated: jax.sharding.NamedSharding

    def put(self, x: np.ndarray, sharding) -> jax.Array:
        """A global array from host data every process holds in full (the data
        order is a pure function of the step); each process places only the
        shards its own devices hold, so this is also right across hosts."""
        return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

    def replicate(self, tree):
        return jax.tree_util.tree_map(
            lambda x: (
                self.put(np.asarray(x), self.replicated) if eqx.is_array(x) else x
            ),
            tree,
        )


def _placement(n: int) -> _Placement:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = jax.devices()
    if n > len(devices):
        hint = (
            " (on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{n} before starting Python)"
            if devices[0].platform == "cpu"
            else ""
        )
        raise _UsageError(
            f"--devices {n} asked for, but only {len(devices)} "
            f"{devices[0].platform} device(s) are available{hint}"
        )
    chosen = devices[:n]
    processes = {d.process_index for d in chosen}
    if len(processes) != jax.process_count():
        raise _UsageError(
            f"--devices {n} covers the devices of {len(processes)} of "
            f"{jax.process_count()} processes; every process needs some (use "
            f"--devices {len(devices)})"
        )
    mesh = Mesh(np.array(chosen), ("batch",))
    return _Placement(
        mesh=mesh,
        batch=NamedSharding(mesh, P("batch")),
        series=NamedSharding(mesh, P(None, "batch")),
        replicated=NamedSharding(mesh, P()),
    )


def _host(x):
    """A replicated array's value on this host (also where other hosts hold part of
    the mesh, which `np.asarray` refuses)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return x


# --- checkpoints -------------------------------------------------------------------


def _write_checkpoint(path: pathlib.Path, header: dict, tree) -> None:
    """One file, written whole or not at all: a JSON header line, then the arrays
    (Equinox serialisation), to a temporary file that then replaces `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            eqx.tree_serialise_leaves(f, jax.tree_util.tree_map(_host, tree))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_checkpoint(path: pathlib.Path, like, settings: dict | None = None):
    """`(header, tree)` from a checkpoint; `like` gives the structure, shapes and
    dtypes the arrays must have.

    With `settings` (this run's `_RUN_SETTINGS`), the checkpoint must have been
    written with the same ones. They are compared before the arrays are read: a
    checkpoint of another `--width` holds arrays of other shapes, and is better
    refused by naming the setting than by a deserialisation error."""
    like_host = jax.tree_util.tree_map(_host, like)
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
        except ValueError:  # not JSON, or not text at all
            header = None
        if not isinstance(header, dict) or header.get("format") != _CHECKPOINT_FORMAT:
            raise _UsageError(f"{path} is not an adjointkit train checkpoint")
        if settings is not None:
            _check_same_settings(path, header.get("settings", {}), settings)
        try:
            tree = eqx.tree_deserialise_leaves(f, like_host)
        except (RuntimeError, ValueError, OSError, EOFError) as e:
            # Equinox wraps the error of the leaf that failed; that one says why.
            cause = e.__cause__ or e
            raise _UsageError(
                f"{path} cannot be read as this run's model and optimiser state "
                f"(damaged or incomplete?): {str(cause).splitlines()[0]}"
            ) from e
    leaves = jax.tree_util.tree_leaves
    for got, want in zip(leaves(tree), leaves(like_host), strict=True):
        if isinstance(want, np.ndarray) and (
            got.shape != want.shape or got.dtype != want.dtype
        ):
            raise _UsageError(
                f"{path} holds arrays of other shapes than this run's model"
            )
    return header, tree


def _check_same_settings(path: pathlib.Path, saved: dict, settings: dict) -> None:
    changed = {
        k: (saved.get(k), settings[k])
        for k in _RUN_SETTINGS
        if saved.get(k) != settings[k]
    }
    if changed:
        detail = ", ".join(
            f"--{k.replace('_', '-')} was {a!r}, now {b!r}"
            for k, (a, b) in changed.items()
        )
        raise _UsageError(f"cannot resume {path} with other settings ({detail})")


# --- progress ----------------------------------------------------------------------


class _Progress:
    """A rich progress bar showing the loss where stderr is an interactive terminal;
    elsewhere (a pipe, a file, a CI log, where a bar shows nothing till the end)
    or without rich, a line every tenth of the run."""

    def __init__(self, first: int, total: int, adjoint: str, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None
        self.every = max(1, total // 10)
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            print(
                "adjointkit train: rich is not installed; printing the loss every "
                f"{self.every} steps instead of a progress bar (pip install rich)",
                file=sys.stderr,
            )
            return
        console = Console(stderr=True)
        if not console.is_interactive:
            return
        self.bar = Progress(
            # Rich reads "[...]" as markup: unescaped, "[checkpointed]" vanishes.
            TextColumn(escape(f"train [{adjoint}]")),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("train", total=total, completed=first, loss="-")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.3e}")
        elif step % self.every == 0 or step == self.total:
            print(
                f"  step {step}/{self.total}  loss {loss:.3e}",
                file=sys.stderr,
                flush=True,
            )


def _plot(path: pathlib.Path, losses: list[float], adjoint: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "adjointkit train: matplotlib is not installed; no loss curve (the "
            "losses are in train.json; pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(steps, losses, lw=0.8, alpha=0.5, label="each batch")
    k = max(1, len(losses) // 25)
    if k > 1:  # a running mean over k steps, on a log scale
        smooth = np.exp(np.convolve(np.log(losses), np.ones(k) / k, mode="valid"))
        ax.semilogy(steps[k - 1 :], smooth, lw=1.8, label=f"mean of {k} steps")
    ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("batch loss (MSE)")
    ax.set_title(f"Neural ODE on the spiral, {adjoint} adjoint")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- the command -------------------------------------------------------------------


def run(args) -> int:
    try:
        return _run(args)
    except _UsageError as e:
        return _fail(str(e))


def _run(args) -> int:
    _validate(args)
    if args.distributed:
        _initialise_distributed()
    placement = _placement(args.devices)
    main_process = jax.process_index() == 0
    checkpoint_dir = args.checkpoint_dir or args.out / "checkpoints"
    if main_process:  # the only process that writes
        # Before any work: the results and checkpoints must have somewhere to go.
        for flag, folder in [("--out", args.out), ("--checkpoint-dir", checkpoint_dir)]:
            why = unwritable(flag, folder)
            if why is not None:
                raise _UsageError(why)
    try:
        data = bench.spiral(window=args.window)
    except ValueError as e:
        raise _UsageError(f"--window: {e}") from e
    if args.batch_size > data.num_windows:
        raise _UsageError(
            f"--batch-size must be at most the {data.num_windows} windows of the "
            "data set"
        )
    adjoint = _adjointkit_adjoints(args.window - 1)[args.adjoint]
    optimiser = _optimiser(float(args.lr))
    window_ts = tuple(float(t) for t in data.window_ts)
    settings = {name: getattr(args, name) for name in _RUN_SETTINGS}
    checkpoint = checkpoint_dir / CHECKPOINT_NAME

    model = SpiralField(args.width, key=jax.random.PRNGKey(args.seed))
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    step, losses, initial_loss, last_saved = 0, [], None, None
    if args.resume:
        if checkpoint.exists():
            header, (model, opt_state) = _read_checkpoint(
                checkpoint, (model, opt_state), settings
            )
            step, losses = header["step"], header["losses"]
            last_saved = step
            initial_loss = header["initial_loss"]
            if main_process:
                print(f"resuming from {checkpoint} at step {step}", file=sys.stderr)
        elif main_process:
            print(
                f"adjointkit train: no checkpoint at {checkpoint}; starting at step 0",
                file=sys.stderr,
            )
    model, opt_state = placement.replicate((model, opt_state))

    all_y0, all_targets = data.all_windows()
    full = (
        placement.put(all_y0, placement.replicated),
        placement.put(all_targets, placement.replicated),
    )

    def evaluate(model) -> float:
        return float(_host(_eval_loss(model, *full, adjoint, window_ts)))

    if initial_loss is None:
        initial_loss = evaluate(model)

    def save():
        nonlocal last_saved
        last_saved = step
        if main_process:
            header = dict(
                format=_CHECKPOINT_FORMAT,
                step=step,
                settings=settings,
                losses=losses,
                initial_loss=initial_loss,
            )
            _write_checkpoint(checkpoint, header, (model, opt_state))

    if step > args.steps and main_process:
        print(
            f"adjointkit train: the checkpoint is at step {step}, past --steps "
            f"{args.steps}; nothing to train",
            file=sys.stderr,
        )
    start = time.perf_counter()
    first_step = step
    try:
        with _Progress(step, args.steps, args.adjoint, main_process) as progress:
            while step < args.steps:
                starts = data.batch_starts(args.seed, step, args.batch_size)
                y0, targets = data.windows(starts)
                model, opt_state, loss = _train_step(
                    model,
                    opt_state,
                    placement.put(y0, placement.batch),
                    placement.put(targets, placement.series),
                    optimiser,
                    adjoint,
                    window_ts,
                    placement.replicated,
                )
                step += 1
                losses.append(float(_host(loss)))
                progress.update(step, losses[-1])
                if step % args.checkpoint_every == 0:
                    save()
    except KeyboardInterrupt:
        if main_process:
            where = (
                "no checkpoint was written"
                if last_saved is None
                else f"the last checkpoint is at step {last_saved}; continue with "
                "--resume"
            )
            print(
                f"\nadjointkit train: interrupted at step {step}; {where}",
                file=sys.stderr,
            )
        return 130
    seconds = time.perf_counter() - start
    if step % args.checkpoint_every:
        save()
    final_loss = evaluate(model)
    if not main_process:
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    plotted = _plot(args.out / "loss.png", losses, args.adjoint)
    summary = dict(
        settings=settings,
        steps=step,
        devices=args.devices,
        platform=placement.mesh.devices.flat[0].platform,
        processes=jax.process_count(),
        dataset=dict(name="spiral", windows=data.num_windows, window=data.window),
        initial_loss=initial_loss,
        final_loss=final_loss,
        losses=losses,
        train_seconds=seconds,
        checkpoint=str(checkpoint),
    )
    (args.out / "train.json").write_text(json.dumps(summary, indent=2))
    wrote = "loss.png, train.json" if plotted else "train.json"
    print(
        f"trained {step - first_step} steps ({step} in all) with the {args.adjoint} "
        f"adjoint on {args.devices} {summary['platform']} device(s) in "
        f"{seconds:.1f} s\n"
        f"loss over all {data.num_windows} windows: {initial_loss:.4e} -> "
        f"{final_loss:.4e}\n"
        f"wrote {wrote} to {args.out}; checkpoint {checkpoint}"
    )
    return 0


def _initialise_distributed() -> None:
    kwargs = {}
    env = {
        "coordinator_address": "JAX_COORDINATOR_ADDRESS",
        "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID",
    }
    for name, var in env.items():
        if var in os.environ:
            value = os.environ[var]
            kwargs[name] = value if name == "coordinator_address" else int(value)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise _UsageError(
            f"--distributed: jax.distributed.initialize failed: {e}"
        ) from e
