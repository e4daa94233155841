"""
Sphinx configuration of primecount's documentation site.

The prose is MyST Markdown (``docs/**/*.md``); the API reference is built by
pydoctor from the epytext docstrings (``L{…}``, ``C{…}``) and served under
``api/``. Both fail the build on a warning (``tox -e docs`` runs Sphinx with
``-W``, and every line pydoctor prints becomes a Sphinx warning), so a broken
cross-reference in a docstring or a page fails CI.
"""

import pathlib

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
