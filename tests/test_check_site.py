""".ci/check_site.py, the check that the built docs site fetches nothing from
elsewhere, on small hand-written pages (no site build: a few milliseconds)."""

import importlib.util
import pathlib

import pytest


_PATH = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "check_site.py"
_spec = importlib.util.spec_from_file_location("check_site", _PATH)
check_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_site)

_MATHJAX = '<script src="../assets/mathjax/tex-svg.js"></script>'


@pytest.mark.parametrize(
    "snippet, url",
    [
        ('<script src="https://cdn.example.org/mathjax.js"></script>', "https"),
        ('<script src="//cdn.example.org/x.js"></script>', "//cdn"),
        ('<link rel="stylesheet" href="http://example.org/a.css">', "http://"),
        ('<link rel="preconnect" href="https://fonts.example.org">', "fonts"),
        ('<img srcset="a.png 1x, https://example.org/b.png 2x">', "b.png"),
        ("<style>@import 'https://example.org/font.css';</style>", "font.css"),
        (
            "<style>@font-face { src: url(https://example.org/f.woff2) }</style>",
            "f.woff2",
        ),
        ("<div style=\"background: url('https://example.org/i.png')\"></div>", "i.png"),
    ],
)
def test_external_loads_are_reported_with_page_and_url(snippet, url):
    problems = check_site.check_html(f"<html>{snippet}</html>", "guide/index.html")
    assert len(problems) == 1, problems
    assert problems[0].startswith("guide/index.html: loads an external resource")
    assert url in problems[0]


def test_links_and_local_resources_are_allowed():
    page = (
        '<a href="https://github.com/patrick-kidger/diffrax">Diffrax</a>'
        '<script src="../assets/javascripts/bundle.js"></script>'
        '<link rel="stylesheet" href="../stylesheets/extra.css">'
        '<img src="data:image/png;base64,AAAA">'
        "<style>.a { background: url(../img/x.png) }</style>"
    )
    assert check_site.check_html(page, "guide/index.html") == []


def test_css_files_are_checked():
    css = ".a { src: url('fonts/local.woff2') }\n@import url(https://x.org/a.css);"
    problems = check_site.check_css(css, "assets/extra.css")
    assert problems == [
        "assets/extra.css: loads an external resource: https://x.org/a.css"
    ]


def test_math_needs_the_local_mathjax():
    math = '<span class="arithmatex">\\(x\\)</span>'
    (problem,) = check_site.check_html(math, "p/index.html")
    assert "has formulas but loads no MathJax" in problem
    assert check_site.check_html(math + _MATHJAX, "p/index.html") == []


def test_private_names_on_api_pages_are_reported():
    heading = '<h3 id="adjointkit._problem.Problem">Problem</h3>'
    text = "<p>runs <code>adjointkit._integrate.run</code></p>"
    problems = check_site.check_html(heading + text, "api/solve/index.html")
    assert len(problems) == 2, problems
    assert "private adjointkit._integrate:" in problems[0]  # sorted by name
    assert "private adjointkit._problem:" in problems[1]
    public = '<h3 id="adjointkit.solvers.SolverStep">SolverStep</h3>'
    assert check_site.check_html(public, "api/solvers/index.html") == []


def test_missing_local_files_and_the_whole_site(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "here.js").write_text("")
    (tmp_path / "index.html").write_text(
        '<script src="assets/here.js"></script><script src="/assets/gone.js"></script>'
    )
    (tmp_path / "a.css").write_text("@import 'https://x.org/b.css';")
    problems = check_site.check_site(tmp_path)
    assert problems == [
        "a.css: loads an external resource: https://x.org/b.css",
        "index.html: loads /assets/gone.js, which is not in the site",
    ]
    assert check_site.main([str(tmp_path)]) == 1
    (tmp_path / "a.css").write_text("")
    (tmp_path / "index.html").write_text('<script src="assets/here.js"></script>')
    assert check_site.main([str(tmp_path)]) == 0
