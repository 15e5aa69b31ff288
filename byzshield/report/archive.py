"""The runs a report read, as one compact file a report can be rewritten from.

Every report writes ``runs.jsonl.gz`` beside its tables: one JSON line per run with what
the report knows about it (its flattened config, ``run.json``, status, every
evaluation, the per-step summaries: time split, distorted fraction, caught workers).
Given that file instead of run folders, the report reads the runs from it and writes the
same tables, bit for bit, without the run folders (which are large and not committed):

    python -m byzshield.report runs/heterogeneity --out docs/results/heterogeneity ...
    python -m byzshield.report docs/results/heterogeneity/runs.jsonl.gz --out /tmp/again ...

The file is gzip with a fixed timestamp, so the same runs give the same bytes. Floats
are written by :func:`json.dumps` (the shortest repr that reads back to the same
double), so every statistic recomputes exactly.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from byzshield.report.load import ReportError, RunFolder, discover, read_run

__all__ = ["ARCHIVE", "is_archive", "read_archive", "read_runs", "write_archive"]

ARCHIVE = "runs.jsonl.gz"
"""The file name every report writes its runs to."""

FORMAT = 1
"""The line format's version (``"format"`` in every line)."""

_SKIP = {"path", "warnings", "age_s"}
"""Not written: the path is written as text, warnings were said already, and a run's
age is the reading's clock (its status, which the age decided, is written)."""


def is_archive(path: Path | str) -> bool:
    """Whether ``path`` names a runs archive (a file ending in ``.jsonl.gz``)."""
    return str(path).endswith(".jsonl.gz") and Path(path).is_file()


def _line(run: RunFolder) -> str:
    record = {"format": FORMAT, "path": str(run.path)}
    for f in fields(RunFolder):
        if f.name not in _SKIP:
            record[f.name] = getattr(run, f.name)
    record["caught"] = {str(k): v for k, v in run.caught.items()}
    return json.dumps(record, separators=(",", ":"), allow_nan=True)


def write_archive(runs: Sequence[RunFolder], path: Path) -> None:
    """Write ``runs`` to ``path`` (gzip, a fixed timestamp: the same runs, the same bytes)."""
    text = "".join(_line(r) + "\n" for r in runs).encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def read_archive(path: Path) -> list[RunFolder]:
    """The runs of an archive :func:`write_archive` wrote, in its order. Raises
    :class:`~byzshield.report.load.ReportError` naming the file and line when it is not
    one."""
    path = Path(path)
    names = {f.name for f in fields(RunFolder)} - _SKIP
    runs = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ReportError(f"{path}: line {number} is not JSON") from None
                if not isinstance(record, dict) or record.get("format") != FORMAT:
                    raise ReportError(
                        f"{path}: line {number} is not a runs archive line of format {FORMAT}"
                    )
                values = {k: record[k] for k in names if k in record}
                values["caught"] = {int(k): v for k, v in (values.get("caught") or {}).items()}
                runs.append(RunFolder(Path(record["path"]), **values))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ReportError(f"{path}: not a readable gzip file ({exc})") from None
    if not runs:
        raise ReportError(f"{path}: holds no runs")
    return runs


def read_runs(source: Path | str) -> list[RunFolder]:
    """The runs of ``source``: a runs archive, or every run folder under a folder (as
    the report reads them)."""
    if is_archive(source):
        return read_archive(Path(source))
    return [read_run(path) for path in discover([source])[0]]
