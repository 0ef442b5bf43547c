#!/usr/bin/env bash
# The package as a user receives it: build the sdist, then the wheel from that
# sdist (so a file the sdist lacks breaks the build here), check both archives'
# contents, install the wheel alone into a fresh virtual environment and use it
# from outside the checkout. Needs `build` (in the dev extra); about half a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
start=$SECONDS
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Build isolation fetches the setuptools that pyproject.toml's [build-system] asks
# for. A deprecation warning from setuptools fails CI: pyproject.toml is ours to fix
# (setuptools prints them as "WARNING `...` is deprecated", without their class).
if ! python -m build --outdir "$scratch/dist" . >"$scratch/build.log" 2>&1 \
    || grep -qiE "deprecat" "$scratch/build.log"; then
    cat "$scratch/build.log"
    echo "wheel: the build failed or setuptools warned (log above)" >&2
    exit 1
fi

python - "$scratch/dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(sdist,) = dist.glob("adjointkit-*.tar.gz")
(wheel,) = dist.glob("adjointkit-*.whl")
with tarfile.open(sdist) as tar:
    in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
with zipfile.ZipFile(wheel) as whl:
    in_wheel = set(whl.namelist())
want_sdist = [
    "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "mkdocs.yml",
    "src/adjointkit/py.typed", "docs/index.md", "docs/img/discrete_adjoints.png",
    "examples/spiral_neural_ode.py", "benchmarks/gradients.py", "tests/conftest.py",
    ".ci/min-versions.txt",
]
want_wheel = ["adjointkit/py.typed", "adjointkit/__init__.py", "adjointkit/cli/_main.py"]
missing = [f"sdist: {n}" for n in want_sdist if n not in in_sdist]
missing += [f"wheel: {n}" for n in want_wheel if n not in in_wheel]
dist_info = [n for n in in_wheel if n.split("/")[0].endswith(".dist-info")]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in dist_info):
    missing.append("wheel: *.dist-info/licenses/LICENSE")
# The wheel holds the package and its metadata, nothing else.
stray = sorted(n for n in in_wheel if not n.startswith("adjointkit/") and n not in dist_info)
stray += sorted(n for n in in_wheel if "__pycache__" in n or n.endswith(".pyc"))
if missing or stray:
    sys.exit(f"wheel: missing {missing}, unexpected in the wheel {stray}")
print(f"wheel: {sdist.name} ({len(in_sdist)} files), {wheel.name} ({len(in_wheel)} files)")
PY

# A fresh environment that sees the installed jax, equinox, ... (no network), with
# the wheel alone installed into it: --force-reinstall because an editable install
# of the same version outside the venv would otherwise count as satisfying it.
python -m venv --system-site-packages "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$scratch"/dist/adjointkit-*.whl

# From outside the checkout, so that neither src/ nor the working directory can
# stand in for the installed package.
cd "$scratch"
"$py" - "$repo" <<'PY'
import importlib.metadata as md
import sys
import sysconfig
from importlib.resources import files
from pathlib import Path

import jax.numpy as jnp

import adjointkit as ak

repo = Path(sys.argv[1]).resolve()
installed = Path(sysconfig.get_paths()["purelib"]).resolve()
where = Path(ak.__file__).resolve()
assert where.is_relative_to(installed), f"adjointkit imported from {where}"
assert not where.is_relative_to(repo), f"adjointkit imported from {where}"
assert files("adjointkit").joinpath("py.typed").is_file(), "py.typed not installed"
meta = md.metadata("adjointkit")
assert meta["Version"] == ak.__version__, (meta["Version"], ak.__version__)
assert meta["License-Expression"] == "Apache-2.0", meta["License-Expression"]

sol = ak.solve(lambda t, y, args: -y, ak.Tsit5(), 0.0, 1.0, jnp.array(1.0), dt0=0.1)
assert abs(float(sol.ys[-1]) - float(jnp.exp(-1.0))) < 1e-6, sol.ys
print(f"wheel: adjointkit {ak.__version__} from {where.parent}, a solve gives e^-1")
PY
"$scratch/venv/bin/adjointkit" --version
echo "wheel: done in $((SECONDS - start)) s"
