"""The figures of `adjointkit compare`, drawn from its rows and metadata.

Needs matplotlib (the `bench` extra); `adjointkit compare` imports this module
only where matplotlib is installed.

Conventions shared by every figure:

- each adjoint has one style everywhere: a colour, a marker shape and a line
  style (`style`). The shapes alone tell the series apart, so a figure still
  reads in greyscale; Diffrax's adjoints are black or grey, dashed or dotted;
- constant steps are filled markers, adaptive runs hollow ones;
- an axis is logarithmic where its data span a decade or more, linear otherwise;
- the title carries the problem's size and the machine, date and versions.
"""

import math
import pathlib

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, ticker, transforms  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


# colour, marker, line style per adjoint. adjointkit's: ten distinct hues of
# matplotlib's "tab10" (no light/dark pairs), solid lines (dash-dot for the
# every-k variants); Diffrax's: black and grey, dashed or dotted.
_STYLES = {
    "checkpointed": ("#1f77b4", "o", "-"),
    "checkpointed-allsteps": ("#ff7f0e", "s", "-"),
    "checkpointed-every-k": ("#2ca02c", "^", "-."),
    "direct": ("#d62728", "v", "-"),
    "backsolve": ("#9467bd", "D", "-"),
    "interpolated": ("#8c564b", "<", "-"),
    "interpolated-every-k": ("#e377c2", ">", "-."),
    "quadrature": ("#bcbd22", "p", "-"),
    "reversible": ("#17becf", "h", "-"),
    "diffrax-recursive": ("#000000", "X", "--"),
    "diffrax-recursive-all": ("#7f7f7f", "P", "--"),
    "diffrax-direct": ("#000000", "*", ":"),
    "diffrax-backsolve": ("#7f7f7f", "d", ":"),
}
# For names without a style of their own (a new adjoint): cycled.
_SPARE_MARKERS = ("8", "H", "1", "2", "3", "4", "+", "x")


def style(name: str, index: int = 0) -> tuple[str, str, str]:
    """`(colour, marker, linestyle)` of the adjoint `name`; `index`, its place
    among the figure's adjoints, picks a spare style for an unknown name."""
    if name in _STYLES:
        return _STYLES[name]
    colour = plt.get_cmap("tab10").colors[index % 10]
    return colour, _SPARE_MARKERS[index % len(_SPARE_MARKERS)], "-"


def noise_floor(rows: list, dtype: str) -> float:
    """The relative gradient error below which two gradients differ by rounding
    only, estimated for the rows' largest solve.

    Every evaluation of f and every step's update rounds its result to `dtype`:
    a relative error of at most eps/2 each. Along the n f-evaluations of a
    forward solve and about as many in its backward pass these roundings add up
    like a random walk, to ~ (eps/2) sqrt(2 n) relative to the gradient, where
    the problem does not amplify them (a chaotic one would: then this is too
    low). In float32 with Tsit5, N = 200 constant steps (n = 1201), that is
    2.9e-6; measured errors of every exact adjoint there lie between 3e-7 and
    7e-7, inside it, and they differ from each other by rounding alone. So the
    estimate errs towards calling a difference round-off, which is the safe way
    for a reader deciding by accuracy.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    evals = [r["forward_f_evals"] for r in rows if r.get("forward_f_evals")]
    n = max(evals, default=1)
    return 0.5 * eps * math.sqrt(2 * n)


def caption(meta: dict, what: str) -> str:
    """Three lines for a figure's title: `what` on which problem; the problem's
    size and settings; the machine, date and versions. Keys missing from `meta`
    (results.json from an older adjointkit) are left out."""
    problem = meta.get("problem", "?")
    first = f"{problem}: {what}"
    size = []
    if "state_shape" in meta:
        shape = meta["state_shape"]
        shape_text = (
            "×".join(map(str, shape))
            if shape and isinstance(shape[0], int)
            else str(shape)
        )
        size.append(f"state {shape_text} ({meta.get('state_size', '?')} values)")
    if "parameters" in meta:
        size.append(f"{meta['parameters']:,} parameters")
    if "dtype" in meta:
        size.append(meta["dtype"])
    solver = meta.get("solver", "tsit5")
    solver = {"tsit5": "Tsit5", "kvaerno5": "Kvaerno5"}.get(solver, solver)
    settings = []
    if meta.get("steps"):
        settings.append("N = " + ", ".join(map(str, meta["steps"])))
    if meta.get("rtols"):
        rtols = ", ".join(_rtol(r) for r in meta["rtols"])
        bound = meta.get("adaptive_max_steps")
        settings.append(
            f"adaptive rtol = atol = {rtols}" + (f" (≤ {bound} steps)" if bound else "")
        )
    second = ", ".join(size)
    second += ("; " if second else "") + solver
    second += (": " + "; ".join(settings)) if settings else ""
    backend = meta.get("backend", "?")
    kind = meta.get("device_kind")
    device = f"{kind} ({backend})" if kind and kind != backend else backend
    machine = ", ".join(p for p in (meta.get("processor"), device) if p)
    date = meta.get("date", "")
    date = f"{date[:10]} {date[11:16]} UTC" if len(date) >= 16 else date
    versions = ", ".join(
        f"{lib} {meta[lib]}"
        for lib in ("adjointkit", "jax", "diffrax")
        if meta.get(lib)
    )
    third = " · ".join(p for p in (machine, date, versions) if p)
    return "\n".join([first, second, third])


def _rtol(r: float) -> str:
    """A tolerance as people write it: 1e-4, 5e-7, 0.01."""
    if r >= 1e-3:
        return f"{r:g}"
    return np.format_float_scientific(r, trim="-", exp_digits=1)


def _title(fig, meta: dict, what: str):
    text = caption(meta, what)
    first, rest = text.split("\n", 1)
    fig.suptitle(first, fontsize=11, y=0.995, va="top")
    height = fig.get_figheight()
    fig.text(0.5, 1 - 0.4 / height, rest, fontsize=8, color="0.25", ha="center",
             va="top")  # fmt: skip


def _scale(ax, axis: str, values):
    """Log scale where `values` span a decade or more, else linear (from zero
    up, with a margin, so that equal figures look equal)."""
    values = [v for v in values if v is not None and v > 0]
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    if values and max(values) / min(values) >= 10:
        set_scale("log")
        # Plain numbers ("5", "20", not "5 x 10^0"), every tick labelled where
        # the axis spans only a decade or two.
        formatter = ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.8))
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_formatter(ticker.LogFormatter())
        target.set_minor_formatter(formatter)
    else:
        set_scale("linear")
        if values:
            limit = ax.set_xlim if axis == "x" else ax.set_ylim
            limit(0, 1.15 * max(values))


def _label_points(ax, points, renderer, fontsize=7.5):
    """Write each `(x, y, text)` near its point, where it covers no other label
    and no other point: the first free place among candidates around the point,
    moving further out, with a thin leader line once it is away from the point.
    Greedy, in the order given (lowest first reads best)."""
    to_px = ax.transData.transform
    marks = [to_px((x, y)) for x, y, _ in points]
    box = ax.get_window_extent(renderer)
    taken = []  # label boxes placed so far, in pixels

    def overlaps(b):
        if b.x0 < box.x0 or b.x1 > box.x1 or b.y0 < box.y0 or b.y1 > box.y1:
            return True
        for t in taken:
            if b.x0 < t.x1 and t.x0 < b.x1 and b.y0 < t.y1 and t.y0 < b.y1:
                return True
        for mx, my in marks:  # a marker is ~12 px across
            if b.x0 - 7 < mx < b.x1 + 7 and b.y0 - 7 < my < b.y1 + 7:
                return True
        return False

    candidates = [
        (dx * r, dy * r)
        for r in (1, 2, 3, 4.5, 6)
        for dx, dy in (
            (1, 0),
            (-1, 0),
            (0.3, 1),
            (0.3, -1),
            (1, 1),
            (1, -1),
            (-1, 1),
            (-1, -1),
        )  # fmt: skip
    ]
    for (x, y, text), (px, py) in zip(points, marks, strict=True):
        probe = ax.text(0, 0, text, fontsize=fontsize)  # to measure it
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width, size.height
        best = None
        for dx, dy in candidates:
            # The label's box: 9 px per step of the candidate from the point.
            left = px + (9 * dx if dx >= 0 else 9 * dx - w)
            bottom = py + 9 * dy - h / 2
            b = transforms.Bbox([[left, bottom], [left + w, bottom + h]])
            if not overlaps(b):
                best = (dx, dy, b)
                break
        if best is None:  # nowhere free: the nearest place right of the point
            left, bottom = px + 9, py - h / 2
            best = (1, 0, transforms.Bbox([[left, bottom], [left + w, bottom + h]]))
        dx, dy, b = best
        taken.append(b)
        points_per_px = 72 / ax.figure.dpi
        far = (abs(dx), dy) != (1, 0)  # not beside it: a leader line says whose
        ax.annotate(
            text,
            (x, y),
            xytext=((b.x0 - px) * points_per_px, (b.y0 + h / 2 - py) * points_per_px),
            textcoords="offset points",
            fontsize=fontsize,
            va="center",
            ha="left",
            arrowprops=dict(
                arrowstyle="-", color="0.4", lw=0.7, shrinkA=0, shrinkB=5,
                relpos=(0.0 if b.x0 > px else 1.0, 0.5),
            )
            if far
            else None,
        )  # fmt: skip


def _spread(ax, xs, ys, min_px: float = 6.0):
    """Points closer than `min_px` pixels to an earlier one, moved onto a small
    circle around it so that neither hides the other. Returns the new data
    coordinates; the move is a few pixels, below what the axes resolve."""
    to_px, to_data = ax.transData.transform, ax.transData.inverted().transform
    placed = []
    out = []
    for x, y in zip(xs, ys, strict=True):
        p = np.asarray(to_px((x, y)), float)
        k = 0
        q = p
        while any(np.hypot(*(q - o)) < min_px for o in placed) and k < 12:
            k += 1
            angle = 2.4 * k  # the golden angle: successive places fan out
            q = p + min_px * (1 + k / 6) * np.array([np.cos(angle), np.sin(angle)])
        placed.append(q)
        out.append(tuple(to_data(q)))
    return out


def _save(fig, out: pathlib.Path, filename: str, paths: list, dpi: int = 100):
    path = out / filename
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    paths.append(path)


def _ok(rows):
    return [r for r in rows if not r.get("failed")]


def memory_vs_time(rows, meta, out: pathlib.Path, paths: list, floor: float):
    """The trade-off: one panel per setting (each N, each rtol), value-and-grad
    time across, XLA temp memory up, each adjoint a marker of its own shape,
    labelled, filled with its gradient error's colour (grey: within rounding)."""
    rows = _ok(rows)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    names = list(dict.fromkeys(r["adjoint"] for r in rows))
    errors = [max(r["grad_rel_error"], 1e-300) for r in rows]
    # The colour scale starts at the round-off floor, errors below it grey;
    # where every error stands above it (float64), at the smallest error.
    below = min(errors) <= floor
    bottom = floor if below else min(errors) / 1.5
    top = max([*errors, 10 * bottom])
    norm = colors.LogNorm(vmin=bottom, vmax=top)
    cmap = plt.get_cmap("viridis").with_extremes(under="0.85")
    # Up to three panels in a row, two a row beyond: wide enough for a dozen
    # labelled markers each.
    ncols = len(settings) if len(settings) <= 3 else 2
    nrows = math.ceil(len(settings) / ncols)
    panel = 6.2 if ncols <= 2 else 5.2
    width, height = 1.6 + panel * ncols, 1.5 + 4.3 * nrows
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(settings) :]:
        ax.set_visible(False)
    axes = axes.flat[: len(settings)]
    mib = [r["temp_bytes"] / 2**20 for r in rows]
    for ax, setting in zip(axes, settings, strict=True):
        mine = [r for r in rows if r["setting"] == setting]
        ms = [1e3 * r["value_and_grad_s"] for r in mine]
        _scale(ax, "x", ms)
        _scale(ax, "y", mib)
        if ax.get_xscale() == "log":
            ax.set_xlim(min(ms) / 1.25, max(ms) * 1.6)  # room for labels right
        else:
            ax.set_xlim(0, max(ms) * 1.3)
        if ax.get_yscale() == "log":
            ax.set_ylim(min(mib) / 1.6, max(mib) * 1.6)
        adaptive = mine[0]["rtol"] is not None
        ax.set_title(
            f"adaptive, rtol {_rtol(mine[0]['rtol'])}" if adaptive
            else f"N = {mine[0]['steps']} constant steps",
            fontsize=9,
        )  # fmt: skip
        ax.grid(True, which="major", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    top = 1 - 1.25 / height  # the title's three lines
    right = 1 - 1.45 / width  # the colour bar
    fig.subplots_adjust(
        left=0.9 / width, right=right, bottom=0.65 / height, top=top,
        wspace=0.08, hspace=0.28,
    )  # fmt: skip
    renderer = fig.canvas.get_renderer()
    for ax, setting in zip(axes, settings, strict=True):
        mine = sorted(
            (r for r in rows if r["setting"] == setting),
            key=lambda r: (r["temp_bytes"], r["value_and_grad_s"]),
        )
        xy = _spread(
            ax,
            [1e3 * r["value_and_grad_s"] for r in mine],
            [r["temp_bytes"] / 2**20 for r in mine],
        )
        for r, (x, y) in zip(mine, xy, strict=True):
            _, marker, _ = style(r["adjoint"], names.index(r["adjoint"]))
            ax.scatter(
                [x], [y], marker=marker, s=70, c=[max(r["grad_rel_error"], 1e-300)],
                cmap=cmap, norm=norm, edgecolors="black", linewidths=0.8, zorder=3,
            )  # fmt: skip
        labels = [(x, y, r["adjoint"]) for r, (x, y) in zip(mine, xy, strict=True)]
        _label_points(ax, labels, renderer)
    for ax in axes[::ncols]:
        ax.set_ylabel("XLA temp memory (MiB)")
    for ax in axes:
        ax.set_xlabel("value and gradient, median wall time (ms)")
    cax = fig.add_axes([right + 0.25 / width, 0.65 / height, 0.15 / width,
                        top - 0.65 / height])  # fmt: skip
    bar = fig.colorbar(
        matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap),
        cax=cax,
        extend="min" if below else "neither",
    )
    dtype = meta.get("dtype", "float32")
    bar.set_label(
        f"gradient relative error (grey: below {dtype} round-off, {floor:.1e})"
        if below
        else f"gradient relative error (all above {dtype} round-off, {floor:.1e})",
        fontsize=8,
    )
    bar.ax.tick_params(labelsize=7)
    bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0e}"))
    bar.ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    _title(fig, meta, "memory against time, colour = gradient error")
    _save(fig, out, "memory_vs_time.png", paths, dpi=90)  # large: kept < 150 KB


def _legend_outside(fig, ax, names, extra):
    handles = []
    for i, name in enumerate(names):
        colour, marker, linestyle = style(name, i)
        handles.append(Line2D([], [], color=colour, marker=marker,
                              linestyle=linestyle, label=name))  # fmt: skip
    handles += extra
    ax.legend(handles=handles, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)  # fmt: skip


def _setting_handles(rows):
    handles = []
    if any(r["rtol"] is None for r in rows):
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="none",
                              label="filled: N constant steps"))  # fmt: skip
    if any(r["rtol"] is not None for r in rows):
        rtols = ", ".join(
            _rtol(r) for r in dict.fromkeys(r["rtol"] for r in rows if r["rtol"])
        )
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="none",
                              markerfacecolor="white",
                              label=f"hollow: adaptive (rtol {rtols})"))  # fmt: skip
    return handles


def _draw_series(ax, rows, names, x_of, y_of, join_constant: bool):
    """Each adjoint's constant-step rows (filled, joined over N when asked) and
    adaptive ones (hollow; several tolerances joined by a thin dotted line)."""
    for i, name in enumerate(names):
        colour, marker, linestyle = style(name, i)
        fixed = sorted(
            (r for r in rows if r["adjoint"] == name and r["rtol"] is None),
            key=lambda r: r["steps"],
        )
        if fixed:
            ax.plot(
                [x_of(r) for r in fixed], [y_of(r) for r in fixed],
                linestyle=linestyle if join_constant else "none",
                marker=marker, color=colour, markersize=7, alpha=0.85,
                markeredgecolor="black" if colour != "#000000" else "white",
                markeredgewidth=0.5, lw=1.2,
            )  # fmt: skip
        adaptive = sorted(
            (r for r in rows if r["adjoint"] == name and r["rtol"] is not None),
            key=lambda r: -r["rtol"],
        )
        if adaptive:
            ax.plot(
                [x_of(r) for r in adaptive], [y_of(r) for r in adaptive],
                linestyle=":" if len(adaptive) > 1 else "none", lw=0.8, alpha=0.7,
                marker=marker, color=colour, markersize=8,
                markerfacecolor="none", markeredgewidth=1.4,
            )  # fmt: skip


def versus_steps(rows, meta, out, paths, key, scale, ylabel, filename, what):
    rows = _ok(rows)
    names = list(dict.fromkeys(r["adjoint"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 5))
    _draw_series(ax, rows, names, lambda r: r["steps_taken"],
                 lambda r: r[key] * scale, join_constant=True)  # fmt: skip
    _scale(ax, "x", [r["steps_taken"] for r in rows])
    _scale(ax, "y", [r[key] * scale for r in rows])
    ax.set_xlabel("steps: N when constant (filled); accepted when adaptive (hollow)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", color="0.9", lw=0.6)
    _legend_outside(fig, ax, names, _setting_handles(rows))
    fig.subplots_adjust(left=0.09, right=0.74, bottom=0.11, top=0.82)
    _title(fig, meta, what)
    _save(fig, out, filename, paths)


def error_vs_time(rows, meta, out, paths, floor: float):
    rows = _ok(rows)
    names = list(dict.fromkeys(r["adjoint"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 5))

    def error(r):
        return max(r["grad_rel_error"], 1e-300)

    _draw_series(ax, rows, names, lambda r: 1e3 * r["value_and_grad_s"], error,
                 join_constant=True)  # fmt: skip
    _scale(ax, "x", [1e3 * r["value_and_grad_s"] for r in rows])
    ax.set_yscale("log")  # errors: always in decades
    errors = [error(r) for r in rows]
    lo, hi = min(errors), max(errors)
    # Down to the floor where it is near the errors; where it lies decades
    # below them all (float64), the legend gives it instead.
    near = floor > lo / 100
    ax.set_ylim((min(lo, floor) if near else lo) / 3, hi * 3)
    # The round-off band: everything below the floor is one accuracy.
    dtype = meta.get("dtype", "float32")
    if near:
        ax.axhspan(ax.get_ylim()[0], floor, color="0.88", zorder=0, lw=0)
        ax.axhline(floor, color="0.5", lw=0.8, ls="--", zorder=0)
    where = (
        "differences in here are rounding, not accuracy"
        if near
        else "far below every error here (not drawn)"
    )
    band = Patch(
        facecolor="0.88", edgecolor="0.5", linestyle="--",
        label=f"{dtype} round-off: below {floor:.1e}\n"
              f"(eps/2·√(2n), n = f-evals of the largest solve);\n{where}",
    )  # fmt: skip
    ax.set_xlabel("value and gradient, median wall time (ms)")
    ax.set_ylabel("gradient relative error (against a float64 reference)")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    _legend_outside(fig, ax, names, [*_setting_handles(rows), band])
    fig.subplots_adjust(left=0.09, right=0.7, bottom=0.11, top=0.82)
    _title(fig, meta, "gradient error against time")
    _save(fig, out, "error_vs_time.png", paths)


def compare_figures(rows: list, meta: dict, out: pathlib.Path) -> list[pathlib.Path]:
    """Draw `adjointkit compare`'s four figures into `out` from its result rows
    and metadata (as in results.json); returns their paths. Failed rows have no
    figures and are left out."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[pathlib.Path] = []
    if not _ok(rows):
        return paths
    floor = noise_floor(_ok(rows), meta.get("dtype", "float32"))
    memory_vs_time(rows, meta, out, paths, floor)
    versus_steps(rows, meta, out, paths, "temp_bytes", 2**-20,
                 "XLA temp memory (MiB)", "memory_vs_steps.png",
                 "memory against steps")  # fmt: skip
    versus_steps(rows, meta, out, paths, "value_and_grad_s", 1e3,
                 "value and gradient, median wall time (ms)", "time_vs_steps.png",
                 "time against steps")  # fmt: skip
    error_vs_time(rows, meta, out, paths, floor)
    return paths
