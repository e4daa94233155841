# -*- test-case-name: tests.unit.test_docs -*-
"""
The documentation stays whole: the README stays a page a stranger reads in
five minutes, gives CI's own test command and maps every page of the site;
every relative link in it, in C{deploy/README.md} and in the site's pages
(C{docs/}) points to a file (and a heading) that exists; every repository
path they name exists; and the options page lists every option
C{twistd primecount --help} does.

The Sphinx build (C{tox -e docs}) checks the pages' links too, with
warnings as errors; these checks take a second, also cover the README, and
use GitHub's heading anchors, so that the links work where most people
read them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token
from twisted.trial.unittest import TestCase

from primecount.tap import Options

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: Kept short beside the files it describes; it points into docs/.
DEPLOY_README = ROOT / "deploy" / "README.md"

#: The most lines the README may have: what it is, the two set-up commands,
#: trying it, a map of the documentation. Everything else is in docs/.
README_MAX_LINES = 250

#: The top-level directories of the repository whose paths the pages name.
REPOSITORY_DIRECTORIES = ("benchmarks", "deploy", "docs", "primecount", "tests", "twisted", ".ci")

_PARSER = MarkdownIt("commonmark").enable("table")


def pages() -> list[Path]:
    """
    The READMEs and every Markdown page of the site.
    """
    return [README, DEPLOY_README, *sorted(DOCS.rglob("*.md"))]


def tokens(path: Path) -> list[Token]:
    """
    The Markdown tokens of C{path}, inline tokens with their children.
    """
    return _PARSER.parse(path.read_text(encoding="utf-8"))


def inline_tokens(path: Path) -> Iterator[Token]:
    """
    Every token inside a paragraph, heading or table cell of C{path} (not in
    code blocks).
    """
    for token in tokens(path):
        if token.type == "inline":
            yield from token.children or []


def heading_text(inline: Token) -> str:
    """
    The text of a heading as a reader sees it: Markdown's marks removed,
    code spans kept.
    """
    return "".join(
        child.content for child in inline.children or [] if child.type in ("text", "code_inline")
    )


def github_slug(text: str) -> str:
    """
    The anchor GitHub (and MyST, C{myst_heading_anchors}) gives a heading:
    lower case, punctuation removed, each space a hyphen.
    """
    kept = "".join(c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """
    The heading anchors of the Markdown file C{path}, a repeated heading's
    with GitHub's C{-1}, C{-2} suffixes.
    """
    found: set[str] = set()
    seen: dict[str, int] = {}
    stream = tokens(path)
    for opening, inline in pairwise(stream):
        if opening.type != "heading_open":
            continue
        slug = github_slug(heading_text(inline))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    """
    The targets of the Markdown links and images of C{path}.
    """
    for token in inline_tokens(path):
        if token.type == "link_open":
            yield str(token.attrGet("href"))
        elif token.type == "image":
            yield str(token.attrGet("src"))


def broken_link(page: Path, target: str) -> str | None:
    """
    Why C{target}, a link on C{page}, leads nowhere, or C{None} when it
    leads to an existing file (and heading). Links with a scheme
    (C{https:}, C{mailto:}) are not followed.
    """
    if re.match(r"[a-z][a-z0-9+.-]*:", target):
        return None
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    if not destination.exists():
        return "no such file"
    if not destination.is_relative_to(ROOT):
        return "outside the repository"
    if anchor:
        if destination.suffix != ".md":
            return "an anchor in a file that is not Markdown"
        if anchor not in anchors(destination):
            return f"no heading with the anchor #{anchor}"
    return None


def ignored(path: str) -> bool:
    """
    Whether C{.gitignore} names C{path}: files that exist only once made
    (C{benchmarks/results/}), never in a clone.
    """
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return path.rstrip("/") in {line.strip().rstrip("/") for line in lines}


def included(page: Path) -> bool:
    """
    Whether C{page} only shows another file of the repository (a MyST
    C{include} directive and nothing else).
    """
    stream = tokens(page)
    return len(stream) == 1 and stream[0].type == "fence" and stream[0].info.startswith("{include}")


#: A path of this repository inside a longer text: one of
#: L{REPOSITORY_DIRECTORIES} at the start of a word, not the end of another
#: path (C{/opt/primecount/...}, C{../deploy/...}).
_REPOSITORY_PATH = re.compile(
    rf"(?<![\w./-])(?:{'|'.join(map(re.escape, REPOSITORY_DIRECTORIES))})/[\w./-]*"
)

#: The packages of this repository that a page runs as modules
#: (C{python -m benchmarks.compare}).
REPOSITORY_PACKAGES = ("benchmarks", "primecount", "tests")

_MODULE_COMMAND = re.compile(r"\bpython3? -m ([\w.]+)")


def code_texts(path: Path) -> Iterator[str]:
    """
    The text of every code span and code block of C{path}, except the
    blocks that are MyST directives (C{{toctree}} names pages, not files).
    """
    for token in tokens(path):
        if token.type in ("fence", "code_block") and not token.info.startswith("{"):
            yield token.content
        elif token.type == "inline":
            for child in token.children or []:
                if child.type == "code_inline":
                    yield child.content


def repository_paths(path: Path) -> Iterator[str]:
    """
    The paths of this repository that C{path} names in its code spans and
    code blocks (C{`deploy/haproxy.cfg`}, C{python -m benchmarks.run_jmeter
    benchmarks/jmeter/original.jmx out.csv}), without a sentence's final
    full stop.
    """
    for text in code_texts(path):
        for found in _REPOSITORY_PATH.finditer(text):
            yield found.group().rstrip(".")


def repository_modules(path: Path) -> Iterator[str]:
    """
    The modules of this repository that C{path} runs with C{python -m} in
    its code spans and code blocks, except placeholders in capitals
    (C{python -m benchmarks.NAME}).
    """
    for text in code_texts(path):
        for found in _MODULE_COMMAND.finditer(text):
            parts = found.group(1).split(".")
            if parts[0] in REPOSITORY_PACKAGES and not any(part.isupper() for part in parts):
                yield found.group(1)


def runnable(module: str) -> bool:
    """
    Whether C{python -m module} runs something from this checkout: a
    module file, or a package with a C{__main__}.
    """
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


class ReadmeTests(TestCase):
    """
    The README a stranger reads first.
    """

    def test_short(self) -> None:
        """
        The README has at most L{README_MAX_LINES} lines.
        """
        lines = README.read_text(encoding="utf-8").count("\n")
        self.assertLessEqual(lines, README_MAX_LINES)

    def test_testCommandIsCIs(self) -> None:
        """
        The README's test command is the one C{.ci/run} runs, as it is
        written there.
        """
        script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        command = script[-1].strip()
        self.assertIn("tox", command)
        self.assertIn(command, README.read_text(encoding="utf-8"))

    def test_linksToEveryPage(self) -> None:
        """
        The README's map of the documentation links to every page of the
        site (the API reference is generated; a page that only includes a
        file of the repository is reached through that file).
        """
        linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
        missing = [
            str(page.relative_to(ROOT))
            for page in DOCS.rglob("*.md")
            if page.resolve() not in linked and page.parent.name != "api" and not included(page)
        ]
        self.assertEqual(missing, [])


class LinkTests(TestCase):
    """
    Relative links and named paths lead somewhere.
    """

    def test_relativeLinksResolve(self) -> None:
        """
        Every relative link of the README and the pages points to a file of
        the repository that exists and, with an anchor, to a heading of
        that file.
        """
        broken = [
            f"{page.relative_to(ROOT)}: {target}: {why}"
            for page in pages()
            for target in links(page)
            if (why := broken_link(page, target)) is not None
        ]
        self.assertEqual(broken, [])

    def test_repositoryPathsExist(self) -> None:
        """
        Every path of the repository that the README or a page names in a
        code span or a code block exists (a module moved without its
        documentation fails here), unless it is one that C{.gitignore}
        names.
        """
        missing = [
            f"{page.relative_to(ROOT)}: {name}"
            for page in pages()
            for name in repository_paths(page)
            if not (ROOT / name).exists() and not ignored(name)
        ]
        self.assertEqual(missing, [])

    def test_modulesRun(self) -> None:
        """
        Every module of the repository that the README or a page runs with
        C{python -m} exists and can be run (a benchmark renamed without its
        documentation fails here).
        """
        missing = [
            f"{page.relative_to(ROOT)}: python -m {name}"
            for page in pages()
            for name in repository_modules(page)
            if not runnable(name)
        ]
        self.assertEqual(missing, [])

    def test_pathsAndModulesAreFound(self) -> None:
        """
        L{repository_paths} and L{repository_modules} find what a page names
        in code spans and code blocks, and leave alone paths outside the
        repository, directives and placeholders; L{runnable} tells a module
        from a package without C{__main__} and from nothing.
        """
        page = Path(self.mktemp() + ".md")
        page.write_text(
            "Run `python -m benchmarks.compare --markdown benchmarks/RESULTS.md`.\n\n"
            "    python -m benchmarks.gone benchmarks/gone.jmx /opt/primecount/bin\n"
            "    python3 -m benchmarks.NAME; python -m pip install .\n\n"
            "```{toctree}\nbenchmarks/index\n```\n\n"
            "See `deploy/haproxy.cfg`.\n",
            encoding="utf-8",
        )
        self.assertEqual(
            list(repository_paths(page)),
            ["benchmarks/RESULTS.md", "benchmarks/gone.jmx", "deploy/haproxy.cfg"],
        )
        self.assertEqual(list(repository_modules(page)), ["benchmarks.compare", "benchmarks.gone"])
        self.assertTrue(runnable("benchmarks.compare"))
        self.assertTrue(runnable("primecount"))
        self.assertFalse(runnable("benchmarks.gone"))
        self.assertFalse(runnable("primecount.server"))

    def test_githubSlug(self) -> None:
        """
        L{github_slug} gives GitHub's anchors: punctuation dropped, spaces
        (each of them) made hyphens, letters of any script kept.
        """
        self.assertEqual(github_slug("Memory: --max-memory"), "memory---max-memory")
        self.assertEqual(github_slug("haproxy.cfg"), "haproxycfg")
        self.assertEqual(
            github_slug("Reading it: primecount journal"), "reading-it-primecount-journal"
        )
        self.assertEqual(github_slug("Qué sí"), "qué-sí")

    def test_brokenLinksAreFound(self) -> None:
        """
        L{broken_link} reports a missing file, a missing heading and an
        anchor into a file that has no headings, and passes good links.
        """
        page = DOCS / "index.md"
        self.assertIsNone(broken_link(page, "user/options.md#bad-values"))
        self.assertIsNone(broken_link(page, "https://example.com/x.md"))
        self.assertEqual(broken_link(page, "user/nothing.md"), "no such file")
        self.assertEqual(
            broken_link(page, "user/options.md#nothing"), "no heading with the anchor #nothing"
        )
        self.assertEqual(
            broken_link(page, "../deploy/haproxy.cfg#x"),
            "an anchor in a file that is not Markdown",
        )


class OptionsPageTests(TestCase):
    """
    The options page documents every option.
    """

    def test_everyOptionListed(self) -> None:
        """
        The table of C{docs/user/options.md} has a row for every option of
        C{twistd primecount --help}, named in its first column.
        """
        rows: set[str] = set()
        first = False
        stream = tokens(DOCS / "user" / "options.md")
        for opening, inline in pairwise(stream):
            if opening.type == "tr_open":
                first = True
            elif opening.type == "td_open" and first:
                first = False
                rows.update(
                    child.content for child in inline.children or [] if child.type == "code_inline"
                )
        options = {f"--{name.rstrip('=')}" for name in Options().longOpt}
        self.assertEqual(sorted(options - rows), [])
