"""Every committed results table, recomputed from the committed runs archives.

    python docs/results/regenerate.py            # rewrite the tables in docs/results/
    python docs/results/regenerate.py --check    # recompute into a temporary folder and
                                                 # compare with what is committed
    python docs/results/regenerate.py --check verdict detection   # some folders only

Each results folder holds ``runs.jsonl.gz``, the runs its tables were computed from
(every run's config, status and evaluations: ``byzshield.report.archive``), written when
the tables were made from the run folders. This script recomputes each folder's tables
from it, with the same options as the command in the folder's README, and, for the
tables quoted in docs/results/README.md and the README's Results, checks that the text
quoted there is the text the tables print. ``--check`` exits 1 and names every file or
quote that differs; ``tests/test_results.py`` runs it.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import io
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

from byzshield.report import ARCHIVE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(name: str, out: Path, **options) -> list[str]:
    from byzshield.report import write_report

    write_report([HERE / name / ARCHIVE], out, plots=False, eps=False, **options)
    return [
        "report.csv",
        "runs.csv",
        *(["worst.csv", "worst.md"] if "worst_over" in options else []),
    ]


def heterogeneity(out: Path) -> list[str]:
    return _report("heterogeneity", out, worst_over="attack")


def strongest_attacks(out: Path) -> list[str]:
    return _report("strongest_attacks", out, worst_over="attack")


def detection(out: Path) -> list[str]:
    run = _module(HERE / "detection" / "run.py")
    run.HERE = out  # its tables go to out
    with redirect_stdout(io.StringIO()):
        run.tables(HERE / "detection" / ARCHIVE, 300)
    return ["results.csv", "results.md"]


def verdict(out: Path) -> list[str]:
    tables = _module(HERE / "verdict" / "tables.py")
    with redirect_stdout(io.StringIO()):
        return tables.write(HERE / "verdict" / ARCHIVE, out, figures=False)


def verdict_first_pass(out: Path) -> list[str]:
    tables = _module(HERE / "verdict" / "tables.py")
    with redirect_stdout(io.StringIO()):
        return tables.write(HERE / "verdict/first_pass" / ARCHIVE, out, figures=False, steps=300)


FOLDERS = {
    "heterogeneity": heterogeneity,
    "strongest_attacks": strongest_attacks,
    "detection": detection,
    "verdict": verdict,
    "verdict/first_pass": verdict_first_pass,
}
"""Results folder -> how its tables are recomputed (into a folder; returns the files)."""

QUOTES = {
    "verdict": [*((name, HERE / "verdict" / "README.md")
                  for name in ("summary.md", "verdict.md", "plateau.md")),
                ("summary_short.md", ROOT / "README.md")],
    "detection": [("results.md", HERE / "detection" / "README.md")],
}  # fmt: skip
"""Results folder -> (a table it writes, a document that quotes it whole, minus its
first line when that is a comment)."""


def _same(recomputed: Path, committed: Path) -> bool:
    """Equal files; Markdown compared without its figure links (drawn only with plots)."""
    if committed.suffix != ".md":
        return filecmp.cmp(recomputed, committed, shallow=False)

    def text(path: Path) -> str:
        lines = path.read_text(encoding="utf-8").splitlines()
        return "\n".join(ln for ln in lines if not ln.startswith("![")).rstrip()

    return text(recomputed) == text(committed)


def _quoted(table: str, document: Path) -> bool:
    lines = [ln for ln in table.splitlines() if not ln.startswith("<!--")]
    return "\n".join(lines).strip() in document.read_text(encoding="utf-8")


def check(names: list[str]) -> list[str]:
    """Recompute ``names`` into a temporary folder; the differences, one line each."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if not (HERE / name / ARCHIVE).is_file():
                problems.append(f"{name}: no {ARCHIVE}")
                continue
            out = Path(tmp) / name
            out.mkdir(parents=True)
            for file in FOLDERS[name](out):
                committed = HERE / name / file
                if not committed.is_file():
                    problems.append(f"{name}/{file}: recomputed but not committed")
                elif not _same(out / file, committed):
                    problems.append(f"{name}/{file}: differs from what the archive recomputes")
            for file, document in QUOTES.get(name, []):
                if not _quoted((out / file).read_text(encoding="utf-8"), document):
                    problems.append(
                        f"{document.relative_to(ROOT)} does not quote {name}/{file} as recomputed"
                    )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", metavar="FOLDER", help=", ".join(FOLDERS))
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting")
    args = parser.parse_args(argv)
    names = args.folders or list(FOLDERS)
    unknown = [n for n in names if n not in FOLDERS]
    if unknown:
        parser.error(f"no results folder {unknown[0]!r}: choose from {', '.join(FOLDERS)}")
    if args.check:
        problems = check(names)
        for line in problems:
            print(line)
        print(
            f"{len(names)} folders checked: "
            + ("ok" if not problems else f"{len(problems)} differences")
        )
        return 1 if problems else 0
    for name in names:
        written = FOLDERS[name](HERE / name)
        print(f"{name}: rewrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
