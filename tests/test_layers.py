"""The folders are the layers, and the layers point one way.

Each folder of the package is a layer; a module imports only from its own layer and the
layers below it (docs/architecture.md names them). The graph of imports between modules
has no circle, and no module imports a private module (``_name``) or a private name of
another package. Every import counts, also those inside functions and under
``TYPE_CHECKING`` (read from the source, nothing is run). A module stays short enough to
read in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "byzshield"

LAYERS = [
    {"design"},  # placements, the worst-case search
    {"compute"},  # seeds and sampling, datasets, networks, parameter vectors, gradients
    {"detection"},  # the disagreement graph and its certificate, relabelling, evasion
    {"attacks"},  # what Byzantine workers send
    {"aggregators"},  # robust rules on an (n, d) stack
    {"server"},  # everything that decides the next gradient from what arrived
    {"config"},  # typed options that build the objects above
    {"training"},  # the loop, evaluation, run folders
    {"engines"},  # simulate, torchrun, lockstep
    # front ends: the command lines, the report, the Python API
    {"cli", "report", "placement", "train", "evaluate", "slurm", "api", "comm", "__init__"},
]
"""Bottom first. A unit is a folder or a module directly in the package."""

LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}

MAX_LINES = 600
"""A module past this many lines holds more than one concern."""

# What the redesign has yet to fix while it is done in steps. Each check fails on a
# violation not listed here, and on a listed one that is gone: the lists only shrink.
PENDING_ABOVE: set[str] = set()
PENDING_PRIVATE: set[str] = set()
PENDING_CIRCLES: set[str] = set()
PENDING_LONG: set[str] = set()


def check(found: set[str], pending: set[str]) -> None:
    assert not found - pending, sorted(found - pending)
    assert not pending - found, (
        f"fixed, so take them off the pending list: {sorted(pending - found)}"
    )


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a module: its folder below the package, or its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every byzshield import of ``path``: ``from m import x`` gives
    (m, x), ``import m`` gives (m, None). Inside functions and TYPE_CHECKING too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    importer = module_name(path) if path.is_relative_to(PACKAGE) else "byzshield"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "byzshield"]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, importer, path.name == "__init__.py")
            if module and module.split(".")[0] == "byzshield":
                found += [(module, a.name) for a in node.names]
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MODULES = {module_name(p): p for p in SOURCES}


def targets(module: str, name: str | None) -> str:
    """The module an import reaches: ``from byzshield.server import update`` reaches
    byzshield.server.update (a module); ``from byzshield.server.update import Copies``
    reaches byzshield.server.update."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for module, name in imports_of(path):
            target = targets(module, name)
            if target != m and target in MODULES:
                edges[m].add(target)
    return edges


def test_every_module_is_in_a_layer():
    missing = sorted({unit_of(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, f"in no layer: {missing} (add them to LAYERS and docs/architecture.md)"


def test_a_module_imports_only_its_own_layer_and_those_below():
    found = set()
    for m, path in MODULES.items():
        layer = LAYER_OF.get(unit_of(m), len(LAYERS))
        for module, name in imports_of(path):
            target = targets(module, name)
            if LAYER_OF.get(unit_of(target), -1) > layer:
                found.add(f"{m} imports {target}")
    check(found, PENDING_ABOVE)


def test_no_module_imports_a_private_module_or_name_of_another_package():
    bad = set()
    for m, path in MODULES.items():
        package = m.rsplit(".", 1)[0] if path.name != "__init__.py" else m
        for module, name in imports_of(path):
            target = targets(module, name)
            owner = (
                target.rsplit(".", 1)[0]
                if MODULES.get(target, Path()).name != "__init__.py"
                else target
            )
            private_module = any(
                part.startswith("_") and part != "__init__" for part in target.split(".")
            )
            private_name = name is not None and name.startswith("_") and target == module
            if (private_module or private_name) and owner != package:
                bad.add(f"{m} imports {target}{'' if target != module else f'.{name}'}")
    check(bad, PENDING_PRIVATE)


def test_the_imports_make_no_circle():
    edges, seen, done, circles = graph(), set(), set(), []

    def visit(m: str, trail: list[str]) -> None:
        seen.add(m)
        for n in sorted(edges[m]):
            if n in trail:
                circles.append(" -> ".join(trail[trail.index(n) :] + [n]))
            elif n not in seen:
                visit(n, [*trail, n])
        done.add(m)

    for m in sorted(edges):
        if m not in seen:
            visit(m, [m])
    check(set(circles), PENDING_CIRCLES)


def test_no_module_is_longer_than_a_reader_reads_in_one_sitting():
    long = {str(p.relative_to(PACKAGE)) for p in SOURCES if p.read_text().count("\n") > MAX_LINES}
    check(long, PENDING_LONG)


def test_the_checks_see_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from byzshield.server import update\n"
        "def f():\n    from byzshield.report import main\n    import byzshield.train\n"
    )
    assert sorted(imports_of(source), key=str) == [
        ("byzshield.report", "main"),
        ("byzshield.server", "update"),
        ("byzshield.train", None),
    ]
