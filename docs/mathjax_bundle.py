"""A MkDocs hook: MathJax is served from the site itself, not from a CDN.

The files come from the `django-static-mathjax` distribution (the `docs` extra),
which carries MathJax 3's browser build as package data; it has no dependency on
Django. The hook adds the parts the site needs to the build, under
`assets/mathjax/`:

- `tex-svg.js`: TeX input (with the AMS macros: `\\binom`, `\\boxed`, `pmatrix`),
  SVG output, the contextual menu and assistive MathML. SVG output draws the
  glyphs from paths inside the script: no font file is loaded, so formulas look
  the same whatever fonts the reader has, even from `file://` pages (where
  browsers refuse web fonts);
- `input/tex/extensions/`, `a11y/`, `ui/`, `adaptors/`: what MathJax loads on
  demand (a TeX package that a formula names, the menu's accessibility options).

`mkdocs.yml` loads `javascripts/mathjax.js` (the settings) before
`assets/mathjax/tex-svg.js`. Loaded by `mkdocs.yml` (`hooks:`); not part of
the package.
"""

import importlib.util
import pathlib

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files


TARGET = "assets/mathjax"
_PARTS = [
    "tex-svg.js",
    "input/tex/extensions",
    "a11y",
    "ui",
    "adaptors",
]


def mathjax_root() -> pathlib.Path:
    """The directory of MathJax's browser build (`es5/`) in the installed package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise PluginError(
            "MathJax is not installed: the docs need the `django-static-mathjax` "
            "package. Install the docs extra: pip install -e '.[docs]'"
        )
    root = pathlib.Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (root / "tex-svg.js").is_file():
        raise PluginError(
            f"{root / 'tex-svg.js'} not found: the installed `mathjax` package is "
            "not django-static-mathjax's (MathJax 3). Install the docs extra: "
            "pip install -e '.[docs]'"
        )
    return root


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = mathjax_root()
    for part in _PARTS:
        path = root / part
        paths = [path] if path.is_file() else sorted(path.rglob("*"))
        for source in paths:
            if source.is_file():
                uri = f"{TARGET}/{source.relative_to(root).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
