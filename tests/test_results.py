"""The committed results recompute from what is committed: the runs archive a report
writes (``runs.jsonl.gz``) reads back to the same tables, and every results folder's
tables and the documents quoting them are what docs/results/regenerate.py recomputes
from the folder's archive."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from byzshield.report import ARCHIVE, ReportError, read_archive, write_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def _run(folder: Path, seed: int, top1s: list[float], attack: str = "alie") -> None:
    """A finished run folder as the trainer writes it (config, run.json, metrics)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"approach:\n  name: mols\n  l: 5\n  r: 3\nmode:\n  name: coord-median\n"
        f"attack:\n  name: {attack}\nadversary:\n  q: 3\nseed: {seed}\nmax_steps: 20\n"
    )
    (folder / "run.json").write_text(json.dumps({"max_steps": 20, "f": 25, "seed": seed}))
    lines = [{"step": s, "distorted": 3, "step_s": 0.01} for s in range(20)]
    lines += [
        {"event": "eval", "step": 5 * (k + 1), "top1": t, "top5": 0.9, "test_loss": 1.0}
        for k, t in enumerate(top1s)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_report_rewritten_from_its_archive_is_the_same(tmp_path):
    for seed in range(3):
        _run(tmp_path / "runs" / str(seed), seed, [0.1, 0.2 + seed / 7, 0.3, 0.1 + seed / 3])
        _run(tmp_path / "runs" / f"n{seed}", seed, [0.1, 0.2, 0.25 + seed / 9, 0.4], "none")
    first = write_report([tmp_path / "runs"], tmp_path / "a", plots=False, eps=False, last_evals=2)
    again = write_report(
        [tmp_path / "a" / ARCHIVE], tmp_path / "b", plots=False, eps=False, last_evals=2
    )
    assert ARCHIVE in first.files and len(again.runs) == 6
    for name in ("report.csv", "runs.csv", ARCHIVE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    runs = read_archive(tmp_path / "a" / ARCHIVE)
    assert [r.evals for r in runs] == [r.evals for r in first.runs]


def test_a_damaged_archive_is_one_line(tmp_path):
    bad = tmp_path / "runs.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ReportError, match="not a readable gzip file"):
        read_archive(bad)
    with gzip.open(bad, "wt") as fh:
        fh.write('{"format": 99}\n')
    with pytest.raises(ReportError, match="line 1 is not a runs archive line"):
        read_archive(bad)


def _regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", RESULTS / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_folder_with_tables_has_an_archive_or_says_why():
    folders = _regenerate().FOLDERS
    for name in folders:
        assert (RESULTS / name / ARCHIVE).is_file(), f"docs/results/{name} has no {ARCHIVE}"


@pytest.mark.parametrize("name", ["detection", "strongest_attacks"])
def test_small_results_recompute_from_their_archives(name):
    assert _regenerate().check([name]) == []


@pytest.mark.slow
def test_every_committed_table_recomputes_from_its_archive():
    out = subprocess.run(
        [sys.executable, str(RESULTS / "regenerate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _tables():
    spec = importlib.util.spec_from_file_location(
        "verdict_tables", RESULTS / "verdict" / "tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _verdict_run(approach, detect, attack, q, seed, top1, steps=300):
    from byzshield.report import RunFolder

    config = {
        "approach.name": approach,
        "detect": detect,
        "dataset.partition": "iid",
        "dataset.alpha": 1.0,
        "mode.name": "coord-median",
        "mode.num_buckets": 5,
        "attack.name": attack,
        "adversary.q": q,
        "seed": seed,
        "lr_step": 10,
    }
    evals = [{"step": 20 * k, "top1": top1} for k in range(1, 16)]
    return RunFolder(Path(f"r/{approach}{detect}{attack}{q}{seed}{steps}"), config=config,
                     status="complete", max_steps=steps, evals=evals, final=evals[-1])  # fmt: skip


def test_the_verdict_takes_each_arms_worst_attack_and_pairs_it_seed_by_seed():
    tables = _tables()
    runs = []
    for approach, detect in [("baseline", "off"), ("draco_lite_attack", "off"), ("mols", "off"),
                             ("draco_lite_attack", "exclude"), ("mols", "exclude")]:  # fmt: skip
        for k, attack in enumerate(tables.ATTACKS):
            for seed in tables.SEEDS:
                top1 = 0.5 + 0.01 * k + 0.002 * seed  # ALIE the worst for every arm
                if approach == "mols":
                    top1 += 0.1 if detect == "off" else 0.2
                if approach == "draco_lite_attack" and detect == "exclude":
                    top1 += 0.2 + 0.001 * seed * seed  # seed-dependent: not MOLS's twin
                runs.append(_verdict_run(approach, detect, attack, 2, seed, top1))
    runs.append(_verdict_run("mols", "off", "alie", 2, 0, 0.9, steps=600))  # a plateau twin
    grid, clean = tables.cells(runs, 300)
    worsts = tables.worst(grid)
    assert len(worsts) == 5 and all(w[0] == "alie" for w in worsts.values())
    rows = {(x["a"], x["b"]): x for x in tables.compare(worsts)}
    mols_detox = rows[("MOLS", "DETOX")]
    assert abs(mols_detox["diff"] - 0.1) < 1e-9 and mols_detox["distinguishable"]
    assert abs(mols_detox["high"] - mols_detox["low"]) < 1e-9  # the same gap every seed
    # baseline and DETOX are the same numbers seed for seed: DETOX - baseline is 0, and
    # MOLS - baseline repeats MOLS - DETOX, so it is counted once
    assert rows[("MOLS", "baseline")]["duplicate_of"].startswith("MOLS vs DETOX")
    assert not rows[("MOLS + detection", "DETOX + detection")]["duplicate_of"]
    summary = tables.summary_md(list(rows.values()))
    row = "| MOLS - DETOX | iid | 1 | 1 | 0 | 0 | +10.0 [+10.0, +10.0] * (MoM, q=2) | — |"
    assert row in summary
    assert "6 comparisons, 5 distinct" in summary
    plateau = tables.plateau_md(runs, 300)
    assert (
        "| MOLS | iid | median of means | 2 | alie | 1 | 60.0 | 90.0 | +30.0 | +30.0 | 0/1 |"
        in plateau
    )
    # the twin continues the same schedule (equal lr_step) but its evaluations differ
    assert "on the same schedule continued" in plateau and "In 0 of the 1 pairs" in plateau


def _sweep():
    spec = importlib.util.spec_from_file_location("verdict_sweep", RESULTS / "verdict" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_verdict_sweeps_pieces_cover_the_sweep_once():
    sweep = _sweep()
    pieces = sweep.pieces((2, 4))
    assert len({p.name for p in pieces}) == len(pieces) == 3 + 2 * 6
    # the attacked pieces: 5 arms x 7 attacks x 5 seeds each; with the no-attack
    # reference (90) and the two plateau checks (60 + 12), 2,262 runs in all
    assert sum(p.runs for p in pieces) == 2262
    run = _verdict_run("mols", "off", "ipm", 4, 3, 0.5, steps=600)
    assert [p.name for p in pieces if p.holds(run.config, run.max_steps)] == ["q4/mom/iid"]
    clean = _verdict_run("mols", "off", "none", 0, 3, 0.8, steps=600)
    assert [p.name for p in pieces if p.holds(clean.config, 600)] == ["clean"]
    assert [p.name for p in pieces if p.holds(run.config, 1200)] == ["plateau/q4"]
    assert pieces[3].command(Path("runs/v"))[-1] == f"train_dir={Path('runs/v') / pieces[3].name}"


def test_a_piece_merged_twice_is_in_the_archive_once_and_in_a_fixed_order(tmp_path):
    from byzshield.report.pieces import done, merge

    runs = [_verdict_run("mols", "off", a, 2, s, 0.5 + s / 100, steps=600)
            for a in ("alie", "ipm") for s in (0, 1, 2)]  # fmt: skip
    one, two = tmp_path / "one.jsonl.gz", tmp_path / "two.jsonl.gz"
    assert merge(runs[:4], one)[1] == 4
    held, added = merge(runs, one)  # the first four again, two new
    assert added == 2 and len(held) == 6
    assert merge(runs, one)[1] == 0
    merge(list(reversed(runs)), two)
    assert one.read_bytes() == two.read_bytes()  # the same runs, the same bytes
    piece = next(p for p in _sweep().pieces((2,)) if p.name == "q2/mom/iid")
    assert done(piece, held) == 6
    elsewhere = _verdict_run("mols", "off", "alie", 2, 0, 0.7, steps=600)
    elsewhere.config["train_dir"] = "another/folder"  # the same run, trained elsewhere
    unfinished = _verdict_run("mols", "off", "fang", 2, 0, 0.5, steps=600)
    unfinished.status = "running"
    assert merge([elsewhere, unfinished], one)[1] == 0
    longer = _verdict_run("mols", "off", "alie", 2, 0, 0.7, steps=1200)  # not the same run
    assert merge([longer], one)[1] == 1


def test_the_paper_sweeps_pieces_cover_its_three_experiments_once():
    spec = importlib.util.spec_from_file_location(
        "paper_sweep", RESULTS / "paper_mnist1d" / "sweep.py"
    )
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    pieces = sweep.pieces()
    # K=15: 3 arms x 8 q x 3 sizes x 5 seeds; K=25: 3 x 13 x 3 x 5; plateau: 6 x 3 x 2
    assert sum(p.runs for p in pieces) == 360 + 585 + 36
    mols = {"approach.name": "mols", "batch_size": 750}
    detox25 = {"approach.name": "draco_lite_attack", "approach.K": 25, "batch_size": 150}
    assert [p.name for p in pieces if p.holds(mols, 600)] == ["k15/batch750"]
    assert [p.name for p in pieces if p.holds(mols, 1200)] == ["plateau"]
    assert [p.name for p in pieces if p.holds(detox25, 1500)] == ["k25/batch150"]


def test_a_sweep_in_pieces_stops_its_pieces_with_a_ctrl_c_when_killed(tmp_path):
    """SIGTERM (or SIGINT, which a shell's background job ignores until the driver takes
    it) reaches each running piece as a Ctrl-C; the driver returns 130 and leaves no
    piece running."""
    from byzshield.report import pieces

    script = tmp_path / "piece.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "out.write_text('started')\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    out.write_text('ctrl-c')\n"
        "    sys.exit(130)\n"
    )

    class Sleeper(pieces.Piece):
        def command(self, root):
            return [sys.executable, str(script), str(root / f"{self.name}.txt")]

    todo = [Sleeper(f"p{k}", (), 1, lambda config, steps: False) for k in range(2)]
    marks = [tmp_path / f"p{k}.txt" for k in range(2)]

    def kill_when_started():
        deadline = time.monotonic() + 60
        while not all(m.exists() for m in marks) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=kill_when_started, daemon=True).start()
    started = time.monotonic()
    status = pieces.run_pieces(todo, tmp_path, 2, tmp_path / "runs.jsonl.gz")
    assert status == 130
    assert [m.read_text() for m in marks] == ["ctrl-c", "ctrl-c"]
    assert time.monotonic() - started < 50  # not the pieces' 60 s
    assert signal.getsignal(signal.SIGTERM) is before
    assert subprocess.run(["pgrep", "-f", str(script)], capture_output=True).returncode == 1
