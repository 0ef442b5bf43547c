"""Check a built documentation site for what it needs from elsewhere.

    python .ci/check_site.py site/

Fails (exit status 1, one line per problem: file, then what is wrong) when

- a page or stylesheet loads anything from another host: a script, a stylesheet,
  a font, an image, a frame, or a `preconnect`/`preload` hint (links a reader
  clicks, `<a href>`, are not loads and are allowed);
- a page loads a local script or stylesheet that is not in the site;
- a page has formulas but loads no MathJax from the site itself;
- an API page documents a private name (`adjointkit._...`).

Only the standard library: CI runs it right after `mkdocs build --strict`.
"""

import html.parser
import pathlib
import posixpath
import re
import sys
import urllib.parse


# (tag, attribute) pairs whose URL the browser fetches by itself.
_LOADED = {
    ("script", "src"),
    ("img", "src"),
    ("img", "srcset"),
    ("source", "src"),
    ("source", "srcset"),
    ("iframe", "src"),
    ("embed", "src"),
    ("object", "data"),
    ("video", "src"),
    ("video", "poster"),
    ("audio", "src"),
    ("track", "src"),
    ("input", "src"),
}
# <link rel=...> values that make the browser fetch or connect.
_LINK_LOADS = {
    "stylesheet",
    "preload",
    "prefetch",
    "preconnect",
    "dns-prefetch",
    "modulepreload",
    "icon",
    "manifest",
}
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)|@import\s+(['"])(.*?)\3""", re.I)
_PRIVATE = re.compile(r"\badjointkit(?:\.[A-Za-z]\w*)*\._\w+")
_MATHJAX = "assets/mathjax/"


def is_external(url: str) -> bool:
    """Whether loading `url` would reach another host."""
    url = url.strip()
    if url.startswith("//"):
        return True
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    return scheme not in ("", "data", "blob", "about", "javascript")


def css_urls(css: str) -> list[str]:
    """The URLs a stylesheet fetches (`url(...)` and `@import`)."""
    return [
        m.group(2) if m.group(2) is not None else m.group(4)
        for m in _CSS_URL.finditer(css)
    ]


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.loads: list[str] = []  # URLs the browser fetches
        self.scripts: list[str] = []  # local scripts and stylesheets
        self.has_math = False
        self._in_style = False
        self.text: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        if "arithmatex" in attrs.get("class", "").split():
            self.has_math = True
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name, value in attrs.items():
            if (tag, name) in _LOADED:
                if name == "srcset":  # "a.png 1x, b.png 2x"
                    urls = [p.split()[0] for p in value.split(",") if p.strip()]
                else:
                    urls = [value]
                self.loads.extend(urls)
                if tag == "script":
                    self.scripts.append(value)
            elif name == "style":
                self.loads.extend(css_urls(value))
        if tag == "link":
            rels = set(attrs.get("rel", "").lower().split())
            if rels & _LINK_LOADS and attrs.get("href"):
                self.loads.append(attrs["href"])
                if "stylesheet" in rels:
                    self.scripts.append(attrs["href"])
        if tag == "style":
            self._in_style = True

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.loads.extend(css_urls(data))
        else:
            self.text.append(data)


def check_html(text: str, path: str = "page.html", site: pathlib.Path | None = None):
    """Problems with one page, as 'path: message' lines.

    `path` is the page's path relative to the site root; with `site`, local
    scripts and stylesheets must exist under it.
    """
    page = _Page()
    page.feed(text)
    problems = []
    for url in page.loads:
        if is_external(url):
            problems.append(f"{path}: loads an external resource: {url}")
    local = [
        u for u in page.scripts if not is_external(u) and not u.startswith("data:")
    ]
    if site is not None:
        for url in local:
            target = urllib.parse.urlsplit(url).path
            if target.startswith("/"):  # from the site's root (404.html)
                resolved = target.lstrip("/")
            else:
                resolved = posixpath.normpath(
                    posixpath.join(posixpath.dirname(path), target)
                )
            if not (site / resolved).is_file():
                problems.append(f"{path}: loads {url}, which is not in the site")
    if page.has_math and not any(
        _MATHJAX in u and not is_external(u) for u in page.scripts
    ):
        problems.append(
            f"{path}: has formulas but loads no MathJax from {_MATHJAX} "
            "(see docs/mathjax_bundle.py and mkdocs.yml's extra_javascript)"
        )
    if path.startswith("api/"):
        private = sorted(
            {m.group(0) for i in page.ids if (m := _PRIVATE.match(i))}
            | set(_PRIVATE.findall(" ".join(page.text)))
        )
        for name in private:
            problems.append(
                f"{path}: documents or names the private {name}: the API "
                "reference shows only what `adjointkit` and its public "
                "subpackages export"
            )
    return problems


def check_css(text: str, path: str = "style.css") -> list[str]:
    """Problems with one stylesheet, as 'path: message' lines."""
    return [
        f"{path}: loads an external resource: {url}"
        for url in css_urls(text)
        if is_external(url)
    ]


def check_site(site: pathlib.Path) -> list[str]:
    """Problems with every page and stylesheet of the built site at `site`."""
    problems = []
    for file in sorted(site.rglob("*")):
        relative = file.relative_to(site).as_posix()
        if file.suffix == ".html":
            problems += check_html(file.read_text(encoding="utf-8"), relative, site)
        elif file.suffix == ".css":
            problems += check_css(file.read_text(encoding="utf-8"), relative)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python .ci/check_site.py SITE_DIR", file=sys.stderr)
        return 2
    site = pathlib.Path(argv[0])
    if not (site / "index.html").is_file():
        print(
            f"{site}: no index.html; build the site first (mkdocs build --strict)",
            file=sys.stderr,
        )
        return 2
    problems = check_site(site)
    for line in problems:
        print(line)
    pages = sum(1 for _ in site.rglob("*.html"))
    if problems:
        print(f"check_site: {len(problems)} problem(s) in {site}", file=sys.stderr)
        return 1
    print(f"check_site: {pages} pages, no external resources, math served locally")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
