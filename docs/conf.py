"""
Sphinx configuration of primecount's documentation site.

The prose is MyST Markdown (``docs/**/*.md``); the API reference is built by
pydoctor from the epytext docstrings (``L{…}``, ``C{…}``) and served under
``api/``. Both fail the build on a warning (``tox -e docs`` runs Sphinx with
``-W``, and every line pydoctor prints becomes a Sphinx warning), so a broken
cross-reference in a docstring or a page fails CI.

The pages link to each other, and to files of the repository outside
``docs/``, by relative path, so that they read on GitHub as well. A link to a
file that is not Markdown (``../../deploy/haproxy.cfg``) is published with the
site as a download; a link to a Markdown file outside ``docs/`` must name a
page of the site that shows it (``OUTSIDE_PAGES``), or the build fails.
"""

import pathlib

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx

ROOT = pathlib.Path(__file__).resolve().parent.parent

project = "primecount"
author = "the primecount authors"
copyright = "2026, the primecount authors"

extensions = [
    "myst_parser",
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "primecount"

# The API reference: pydoctor over the package, warnings are errors.
pydoctor_url_path = "api/"
pydoctor_args = [
    "--project-name=primecount",
    "--docformat=epytext",
    "--html-output={outdir}/api",
    "--warnings-as-errors",
    str(ROOT / "primecount"),
]
intersphinx_mapping: dict[str, tuple[str, object]] = {}

#: Markdown files outside docs/ that pages link to (by their path in the
#: repository), and the page of this site that includes each.
OUTSIDE_PAGES = {
    "benchmarks/RESULTS.md": "benchmarks/results",
}


def link_outside_pages(app: Sphinx, doctree: nodes.document) -> None:
    """
    Point a page's link to a Markdown file outside ``docs/`` (which MyST
    takes for a missing page) at the page of the site that includes that
    file. Links to other such files are left alone: MyST reports them.
    """
    srcdir = pathlib.Path(app.srcdir).resolve()
    for node in doctree.findall(addnodes.pending_xref):
        if node.get("refdomain") != "doc" or node.get("reftype") != "myst":
            continue
        target = srcdir / (node["reftarget"] + ".md")
        try:
            name = target.resolve().relative_to(ROOT).as_posix()
        except ValueError:
            continue
        if name in OUTSIDE_PAGES:
            node["reftarget"] = OUTSIDE_PAGES[name]


def setup(app: Sphinx) -> dict[str, bool]:
    """
    Register ``link_outside_pages``.
    """
    app.connect("doctree-read", link_outside_pages, priority=100)
    return {"parallel_read_safe": True}
