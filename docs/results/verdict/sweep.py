"""The verdict's sweep, in pieces that each commit: rerunning it continues it, on this
machine or on a fresh one.

    python docs/results/verdict/sweep.py                 # every missing piece, 2 at a time
    python docs/results/verdict/sweep.py --list          # what is done, what is left
    python docs/results/verdict/sweep.py --q 4 --jobs 1  # some pieces only

The sweep (``+experiment=verdict``, ``verdict_clean``, ``verdict_plateau``: see their
headers) is cut into pieces of one q, one rule and one kind of files (175 runs, about 40
minutes of one core at 600 steps), plus the no-attack reference and the two plateau
checks. Each piece is one ``python -m byzshield.train`` command into its own folder
under ``--runs`` (resumable there: a rerun continues from the runs' checkpoints). When a
piece ends, its complete runs are merged into the committed archive,
``docs/results/verdict/runs.jsonl.gz`` (each run's config and evaluations; the same runs
give the same bytes), so that committing that one file keeps the piece even when the run
folders are lost. A piece whose runs are all in the archive is not run again. Run
folders already under ``--runs`` are merged first. Then ``tables.py`` makes the tables
and heatmaps from the archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ARCHIVE = HERE / "runs.jsonl.gz"
QS = (2, 4)  # the committed verdict's q (the crossover between them, by the paper sweep)
RULES = {"mom": "median of means", "multi_krum": "multi-Krum"}
SKEWS = {"iid": "iid", "alpha1": "Dir(1)", "alpha01": "Dir(0.1)"}


def _tables():
    spec = importlib.util.spec_from_file_location("verdict_tables", HERE / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = _tables()


class Piece(NamedTuple):
    name: str  # also its folder under --runs
    overrides: tuple[str, ...]
    runs: int  # how many runs it holds
    holds: Callable[[dict, int], bool]  # (a run's config, its max_steps) -> one of mine

    def command(self, root: Path) -> list[str]:
        return [sys.executable, "-m", "byzshield.train", *self.overrides,
                f"train_dir={root / self.name}"]  # fmt: skip


def _sweep_piece(q: int, rule: str, skew: str) -> Piece:
    return Piece(
        f"q{q}/{rule}/{skew}",
        (
            "+experiment=verdict",
            f"adversary.q={q}",
            f"heterogeneity/rule={rule}",
            f"heterogeneity/skew={skew}",
        ),  # fmt: skip
        len(T.ARMS) * len(T.ATTACKS) * len(T.SEEDS),
        lambda c, steps: (
            steps == T.STEPS
            and c["adversary.q"] == q
            and c["attack.name"] != "none"
            and T.rule(c) == RULES[rule]
            and T.skew(c) == SKEWS[skew]
        ),  # fmt: skip
    )


def pieces(qs=QS) -> list[Piece]:
    """Every piece of the sweep: the references first, then q by q."""
    plateau = T.STEPS * 2
    out = [
        Piece(
            "clean",
            ("+experiment=verdict_clean",),
            3 * len(SKEWS) * len(RULES) * len(T.SEEDS),
            lambda c, steps: steps == T.STEPS and c["attack.name"] == "none",
        ),  # fmt: skip
        Piece(
            "plateau/q4",
            ("+experiment=verdict_plateau",),
            len(T.ARMS) * 2 * 3 * 2,
            lambda c, steps: steps == plateau and c["attack.name"] != "none",
        ),  # fmt: skip
        Piece(
            "plateau/q0",
            (
                "+experiment=verdict_plateau",
                "adversary.q=0",
                "attack=none",
                "verdict/arm=baseline,detox,mols",
            ),
            3 * 2 * 2,
            lambda c, steps: steps == plateau and c["attack.name"] == "none",
        ),  # fmt: skip
    ]
    for q in qs:
        out += [_sweep_piece(q, r, s) for r in RULES for s in SKEWS]
    return out


def _key(run) -> tuple:
    c = run.config
    return (c["adversary.q"], T.rule(c), T.skew(c), T.arm(c), c["attack.name"], c["seed"],
            run.max_steps)  # fmt: skip


def merge(found: list, archive: Path = ARCHIVE) -> tuple[list, int]:
    """The archive's runs with the complete runs of ``found`` added (a run already there
    is kept as it is), in a fixed order; written back when anything was added. Returns
    (the runs, how many were added)."""
    import fcntl

    from byzshield.report import read_runs, write_archive

    with open(archive.with_name(archive.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sweeps side by side add to it in turn
        runs = {_key(r): r for r in (read_runs(archive) if archive.exists() else [])}
        added = 0
        for r in found:
            if r.status == "complete" and T.accuracy(r) is not None and _key(r) not in runs:
                runs[_key(r)] = r
                added += 1
        ordered = [runs[k] for k in sorted(runs, key=repr)]
        if added:
            write_archive(ordered, archive)
    return ordered, added


def harvest(folder: Path, archive: Path = ARCHIVE) -> tuple[list, int]:
    """Merge the complete runs under ``folder`` into the archive."""
    from byzshield.report import read_runs

    found = read_runs(folder) if folder.is_dir() else []
    return merge(found, archive)


def done(piece: Piece, runs: list) -> int:
    return sum(1 for r in runs if piece.holds(r.config, r.max_steps))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("runs/verdict"),
        help="where the pieces' run folders go (default runs/verdict)",
    )
    parser.add_argument(
        "--q",
        type=int,
        nargs="+",
        default=list(QS),
        help=f"the q of the attacked pieces (default {' '.join(map(str, QS))})",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="pieces whose name starts with one of these (clean, plateau, q4/mom)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="pieces side by side, one core each (default 2)"
    )
    parser.add_argument("--list", action="store_true", help="say what is done and stop")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)  # fmt: skip
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs}: at least 1")
    if args.runs.is_dir():
        print(f"merging the complete runs under {args.runs} into {args.archive} ...", flush=True)
    runs, added = harvest(args.runs, args.archive)
    if added:
        print(f"  {added} runs added; the archive holds {len(runs)}", flush=True)
    todo = []
    for piece in pieces(args.q):
        if args.only and not any(piece.name.startswith(p) for p in args.only):
            continue
        have = done(piece, runs)
        print(f"{piece.name:<22} {have:>4} of {piece.runs} runs in the archive"
              + ("" if have >= piece.runs else "  (to run)"))  # fmt: skip
        if have < piece.runs:
            todo.append(piece)
    if args.list or not todo:
        print("nothing to run" if not todo else f"{len(todo)} pieces to run")
        return 0
    return _run(todo, args.runs, args.jobs, args.archive)


def _run(todo: list[Piece], root: Path, jobs: int, archive: Path) -> int:
    """Run the pieces, ``jobs`` at a time; merge each into the archive when it ends."""
    running: dict[str, tuple[subprocess.Popen, float, Piece, Path]] = {}
    failed = []
    queue = list(todo)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                piece = queue.pop(0)
                log = root / "logs" / (piece.name.replace("/", "_") + ".log")
                with open(log, "a") as fh:
                    proc = subprocess.Popen(
                        piece.command(root), stdout=fh, stderr=subprocess.STDOUT
                    )
                running[piece.name] = (proc, time.monotonic(), piece, log)
                print(f"{time.strftime('%H:%M')} started {piece.name} ({piece.runs} runs, {log})",
                      flush=True)  # fmt: skip
            time.sleep(5)
            for name, (proc, started, piece, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                minutes = (time.monotonic() - started) / 60
                runs, added = harvest(root / piece.name, archive)
                have = done(piece, runs)
                status = "ended" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                print(f"{time.strftime('%H:%M')} {name} {status} after {minutes:.0f} min: "
                      f"{have} of {piece.runs} runs in {archive} ({added} new; commit it)",
                      flush=True)  # fmt: skip
                if proc.returncode != 0 or have < piece.runs:
                    failed.append(f"{name}: see {log}")
    except KeyboardInterrupt:
        for proc, *_ in running.values():
            proc.terminate()  # each run keeps its checkpoints; rerunning continues
        for proc, *_ in running.values():
            proc.wait()
        print("\ninterrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
