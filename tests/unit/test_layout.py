"""
The package's layers, as C{docs/architecture.md} draws them:
imports run one way without circles, the pure core has no Twisted, and
below the tap nothing reads an option by its name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import primecount

PACKAGE = Path(primecount.__file__).parent

#: What each layer may import from the package, besides itself.
ALLOWED = {
    "core": set(),
    "metrics": {"core"},
    "journal": {"core", "metrics"},
    "server": {"core", "metrics", "journal"},
    "workers": {"core", "metrics", "journal", "server"},
    "compose": {"core", "metrics", "journal", "server", "workers"},
    "tap": {"core", "metrics", "journal", "server", "workers", "compose"},
    "cli": {"core", "metrics", "journal"},
    # Helpers that start real servers and clusters for tests and benchmarks:
    # they may use anything; no layer above may import them.
    "testing": {"core", "metrics", "journal", "server", "workers", "compose", "tap", "cli"},
}

#: The layers below the tap, where the options are unpacked: they take
#: typed arguments (the composition root, L{primecount.compose}, takes
#: the L{primecount.compose.Settings}).
BELOW_THE_TAP = ("compose", "workers", "server", "journal", "metrics", "core")

#: What the options of C{twistd primecount} are called when they are held:
#: a C{usage.Options} is a dict, passed around as either name.
OPTIONS_NAMES = ("options", "config")


def imports(path: Path) -> Iterator[str]:
    """
    The absolute module names C{path} imports (at any depth in the file).
    """
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def module_name(path: Path) -> str:
    """
    The dotted name of the package's module at C{path}.
    """
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str], name: str | None = None) -> Iterator[str]:
    """
    The modules of C{known} that C{path} imports, at any depth in the file
    (in functions and under C{TYPE_CHECKING} too): C{from a.b import c}
    imports the module C{a.b.c} if there is one, else C{a.b}. A package's
    C{__init__} is not counted for importing one of its modules.

    @param name: the module's dotted name (by default, from C{path}), for
        relative imports.
    """
    if name is None:
        name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in known:
                    yield full
                elif module in known:
                    yield module


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The import circles of C{graph} (module -> the modules it imports): each
    set of modules that import one another, directly or not, sorted.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        # Tarjan's strongly connected components.
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def option_names() -> set[str]:
    """
    The long names of the options of C{twistd primecount}.
    """
    from primecount.tap import PrimecountOptions

    names = {row[0] for row in PrimecountOptions.optFlags}
    names |= {row[0] for row in PrimecountOptions.optParameters}
    return names | {"listen", "range-listen"}


def option_reads(path: Path, names: set[str]) -> Iterator[str]:
    """
    Where C{path} reads options by their names: C{options[…]} or
    C{config[…]} (or any other use of a value so named), or any mapping
    subscripted with the name of an option (C{settings["max-line"]}).
    """
    source = path.read_text()
    for held in OPTIONS_NAMES:
        if f"{held}[" in source:
            yield f"{held}["
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Subscript | ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id in OPTIONS_NAMES:
                yield f"line {node.lineno}: {ast.unparse(node)}"
                continue
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and key.value in names:
                yield f"line {node.lineno}: {ast.unparse(node)}"


def layer_of(path: Path) -> str:
    """
    The layer a module of the package belongs to.
    """
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


class LayoutTests(SynchronousTestCase):
    """
    The dependency rules of the layout.
    """

    def modules(self) -> list[Path]:
        found = [p for p in PACKAGE.rglob("*.py") if layer_of(p) in ALLOWED]
        self.assertGreater(len(found), 30)
        return found

    def test_importsRunOneWay(self) -> None:
        """
        No module imports a layer above its own (tap → compose → workers →
        server → journal → metrics → core; cli uses core, metrics and
        journal).
        """
        wrong = []
        for path in self.modules():
            layer = layer_of(path)
            for name in imports(path):
                parts = name.split(".")
                if parts[0] != "primecount" or len(parts) < 2 or parts[1] not in ALLOWED:
                    continue
                target = parts[1]
                if target != layer and target not in ALLOWED[layer]:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
        self.assertEqual(wrong, [])

    def test_coreHasNoTwisted(self) -> None:
        """
        The core is plain Python: counting, primes, codecs, PROXY parsing,
        outcomes, option rules.
        """
        wrong = [
            f"{path.relative_to(PACKAGE)} imports {name}"
            for path in self.modules()
            if layer_of(path) == "core"
            for name in imports(path)
            if name.split(".")[0] == "twisted"
        ]
        self.assertEqual(wrong, [])

    def test_noGlobalReactorOutsideTheTap(self) -> None:
        """
        Library modules are given their reactor; only C{makeService} (the
        tap) and the command-line entry points pick the global one.
        """
        wrong = [
            str(path.relative_to(PACKAGE))
            for path in self.modules()
            if layer_of(path) not in ("tap", "cli")
            and "twisted.internet.reactor" in set(imports(path))
        ]
        self.assertEqual(wrong, [])

    def test_noImportCircles(self) -> None:
        """
        No module of the package imports itself through others, at the top
        of a module or inside a function alike.
        """
        paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
        known = set(paths)
        graph = {name: set(imported_modules(path, known)) - {name} for name, path in paths.items()}
        self.assertEqual(circles(graph), [])

    def test_circlesAreFound(self) -> None:
        """
        L{circles} finds a circle of any length, and only circles.
        """
        graph = {
            "a": {"b"},
            "b": {"c"},
            "c": {"a", "d"},
            "d": set(),
            "e": {"d", "f"},
            "f": {"e"},
        }
        self.assertEqual(circles(graph), [["a", "b", "c"], ["e", "f"]])
        self.assertEqual(circles({"a": {"b"}, "b": set()}), [])

    def test_importedModulesAtAnyDepth(self) -> None:
        """
        Imports inside functions and under C{TYPE_CHECKING} count; C{from
        package import module} names the module, C{from module import name}
        the module.
        """
        path = PACKAGE / "server" / "rangeprotocol.py"
        known = {module_name(p) for p in PACKAGE.rglob("*.py")}
        found = set(imported_modules(path, known))
        self.assertIn("primecount.server.primestream", found)
        self.assertIn("primecount.journal", found)
        self.assertNotIn("primecount.server", found)
        here = Path(self.mktemp())
        here.write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from primecount.server.rangeprotocol import RangeFactory\n"
            "def later():\n"
            "    from primecount.server import countprotocol\n"
        )
        self.assertEqual(
            set(imported_modules(here, known, "primecount.server.x")),
            {"primecount.server.rangeprotocol", "primecount.server.countprotocol"},
        )

    def test_noOptionNamesBelowTheTap(self) -> None:
        """
        Only the tap reads the options by their names: below it, nothing
        subscripts C{options} or C{config} (nor any mapping with an option's
        name) or reads them at all; components take typed arguments.
        """
        names = option_names()
        self.assertIn("max-connections", names)
        wrong = [
            f"{path.relative_to(PACKAGE)}: {read}"
            for path in self.modules()
            if layer_of(path) in BELOW_THE_TAP
            for read in option_reads(path, names)
        ]
        self.assertEqual(wrong, [])

    def test_optionReadsAreFound(self) -> None:
        """
        L{option_reads} finds the ways the options were read below the tap.
        """
        here = Path(self.mktemp())
        here.write_text(
            'limit = options["max-connections"]\n'
            "owner = options.owner\n"
            'line = settings["max-line"]\n'
            'port = keywords.get("port")\n'
        )
        self.assertEqual(
            list(option_reads(here, option_names())),
            [
                "options[",
                "line 1: options['max-connections']",
                "line 2: options.owner",
                "line 3: settings['max-line']",
            ],
        )
