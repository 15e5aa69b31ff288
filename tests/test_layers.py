"""Layers point one way: the pure core never imports a command line, the report, the
trainer, an engine or the config; the config imports none of the front ends. Every
import counts, also those inside functions (read from the source, nothing is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "byzshield"

CORE = {
    "placement",
    "adversary",
    "vote",
    "aggregators",
    "attacks",
    "protocol",
    "step",
    "shards",
    "omniscient",
    "digest",
    "data",
    "networks",
    "gradients",
    "batched",
    "paired",
}
"""Math without ranks, processes, files of runs or command lines (STYLE.md)."""

FRONT_ENDS = {
    "overrides",
    "launcher",
    "train",
    "trainer",
    "engines",
    "report",
    "placement_cli",
    "evaluate",
    "slurm",
    "api",
    "runfolder",
    "comm",
    "erasures",
}
"""What sits above the core and the config: the loop, the engines, the command lines."""

ALLOWED = {
    **{name: CORE for name in CORE},
    "config": CORE,  # typed options that build the core's objects
}


def imports_of(path: Path) -> set[str]:
    """The byzshield modules (first component below the package) ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "byzshield":  # from byzshield import x
                names = [f"byzshield.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "byzshield" and len(parts) > 1:
                found.add(parts[1])
    return found


def module_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_lower_layer_imports_nothing_above_it(path):
    module = module_of(path)
    if module not in ALLOWED or path.name == "__main__.py":  # an entry point sits on top
        return
    above = sorted(imports_of(path) - ALLOWED[module] - {module, "conf"})
    assert not above, f"{path.relative_to(PACKAGE)} ({module}) imports {above}"


def test_the_layers_cover_every_module():
    modules = {module_of(p) for p in SOURCES} - {"__init__"}
    assert modules <= CORE | FRONT_ENDS | {"config"}, modules - CORE - FRONT_ENDS


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from byzshield.report import main\n    import byzshield.train\n"
    )
    assert imports_of(source) == {"report", "train"}


def test_a_module_past_a_readers_span_says_why_in_its_opening_comment():
    """No module over ~600 lines without a reason stated in its docstring ("Length ...")."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 620:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Length (" not in doc:
                long.append(f"{path.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
    assert not long, f"long modules without a stated reason: {long}"
