"""The Python interface, for notebooks: train a run, read runs and sweeps as rows.

    >>> import byzshield
    >>> final = byzshield.run(["attack=alie", "adversary.q=2", "max_steps=20"], "runs/nb")
    >>> steps, evals = byzshield.load_run("runs/nb")       # metrics.jsonl as rows
    >>> evals[-1]["top1"] == final["top1"]
    True
    >>> runs = byzshield.load_sweep("runs/paper_mnist1d")  # every run under a folder

``run`` trains in this process with the engine the overrides choose (simulate by
default, lockstep with ``engine=lockstep``), into ``folder`` (a rerun resumes it, as
the command line does); ``runs`` trains several in lockstep where they share a shape.
``load_run`` returns the per-step records and the evaluations of a run folder as lists
of dicts (pandas: ``pd.DataFrame(steps)``); ``load_sweep`` the runs the report finds
under folders, each with its flattened config, status and evaluations
(:class:`byzshield.report.RunFolder`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_run", "load_sweep", "run", "runs"]


def run(overrides: Sequence[str] = (), folder: str | Path = "runs/notebook", *, quiet=True):
    """Train one run, as ``python -m byzshield.train OVERRIDES train_dir=FOLDER``; returns
    its final evaluation ({"top1", "top5", "test_loss"}). ``quiet=False`` shows progress.
    Bad overrides raise ValueError with the command line's one-line message."""
    overrides = list(overrides)
    if "engine=lockstep" in overrides:
        return runs([overrides], [folder], quiet=quiet)[0]
    from byzshield.engines.simulate import simulate

    return simulate(overrides, folder, quiet=quiet)


def runs(
    overrides: Sequence[Sequence[str]], folders: Sequence[str | Path], *, quiet: bool = True
) -> list[dict]:
    """Train several runs in lockstep (:mod:`byzshield.engines.lockstep`): those sharing a
    placement, batch size, network and dataset train together. Returns each final
    evaluation, in order."""
    from byzshield.engines.lockstep import lockstep

    if len(overrides) != len(folders):
        raise ValueError(f"runs: {len(overrides)} override lists but {len(folders)} folders")
    return lockstep(list(zip(map(list, overrides), folders, strict=True)), quiet=quiet)


def load_run(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of a run folder's metrics.jsonl, the steps a
    resumed run repeated excluded (they are in metrics.superseded-N.jsonl). Lines that
    are not a record (the torn last line a killed run leaves) are skipped, as
    ``python -m byzshield.report`` skips them, with one warning naming them."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{folder} holds no metrics.jsonl: not a run folder (or not started)")
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            step = row.get("step") if isinstance(row, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                bad.append(number)
                continue
            rows.append(row)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(bad)} unreadable line{'s' if len(bad) > 1 else ''} "
            f"(line {shown})",
            stacklevel=2,
        )
    return [r for r in rows if "event" not in r], [r for r in rows if r.get("event") == "eval"]


def load_sweep(*folders: str | Path, stale_after: float = 600.0):
    """Every run under ``folders`` (searched as ``python -m byzshield.report`` does), as
    :class:`byzshield.report.RunFolder` records: ``.config`` (flattened), ``.status``,
    ``.evals``, ``.final``, ``.seed``, ``.q``, ``.path``."""
    from byzshield.report import discover, read_run

    if not folders:
        raise ValueError("load_sweep: give at least one run or sweep folder")
    paths, _ = discover([Path(f) for f in folders])
    return [read_run(p, stale_after=stale_after) for p in paths]
