"""A sweep longer than a session, in pieces that each end in a committed file.

Run folders are large and not committed; a machine that is lent for a few hours loses
them. A results folder's sweep is therefore cut into pieces (each one ``python -m
byzshield.train`` command, a sweep of its own into its own folder), and when a piece
ends its complete runs are merged into the folder's runs archive (``runs.jsonl.gz``:
each run's config and evaluations, :mod:`byzshield.report.archive`). Committing that one
file keeps the piece; a piece whose runs are all in the archive is not run again, so
rerunning the sweep continues it on this machine (each piece resumes from its runs'
checkpoints) or on a fresh one (from the archive). The tables are then made from the
archive. ``docs/results/verdict/sweep.py`` and ``docs/results/paper_mnist1d/sweep.py``
are the two such sweeps::

    python docs/results/verdict/sweep.py            # every missing piece, 2 side by side
    python docs/results/verdict/sweep.py --list     # what the archive holds, what is left

A run is identified by its config without its paths (``train_dir``), so the same run
trained into another folder (or by an earlier, differently cut sweep) is the same run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from byzshield.report.archive import read_runs, write_archive
from byzshield.report.load import RunFolder

__all__ = ["Piece", "harvest", "main", "merge", "run_key"]

PATHS = frozenset({"train_dir", "dataset.root"})
"""Config keys that say where a run was written or read from, not what it is."""


class Piece(NamedTuple):
    """One command of a sweep: ``overrides`` into ``root/name``; ``runs`` of them; which
    runs are its (``holds``: a run's flattened config and max_steps)."""

    name: str
    overrides: tuple[str, ...]
    runs: int
    holds: Callable[[dict, int], bool]

    def command(self, root: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "byzshield.train",
            *self.overrides,
            f"train_dir={root / self.name}",
        ]


def run_key(run: RunFolder) -> str:
    """What a run is: its config without its paths, and its length."""
    config = {k: v for k, v in run.config.items() if k not in PATHS}
    return json.dumps([config, run.max_steps], sort_keys=True, default=str)


def _finished(run: RunFolder) -> bool:
    return run.status == "complete" and bool(run.evals)


def merge(found: Sequence[RunFolder], archive: Path) -> tuple[list[RunFolder], int]:
    """The archive's runs with the complete runs of ``found`` added (a run already there
    is kept as it is), in a fixed order (the same runs, the same bytes); written back when
    anything was added or the order was not that one. Returns (the runs, how many were
    added). Two sweeps side by side add in turn (a lock file beside the archive)."""
    archive = Path(archive)
    with open(archive.with_name(archive.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = read_runs(archive) if archive.exists() else []
        runs = {run_key(r): r for r in before}
        added = 0
        for r in found:
            if _finished(r) and run_key(r) not in runs:
                runs[run_key(r)] = r
                added += 1
        ordered = [runs[k] for k in sorted(runs)]
        if added or [run_key(r) for r in before] != sorted(runs):
            write_archive(ordered, archive)
    return ordered, added


def harvest(folder: Path, archive: Path) -> tuple[list[RunFolder], int]:
    """Merge the complete runs under ``folder`` (if it exists) into the archive."""
    return merge(read_runs(folder) if Path(folder).is_dir() else [], archive)


def done(piece: Piece, runs: Sequence[RunFolder]) -> int:
    """How many of the piece's runs the archive holds."""
    return sum(1 for r in runs if piece.holds(r.config, r.max_steps))


def main(argv: Sequence[str], pieces: Callable[[], list[Piece]], archive: Path,
         runs: Path, doc: str) -> int:  # fmt: skip
    """The command line of a sweep in pieces (see the module docstring); ``doc``, the
    sweep script's docstring, whose first paragraph is its ``--help`` description."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument(
        "--runs", type=Path, default=runs, help=f"where the pieces' run folders go (default {runs})"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only the pieces whose name starts with one of these",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="pieces side by side, one core each (default 2)"
    )
    parser.add_argument("--list", action="store_true", help="say what is done, run nothing")
    parser.add_argument(
        "--archive", type=Path, default=archive, help=f"the runs archive (default {archive})"
    )
    args = parser.parse_args(list(argv))  # fmt: skip
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs}: at least 1")
    if args.runs.is_dir():
        print(f"merging the complete runs under {args.runs} into {args.archive} ...", flush=True)
    held, added = harvest(args.runs, args.archive)
    if added:
        print(f"  {added} runs added; the archive holds {len(held)}", flush=True)
    todo = []
    for piece in pieces():
        if args.only and not any(piece.name.startswith(p) for p in args.only):
            continue
        have = done(piece, held)
        left = "" if have >= piece.runs else "  (to run)"
        print(f"{piece.name:<24} {have:>4} of {piece.runs} runs in the archive{left}")
        if have < piece.runs:
            todo.append(piece)
    if args.list or not todo:
        print(f"{len(todo)} pieces to run" if todo else "nothing to run")
        return 0
    return run_pieces(todo, args.runs, args.jobs, args.archive)


STOP_WAIT_S = 120.0
"""How long a stopped piece may take to save and exit after its Ctrl-C before it is
terminated."""


def run_pieces(todo: Sequence[Piece], root: Path, jobs: int, archive: Path) -> int:
    """Run the pieces, ``jobs`` at a time (each logs to ``root/logs/``); merge each into
    the archive when it ends. Ctrl-C or ``kill`` (SIGINT or SIGTERM, also when the
    driver was started in the background, where a shell ignores SIGINT) stops them: each
    running piece gets a Ctrl-C, its runs keep their checkpoints, and its complete runs
    are merged; rerunning continues."""
    running: dict[str, tuple[subprocess.Popen, float, Piece, Path]] = {}
    failed: list[str] = []
    queue = list(todo)
    (root / "logs").mkdir(parents=True, exist_ok=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                piece = queue.pop(0)
                log = root / "logs" / (piece.name.replace("/", "_") + ".log")
                with open(log, "a") as fh:
                    command = piece.command(root)
                    proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
                running[piece.name] = (proc, time.monotonic(), piece, log)
                print(f"{time.strftime('%H:%M')} started {piece.name} ({piece.runs} runs; {log})",
                      flush=True)  # fmt: skip
            time.sleep(5)
            for name, (proc, started, piece, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                held, added = harvest(root / piece.name, archive)
                have = done(piece, held)
                status = "ended" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                print(f"{time.strftime('%H:%M')} {name} {status} after "
                      f"{(time.monotonic() - started) / 60:.0f} min: {have} of {piece.runs} "
                      f"runs in {archive} ({added} new: commit it)", flush=True)  # fmt: skip
                if proc.returncode != 0 or have < piece.runs:
                    failed.append(f"{name} did not finish: see {log}")
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: let them finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(running.values(), root, archive)
        print("\ninterrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


def _stop(running, root: Path, archive: Path) -> None:
    """Ctrl-C each running piece (a sweep saves its checkpoints and exits with one line),
    terminate one that has not exited within :data:`STOP_WAIT_S`, then merge the runs
    that completed."""
    for proc, *_ in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    for proc, *_ in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
    for _proc, _started, piece, _log in running:
        _, added = harvest(root / piece.name, archive)
        if added:
            print(f"{piece.name}: {added} complete runs merged into {archive}", flush=True)
