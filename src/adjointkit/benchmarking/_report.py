"""What every benchmark records with its figures, and where it writes them."""

import datetime
import json
import math
import pathlib
import platform
import re
import subprocess

import jax
import numpy as np

from .._version import __version__


def processor_name() -> str:
    """The processor's model in words, e.g. "Intel(R) Xeon(R) Processor @ 2.80GHz".

    `platform.processor()` is empty on most Linux systems, so this reads the model
    name from `/proc/cpuinfo` there (and asks `sysctl` on macOS), falling back to
    `platform.processor()` and then to the architecture (`platform.machine()`).
    """
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    # x86 says "model name"; some ARM kernels "Model" or "Hardware".
    for key in ("model name", "Model", "Hardware"):
        found = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            return found.group(1).strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def problem_size(problem) -> dict:
    """The size of a `BenchProblem`: its state's shape and number of components,
    its number of parameters (the components the gradient is taken for) and its
    floating-point type."""
    y0 = jax.tree_util.tree_leaves(problem.y0)
    params = jax.tree_util.tree_leaves(problem.params)
    shapes = [list(np.shape(x)) for x in y0]
    return dict(
        state_shape=shapes[0] if len(shapes) == 1 else shapes,
        state_size=sum(math.prod(np.shape(x)) for x in y0),
        parameters=sum(math.prod(np.shape(x)) for x in params),
        dtype=str(np.result_type(*[np.asarray(x).dtype for x in y0])),
    )


def run_metadata(**settings) -> dict:
    """The machine, software and date of a measurement, with `settings` (the
    problem's size, the benchmark's name, ...): figures mean little without them."""
    try:
        import diffrax

        diffrax_version = diffrax.__version__
    except ImportError:
        diffrax_version = None
    device = jax.devices()[0]
    return dict(
        **settings,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        backend=jax.default_backend(),
        device=str(device),
        device_kind=device.device_kind,
        machine=platform.platform(),
        processor=processor_name(),
        adjointkit=__version__,
        jax=jax.__version__,
        diffrax=diffrax_version,
    )


def ratio_lines(
    name: str, rows: list, pairs, *, time_digits: int = 2, width: int = 15
) -> list[str]:
    """One line per `(label, ours, theirs)` in `pairs` whose two methods both have
    a row: the time, memory and compile-time ratios of `ours` over `theirs`
    (rows are dicts with `method`, `ms`, `temp_mib`, `compile_s`). The ratios of
    benchmarks/adaptive.py and benchmarks/stiff.py."""
    by_name = {r["method"]: r for r in rows if "failed" not in r}
    lines = []
    for label, ours, theirs in pairs:
        if ours not in by_name or theirs not in by_name:
            continue
        mine, ref = by_name[ours], by_name[theirs]
        memory = (
            f"{mine['temp_mib'] / ref['temp_mib']:.2f}x" if ref["temp_mib"] else "-"
        )
        lines.append(
            f"{name:{width}s} {label:26s} time "
            f"{mine['ms'] / ref['ms']:.{time_digits}f}x  memory {memory}  compile "
            f"{mine['compile_s'] / ref['compile_s']:.2f}x  ({ours} vs {theirs})"
        )
    return lines


def write_results(out: pathlib.Path, filename: str, meta: dict, rows: list) -> None:
    """Write `{"meta": meta, "rows": rows}` as indented JSON to `out/filename`,
    creating `out` if needed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
