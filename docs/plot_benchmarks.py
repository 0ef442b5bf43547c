"""Draw the figures of `docs/choosing.md` from the tables in `docs/benchmarks.md`.

The numbers are read from the measured tables (nothing is re-measured here), so
the figures and the tables cannot disagree. Run after updating the tables:

    python docs/plot_benchmarks.py
"""

import pathlib
import re

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402


DOCS = pathlib.Path(__file__).resolve().parent
TABLES = DOCS / "benchmarks.md"
OUT = DOCS / "img"


def _rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every table row whose first cell matches `first_cell`."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def continuous(text: str):
    """{method: [(rtol, ms, grad error)]} from the continuous-adjoint table."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for rtol, method, ms, _mib, _evals, error in _rows(text, r"1e-\d"):
        method = re.sub(r" \(.*\)$", "", method)  # "(Hermite)" on the first rows
        series.setdefault(method, []).append((float(rtol), float(ms), float(error)))
    return series


def discrete(text: str):
    """{N: [(label, ms, MiB)]} from the discrete-adjoint table (N = 100, 1000)."""
    points: dict[int, list[tuple[str, float, float]]] = {}
    measured = re.compile(r"`([^`]+)` ([\d.]+) ms, ([\d.]+) MiB")
    for cells in _rows(text, r"100|1000"):
        if cells[1].startswith("same checkpoints"):  # the defaults again
            continue
        n = int(cells[0])
        for cell, library in ((cells[2], "ak"), (cells[3], "Diffrax")):
            m = measured.fullmatch(cell)
            if m:
                label = f"{library} {m.group(1)}"
                points.setdefault(n, []).append(
                    (label, float(m.group(2)), float(m.group(3)))
                )
    # Two more, given in the prose under the table.
    every_k = re.search(
        r"`EveryKSteps\(√N\)`: ([\d.]+) ms / ([\d.]+) MiB at N = 100, "
        r"([\d.]+) ms / ([\d.]+) MiB at N = 1000",
        text,
    )
    if every_k:
        a, b, c, d = (float(x) for x in every_k.groups())
        points.setdefault(100, []).append(("ak EveryKSteps(10)", a, b))
        points.setdefault(1000, []).append(("ak EveryKSteps(32)", c, d))
    direct = re.search(
        r"`DirectAdjoint`[^:]*: ([\d.]+) ms / ([\d.]+) MiB at N = 100", text
    )
    if direct:
        a, b = (float(x) for x in direct.groups())
        points.setdefault(100, []).append(("ak DirectAdjoint()", a, b))
    return points


def main():
    text = TABLES.read_text()
    OUT.mkdir(exist_ok=True)

    # Continuous adjoints: gradient error and time against the tolerance.
    fig, (err_ax, ms_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for method, values in continuous(text).items():
        rtol, ms, error = zip(*values, strict=True)
        style = "--" if method.startswith("Diffrax") else "-"
        err_ax.plot(rtol, error, style, marker="o", label=method)
        ms_ax.plot(rtol, ms, style, marker="o", label=method)
    for ax, label in ((err_ax, "gradient error (relative)"), (ms_ax, "ms")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("rtol (forward and backward)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    err_ax.set_title("Gradient error")
    ms_ax.set_title("Value and gradient time")
    ms_ax.legend()
    fig.suptitle("Continuous adjoints, adaptive Tsit5 (2-core CPU, 2026-11-26)")
    fig.tight_layout()
    fig.savefig(OUT / "continuous_adjoints.png", dpi=120)
    plt.close(fig)

    # Discrete adjoints: time and memory per adjoint, for each N.
    points = sorted(discrete(text).items())
    fig, axes = plt.subplots(2, len(points), figsize=(11, 6))
    for col, (n, values) in enumerate(points):
        labels = [label for label, _, _ in values]
        colors = [
            "tab:orange" if x.startswith("Diffrax") else "tab:blue" for x in labels
        ]
        y = range(len(values))
        for row, (index, unit) in enumerate(((1, "ms"), (2, "MiB"))):
            ax = axes[row][col]
            bars = ax.barh(y, [v[index] for v in values], color=colors)
            ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
            ax.set_yticks(list(y), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(
                "value and gradient, ms" if unit == "ms" else "XLA temp memory, MiB"
            )
            if unit == "MiB":
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.margins(x=0.15)
            ax.grid(True, axis="x", which="both", alpha=0.3)
            ax.set_title(f"N = {n}")
    fig.suptitle("Discrete adjoints, Tsit5, N constant steps (2-core CPU, 2026-11-26)")
    fig.tight_layout()
    fig.savefig(OUT / "discrete_adjoints.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
