"""What every benchmark records with its figures, and where it writes them."""

import datetime
import json
import pathlib
import platform

import jax


def run_metadata(**settings) -> dict:
    """The machine, software and date of a measurement, with `settings` (the
    problem's size, the benchmark's name, ...): figures mean little without them."""
    try:
        import diffrax

        diffrax_version = diffrax.__version__
    except ImportError:
        diffrax_version = None
    return dict(
        **settings,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        machine=platform.platform(),
        processor=platform.processor(),
        jax=jax.__version__,
        diffrax=diffrax_version,
    )


def write_results(out: pathlib.Path, filename: str, meta: dict, rows: list) -> None:
    """Write `{"meta": meta, "rows": rows}` as indented JSON to `out/filename`,
    creating `out` if needed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
