"""
The package's layers, as the README's "Architecture" section draws them:
imports run one way, and the pure core has no Twisted.
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
    "tap": {"core", "metrics", "journal", "server", "workers"},
    "cli": {"core", "metrics", "journal"},
    # Helpers that start real servers and clusters for tests and benchmarks:
    # they may use anything; no layer above may import them.
    "testing": {"core", "metrics", "journal", "server", "workers", "tap", "cli"},
}


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


def module_of(path: Path) -> str:
    """
    The dotted name of a module of the package (a package by its name).
    """
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_circles(paths: list[Path]) -> list[list[str]]:
    """
    The import circles among the modules at C{paths}: the groups of two or
    more modules that import one another, directly or not (imports made
    only for type checking count too: a circle is a circle to a reader).
    A module importing its own package does not count.
    """
    names = {module_of(path): path for path in paths}

    def resolve(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {
        module: {
            target
            for name in imports(path)
            if (target := resolve(name)) is not None
            and target != module
            and not module.startswith(target + ".")
        }
        for module, path in names.items()
    }
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        circles.append(sorted(group))
    return circles


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
        No module imports a layer above its own (tap → workers → server →
        journal → metrics → core; cli uses core, metrics and journal;
        nothing imports testing, which may use them all).
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

    def test_noImportCirclesInTheClientToolsAndTheTestingHelpers(self) -> None:
        """
        No module of C{cli} or C{testing} takes part in an import circle
        (the load generator's pieces meet at small protocols instead).
        """
        circles = import_circles(list(PACKAGE.rglob("*.py")))
        wrong = [
            circle
            for circle in circles
            if any(m.split(".")[1] in ("cli", "testing") for m in circle)
        ]
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
