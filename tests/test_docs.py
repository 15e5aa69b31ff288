"""Every relative link and image in README.md and docs/ points at a file that exists
(and at a heading that exists, for links with #anchors into Markdown files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            out.add(title.replace(" ", "-"))
    return out


def _targets(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks are not links
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(page):
    missing = []
    for target in _targets(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        broken_anchor = anchor and dest.suffix == ".md" and anchor not in _anchors(dest)
        if not dest.exists() or broken_anchor:
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: {missing}"


def test_the_readme_is_the_first_day_not_the_manual():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move reference material to docs/"


# Every file the repository cites exists in it: a path in a docstring, comment or page
# (``byzshield/...``, ``docs/...``, ``tests/...``, ...), a bare ``NAME.md`` (some file of
# that name in the repository), and every ``byzshield.module.Name`` reference. In Python
# files the docstrings and comments count (their strings are data: a store key, a misspelt
# name a test refuses); in the tests, the docstrings.
CODE = [
    *sorted(p for d in ("byzshield", "benchmarks", "launch") for p in (ROOT / d).rglob("*.py")),
    *sorted((ROOT / "conf").rglob("*.yaml")),
    ROOT / "fabfile.py",
    ROOT / "setup.py",
    *PAGES,
]
TESTS = sorted((ROOT / "tests").rglob("*.py"))
PATH = re.compile(r"(?<![\w/.-])((?:byzshield|docs|tests|benchmarks|conf|launch)/[\w./*-]*[\w/*])")
BARE_MD = re.compile(r"(?<![\w/.-])([A-Za-z][\w-]*\.md)\b")
DOTTED = re.compile(r"(?<![\w.])(byzshield(?:\.[A-Za-z_]\w*)+)")
REPO_FILES = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts and "venv" not in p.parts}
REPO_FILES |= {"pivot.md"}  # written by the report (--pivot) into its output folder, none committed


def _prose(path: Path, *, comments: bool) -> str:
    """A Python file's docstrings (and comments): where it cites, not its data."""
    import ast
    import io
    import tokenize

    tree = ast.parse(path.read_text())
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, kinds))]
    parts = [ast.get_docstring(n) or "" for n in nodes]
    if comments:
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        parts += [t.string for t in tokens if t.type == tokenize.COMMENT]
    return "\n".join(parts)


def _cited_paths(text: str):
    for path in PATH.findall(text):
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if "*" not in path and ("." in last or path.endswith("/")):  # a file, or a folder/
            yield path.rstrip(".")


def _resolves(dotted: str) -> bool:
    import importlib
    import importlib.util

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            rest = parts[i:]
            return not rest or hasattr(importlib.import_module(name), rest[0])
    return False


@pytest.mark.parametrize("source", CODE + TESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_and_module_a_source_cites_is_in_the_repository(source):
    if source.suffix == ".py":
        text = _prose(source, comments=source not in TESTS)
    else:
        text = source.read_text()
    missing = [p for p in _cited_paths(text) if not (ROOT / p).exists()]
    missing += [m for m in BARE_MD.findall(text) if m not in REPO_FILES]
    missing += [d for d in set(DOTTED.findall(text)) if not _resolves(d)]
    assert not missing, f"{source.relative_to(ROOT)} cites what the repository lacks: {missing}"
