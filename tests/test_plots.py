"""`adjointkit compare`'s figures and metadata, on small synthetic result tables
(no measuring: the end-to-end run is in tests/test_cli.py)."""

import math

import numpy as np
import pytest


pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from adjointkit.benchmarking import _plots  # noqa: E402


META = dict(
    problem="neural_ode",
    state_shape=[16, 8],
    state_size=128,
    parameters=1608,
    dtype="float32",
    solver="tsit5",
    steps=[10, 20],
    rtols=[1e-6],
    adaptive_max_steps=1024,
    backend="gpu",
    device_kind="NVIDIA H200",
    processor="Some CPU @ 2.80GHz",
    date="2026-12-03T10:08:04+00:00",
    adjointkit="0.1.0",
    jax="0.10.2",
    diffrax="0.7.2",
)


def _row(adjoint, setting, *, ms, mib, error, evals, taken=None):
    rtol = float(setting[5:]) if setting.startswith("rtol") else None
    steps = None if rtol else int(setting)
    return dict(
        adjoint=adjoint,
        setting=setting,
        steps=steps,
        rtol=rtol,
        forward_s=ms / 4e3,
        value_and_grad_s=ms / 1e3,
        ratio=4.0,
        temp_bytes=int(mib * 2**20),
        device_peak_bytes=None,
        device_peak_exact=False,
        forward_f_evals=evals,
        backward_f_evals=evals,
        steps_taken=taken or steps,
        rejected_steps=0,
        grad_rel_error=error,
        failed=None,
    )


def _rows():
    names = ["checkpointed", "direct", "backsolve", "diffrax-recursive"]
    rows = []
    for i, name in enumerate(names):
        for n in (10, 20):
            # A cluster of points a few per cent apart: labels must still part.
            rows.append(
                _row(
                    name,
                    str(n),
                    ms=n * (1 + 0.03 * i),
                    mib=0.5 + 0.02 * i,
                    error=3e-7,
                    evals=1 + 6 * n,
                )  # fmt: skip
            )
        rows.append(
            _row(
                name,
                "rtol 1e-06",
                ms=3.0 + i,
                mib=1.0 + i,
                error=2e-5 * (i + 1),
                evals=2 + 6 * 5,
                taken=5,
            )  # fmt: skip
        )
    failed = dict.fromkeys(rows[0], None)
    failed.update(adjoint="quadrature", setting="10", steps=10, rtol=None)
    failed.update(failed="The maximum number of solver steps was reached.")
    return [*rows, failed]


def _text_box(annotation, renderer):
    annotation.update_positions(renderer)  # places the text where it is drawn
    return Text.get_window_extent(annotation, renderer)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Draw the figures of `_rows()` once; returns {file name: figure}, and in
    each figure's `label_boxes` the pixel boxes of every axes' texts as they
    were placed when it was saved."""
    figures = {}
    save = Figure.savefig

    def savefig(fig, path, **kwargs):
        figures[path.name] = fig
        renderer = fig.canvas.get_renderer()
        # The text alone (an annotation's own extent takes in its leader line).
        fig.label_boxes = [
            [_text_box(t, renderer) for t in ax.texts] for ax in fig.axes
        ]
        return save(fig, path, **kwargs)

    out = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", savefig)
        paths = _plots.compare_figures(_rows(), META, out)
    assert {p.name for p in paths} == set(figures)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return figures


def _points(ax):
    """Every marker drawn in `ax`, as (x, y) pairs."""
    pts = [tuple(map(float, p)) for c in ax.collections for p in c.get_offsets()]
    for line in ax.get_lines():
        if line.get_marker() not in (None, "None", "none", ""):
            xs, ys = map(float, line.get_xdata()), map(float, line.get_ydata())
            pts += list(zip(xs, ys, strict=True))
    return pts


def test_four_figures_and_the_failed_row_left_out(drawn):
    assert set(drawn) == {
        "memory_vs_time.png",
        "memory_vs_steps.png",
        "time_vs_steps.png",
        "error_vs_time.png",
    }
    for fig in drawn.values():
        texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
        assert not any("quadrature" in t for t in texts)  # it failed: no figures


def test_adaptive_rows_appear_in_every_figure(drawn):
    (adaptive,) = [
        ax for ax in drawn["memory_vs_time.png"].axes if "rtol 1e-6" in ax.get_title()
    ]
    # (ms, MiB) of the adaptive checkpointed row: 3 ms, 1 MiB.
    assert any(np.allclose(p, (3.0, 1.0)) for p in _points(adaptive))
    steps_ax = drawn["memory_vs_steps.png"].axes[0]
    # Placed at the 5 steps it accepted, with its memory.
    assert any(np.allclose(p, (5, 1.0)) for p in _points(steps_ax))
    time_ax = drawn["time_vs_steps.png"].axes[0]
    assert any(np.allclose(p, (5, 3.0)) for p in _points(time_ax))
    error_ax = drawn["error_vs_time.png"].axes[0]
    assert any(np.allclose(p, (3.0, 2e-5)) for p in _points(error_ax))
    legend = [t.get_text() for t in error_ax.get_legend().get_texts()]
    assert any("adaptive (rtol 1e-6)" in t for t in legend)


def test_error_plot_marks_the_float32_noise_floor(drawn):
    # eps/2 sqrt(2 n), n = 121 f-evaluations (N = 20 Tsit5 steps): 9.3e-7.
    floor = 0.5 * 2.0**-23 * math.sqrt(2 * 121)
    (ax,) = [a for a in drawn["error_vs_time.png"].axes if a.get_legend()]
    flat = [
        line
        for line in ax.get_lines()
        if len(line.get_ydata()) == 2 and np.allclose(line.get_ydata(), floor)
    ]
    assert flat, "no line at the noise floor"
    # The band below it: a patch whose top edge is the floor.
    tops = [p.get_extents().y1 for p in ax.patches]
    floor_px = ax.transData.transform((1.0, floor))[1]
    assert any(abs(t - floor_px) < 1.5 for t in tops)
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "float32 round-off" in legend and f"{floor:.1e}" in legend
    # In the memory-time figure, errors below the floor are grey: the colour
    # scale starts at it.
    bars = [
        a for a in drawn["memory_vs_time.png"].axes if "round-off" in a.get_ylabel()
    ]
    assert len(bars) == 1


def test_noise_floor_sits_between_rounding_and_accuracy():
    # Measured (docs/choosing.md, float32, Tsit5, N = 200 constant steps, 1201
    # f-evaluations): every exact adjoint's gradient error lies in 2e-7 .. 7e-7
    # and the differences are rounding; the floor must lie above them. A real
    # accuracy difference, such as the interpolating adjoints' 7e-6 at rtol
    # 1e-6, must stay above it.
    rows = [dict(forward_f_evals=1201)]
    floor = _plots.noise_floor(rows, "float32")
    assert 7e-7 < floor < 7e-6
    # float64: 2^29 times smaller, as its epsilon.
    assert _plots.noise_floor(rows, "float64") == pytest.approx(floor * 2.0**-29)


def test_titles_name_machine_date_versions_and_problem_size(drawn):
    for name, fig in drawn.items():
        text = " ".join(t.get_text() for t in fig.texts)
        text += " " + (fig._suptitle.get_text() if fig._suptitle else "")
        for needed in (
            "neural_ode",
            "Some CPU @ 2.80GHz",
            "NVIDIA H200 (gpu)",
            "2026-12-03",
            "adjointkit 0.1.0",
            "jax 0.10.2",
            "diffrax 0.7.2",
            "state 16×8",
            "1,608 parameters",
            "float32",
            "N = 10, 20",
            "1e-6",
        ):
            assert needed in text, (name, needed)


def test_caption_of_an_older_results_json():
    # Without the size and processor fields (results.json before they existed).
    text = _plots.caption(dict(problem="p", backend="cpu", jax="0.4.30"), "what")
    assert text.splitlines()[0] == "p: what" and "jax 0.4.30" in text


def test_labels_do_not_overlap(drawn):
    fig = drawn["memory_vs_time.png"]
    # Four labels per panel, on points a few per cent apart.
    assert sum(len(boxes) for boxes in fig.label_boxes) >= 4 * 3
    for boxes in fig.label_boxes:
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (a, b)


def test_every_adjoint_has_its_own_marker_and_style():
    # Told apart in greyscale by shape alone; and by the whole style in colour.
    from adjointkit.cli import _compare

    names = list(_compare._adjointkit_adjoints(16)) + [
        "diffrax-recursive",
        "diffrax-recursive-all",
        "diffrax-direct",
        "diffrax-backsolve",
    ]
    styles = [_plots.style(n) for n in names]
    assert len({m for _, m, _ in styles}) == len(names)
    assert len(set(styles)) == len(names)


def test_log_scale_only_where_the_data_span_a_decade():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _plots._scale(ax, "x", [2.0, 19.0])
    _plots._scale(ax, "y", [2.0, 21.0])
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    plt.close(fig)
