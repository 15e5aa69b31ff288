"""The report tool (byzshield/report/) on synthetic run folders, and one real sweep.

The synthetic folders hold what a run writes (.hydra/config.yaml, run.json,
metrics.jsonl) with file times set to make a run look running or stale.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from byzshield import report
from byzshield.report import group_runs, main, pending_jobs, read_run, write_report

HOUR = 3600.0


def _config(**changes) -> dict:
    cfg = {
        "approach": {"name": "mols", "l": 5, "r": 3},
        "mode": {"name": "coord-median", "pre": [], "num_buckets": None},
        "attack": {"name": "rev_grad", "scale": -100.0},
        "adversary": {"q": 2, "selection": "worst_case"},
        "network": {"name": "lenet"},
        "dataset": {"name": "digits"},
        "lr": 0.05,
        "max_steps": 30,
        "eval_freq": 10,
        "seed": 0,
        "train_dir": "/somewhere",
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def make_run(
    folder: Path,
    *,
    steps: int,
    top1: dict[int, float] | None = None,
    age: float = HOUR,
    extra_lines: tuple[str, ...] = (),
    hydra: bool = True,
    info: dict | None = None,
    **changes,
) -> Path:
    """A run folder with ``steps`` step records and evaluations ``{step: top1}``, last
    changed ``age`` seconds ago."""
    cfg = _config(**changes)
    folder.mkdir(parents=True)
    if hydra:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    q = cfg["adversary"]["q"]
    info = {
        "placement": "mols(l=5, r=3): K=15 workers, f=25 files, load l=5, replication r=3",
        "K": 15,
        "f": 25,
        "r": 3,
        "load": 5,
        "mode": cfg["mode"]["name"],
        "attack": {"name": cfg["attack"]["name"]},
        "selection": {"kind": "worst_case", "q": q, "c_max": [0, 0, 1, 3][q]},
        "max_steps": cfg["max_steps"],
        "seed": cfg["seed"],
        **(info or {}),
    }
    (folder / "run.json").write_text(json.dumps(info))
    lines = []
    evals = dict(top1 or {})
    for s in range(steps):
        lines.append(
            {
                "step": s,
                "loss": 1.0,
                "distorted": 1,
                "compute_s": 0.01,
                "vote_s": 0.002,
                "step_s": 0.02,
                "other_s": 0.0,
            }
        )
        if s + 1 in evals:
            lines.append({"step": s + 1, "event": "eval", "top1": evals[s + 1], "top5": 1.0})
    text = "".join(json.dumps(r) + "\n" for r in lines) + "".join(extra_lines)
    (folder / "metrics.jsonl").write_text(text)
    set_age(folder, age)
    return folder


def set_age(folder: Path, age: float) -> None:
    """Every file and folder of the run last changed ``age`` seconds ago."""
    t = time.time() - age
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (t, t))


def complete(folder: Path, final: float, **changes) -> Path:
    return make_run(folder, steps=30, top1={10: 0.5, 20: final + 0.01, 30: final}, **changes)


# --------------------------------------------------------------------------------------
# Status of one run


def test_run_with_final_evaluation_is_complete(tmp_path):
    run = read_run(complete(tmp_path / "a", 0.9))
    assert run.status == "complete"
    assert run.final["top1"] == 0.9 and run.best_top1 == pytest.approx(0.91)
    assert run.train_s == pytest.approx(30 * 0.02)
    assert run.distorted_frac == pytest.approx(1 / 25)
    assert run.time_split["vote_s"] == pytest.approx(0.002)


def test_recent_run_without_final_evaluation_is_running(tmp_path):
    run = read_run(make_run(tmp_path / "a", steps=12, top1={10: 0.5}, age=5))
    assert run.status == "running"
    assert run.describe_status() == "running (12/30)"


def test_stale_run_without_final_evaluation_died_and_says_where(tmp_path):
    run = read_run(make_run(tmp_path / "a", steps=12, top1={10: 0.5}))
    assert run.status == "died"
    assert run.describe_status() == "died at step 12/30"
    assert run.last_eval["top1"] == 0.5


def test_stale_after_decides_between_running_and_died(tmp_path):
    folder = make_run(tmp_path / "a", steps=12, age=20 * 60)
    assert read_run(folder, stale_after=10 * 60).status == "died"
    assert read_run(folder, stale_after=30 * 60).status == "running"


def test_run_with_config_and_no_metrics_failed_to_start(tmp_path):
    folder = tmp_path / "a"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_config()))
    set_age(folder, HOUR)
    run = read_run(folder)
    assert run.status == "failed to start"
    assert run.steps_done == 0 and run.max_steps == 30


def test_corrupt_metrics_lines_are_skipped_with_a_warning(tmp_path):
    folder = make_run(
        tmp_path / "a",
        steps=30,
        top1={30: 0.8},
        extra_lines=("not json\n", '{"loss": 1.0}\n', '{"step": 31, "lo'),
    )
    run = read_run(folder)
    assert run.status == "complete" and run.final["top1"] == 0.8
    assert len(run.warnings) == 1
    assert "skipped 3 unreadable lines (line 32, 33, 34)" in run.warnings[0]


def test_folder_reused_by_a_second_run_reports_the_last_one(tmp_path):
    folder = complete(tmp_path / "a", 0.9)
    with open(folder / "metrics.jsonl", "a") as fh:  # a second run appends from step 0
        for s in range(5):
            fh.write(json.dumps({"step": s, "distorted": 0, "step_s": 1.0}) + "\n")
    set_age(folder, HOUR)
    run = read_run(folder)
    assert run.status == "died" and run.steps_done == 5 and run.evals == []
    assert any("holds 2 runs" in w for w in run.warnings)


def test_run_without_hydra_folder_takes_its_settings_from_run_json(tmp_path):
    run = read_run(complete(tmp_path / "a", 0.9, hydra=False))
    assert run.config_source == "run.json"
    assert run.config["approach.name"] == "mols" and run.config["approach.l"] == 5
    assert run.q == 2 and run.status == "complete"


def test_run_without_hydra_folder_takes_its_whole_config_from_config_json(tmp_path):
    """In-process runs (byzshield.run, the lockstep API) have config.json but no .hydra/:
    two differing only in the data partition must not share a row."""
    folders = []
    for name, partition in (("a", "iid"), ("b", "dirichlet")):
        folder = complete(tmp_path / name, 0.9, hydra=False)
        config = {"approach": {"name": "mols", "l": 5, "r": 3}, "mode": {"name": "coord-median"},
                  "attack": {"name": "alie"}, "adversary": {"q": 2}, "seed": 0,
                  "dataset": {"name": "mnist1d", "partition": partition}}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    runs = [read_run(f) for f in folders]
    assert {r.config_source for r in runs} == {"config.json"}
    assert runs[1].config["dataset.partition"] == "dirichlet"
    assert len(group_runs(runs).groups) == 2


# --------------------------------------------------------------------------------------
# Grouping and statistics


def test_seeds_are_one_row_with_mean_sample_std_and_95_interval(tmp_path):
    finals = [0.8, 0.9, 0.95]
    runs = [read_run(complete(tmp_path / str(s), f, seed=s)) for s, f in enumerate(finals)]
    (g,) = group_runs(runs).groups
    stats = report.group_stats(g)
    s = stats["final_top1"]
    assert s.n == 3
    assert s.mean == pytest.approx(statistics.mean(finals))
    assert s.std == pytest.approx(statistics.stdev(finals))  # n - 1
    # t(0.975, 2) = 4.302653: mean +- 4.302653 * std / sqrt(3)
    half = 4.302653 * statistics.stdev(finals) / 3**0.5
    assert (s.low, s.high) == pytest.approx((s.mean - half, s.mean + half), abs=1e-6)
    one = report.summarize([0.7])
    assert (one.mean, one.std, one.n, one.low, one.high) == (0.7, None, 1, None, None)


def test_a_run_from_before_the_adversary_node_groups_with_its_new_twin(tmp_path):
    """Runs written when q and selection were attack.q and attack.selection read as
    adversary.q and adversary.selection: one row with today's run of the same config."""
    import yaml

    new = complete(tmp_path / "new", 0.9, seed=0)
    old = complete(tmp_path / "old", 0.8, seed=1)
    cfg = yaml.safe_load((old / ".hydra" / "config.yaml").read_text())
    cfg["attack"].update(cfg.pop("adversary"))
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    runs = [read_run(new), read_run(old)]
    assert runs[1].config["adversary.q"] == 2 and "attack.q" not in runs[1].config
    (g,) = group_runs(runs).groups
    assert len(g.runs) == 2 and g.q == 2


def test_a_row_never_mixes_runs_that_differ_beyond_the_seed(tmp_path):
    runs = [
        read_run(complete(tmp_path / "a", 0.9)),
        read_run(complete(tmp_path / "b", 0.9, seed=1)),
        read_run(complete(tmp_path / "c", 0.9, lr=0.1)),
        read_run(complete(tmp_path / "d", 0.9, **{"mode.num_buckets": 5})),
        read_run(complete(tmp_path / "e", 0.9, **{"dataset.name": "mnist1d"})),
    ]
    grouping = group_runs(runs)
    assert sorted(len(g.runs) for g in grouping.groups) == [1, 1, 1, 2]
    assert grouping.extra_keys == ["dataset", "lr"]
    modes = sorted({g.mode for g in grouping.groups})
    assert modes == ["coord-median(num_buckets=5)", "coord-median(num_buckets=null)"]
    assert grouping.common["network.name"] == "lenet"
    # --ignore merges what the user says does not matter
    assert len(group_runs(runs, ["seed", "train_dir", "lr"]).groups) == 3


def test_approach_label_shows_its_parameters(tmp_path):
    runs = [
        read_run(complete(tmp_path / "a", 0.9)),
        read_run(complete(tmp_path / "b", 0.9, approach={"name": "draco_lite", "K": 15, "r": 3})),
    ]
    labels = [g.approach for g in group_runs(runs).groups]
    assert labels == ["draco_lite(K=15, r=3)", "mols(l=5, r=3)"]


# --------------------------------------------------------------------------------------
# The whole report


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_shows_every_run_and_aggregates_complete_runs_only(tmp_path):
    sweep = tmp_path / "sweep"
    complete(sweep / "0", 0.8, seed=0)
    complete(sweep / "1", 0.9, seed=1)
    make_run(sweep / "2", steps=12, top1={10: 0.4}, seed=2)  # died
    make_run(sweep / "3", steps=3, age=1, seed=3)  # running
    folder = sweep / "4"  # failed to start: Hydra wrote its config, then the job exited
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_config(seed=4)))
    set_age(folder, HOUR)

    rep = write_report([sweep], plots=False, eps=False)
    assert rep.out == sweep / "report"
    (row,) = _rows(sweep / "report" / "report.csv")
    assert row["runs"] == "5" and row["complete"] == "2"
    assert row["running"] == "1" and row["died"] == "1" and row["failed_to_start"] == "1"
    assert float(row["final_top1_mean"]) == pytest.approx(0.85)
    assert float(row["final_top1_std"]) == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert row["status"] == "2 complete, 1 running 3/30, 1 died at 12/30, 1 failed to start"
    runs = _rows(sweep / "report" / "runs.csv")
    assert [r["status"] for r in runs] == [
        "complete",
        "complete",
        "died",
        "running",
        "failed to start",
    ]
    md = (sweep / "report" / "report.md").read_text()
    # the mean and its 95 % t interval over the 2 seeds: 85 +- 12.7062 * 7.0711 / sqrt(2)
    assert "| MOLS K=15 | coord-median | rev_grad | 2 | 2 | 85.00 [21.47, 148.53] |" in md
    assert "MOLS K=15 = `mols(l=5, r=3)`" in md
    assert "## Runs not complete" in md
    assert f"`{sweep / '2'}` | died at step 12/30 |" in md
    assert "| 40.00 @ 10 |" in md  # how far the dead run got
    assert f"`{sweep / '3'}` | running (3/30) |" in md
    assert f"`{sweep / '4'}` | failed to start |" in md


def test_a_lockstep_sweeps_waiting_jobs_are_queued_not_failed(tmp_path):
    """engine=lockstep makes every job's folder, then trains the groups one by one."""
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", steps=3, age=1, seed=0, engine="lockstep")  # its group runs
    for k in (1, 2):  # waiting for their group: a config, no step, written an hour ago
        folder = sweep / str(k)
        (folder / ".hydra").mkdir(parents=True)
        cfg = {**_config(seed=k), "engine": "lockstep"}
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        set_age(folder, HOUR)
    rep = write_report([sweep], plots=False, eps=False)
    assert [r.status for r in sorted(rep.runs, key=lambda r: r.path)] == [
        "running",
        "queued",
        "queued",
    ]
    set_age(sweep / "0", HOUR)  # the sweep's process is gone: nothing is queued any more
    rep = write_report([sweep], plots=False, eps=False)
    assert sorted(r.status for r in rep.runs) == ["died", "failed to start", "failed to start"]


def test_group_with_no_complete_run_is_shown_without_statistics(tmp_path):
    make_run(tmp_path / "s" / "0", steps=12)
    write_report([tmp_path / "s"], plots=False, eps=False)
    md = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "| 0 | — | — | 30 | — | — | 1 died at 12/30 |" in md


def _multirun_yaml(sweep: Path, task: list[str]) -> None:
    cfg = {
        "hydra": {
            "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
            "sweeper": {"params": None},
            "overrides": {"task": task},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg))


def test_partial_sweep_lists_the_jobs_that_have_not_started(tmp_path):
    sweep = tmp_path / "sweep"
    complete(sweep / "0", 0.9, seed=0)
    make_run(sweep / "1", steps=4, age=1, seed=1)
    _multirun_yaml(sweep, ["train_dir=x", "adversary.q=1,2", "seed=0,1", "max_steps=30"])
    size, pending = pending_jobs(sweep.resolve(), [read_run(sweep / "0"), read_run(sweep / "1")])
    assert size == 4
    assert [(p.num, p.overrides) for p in pending] == [
        (2, ["adversary.q=2", "seed=0"]),
        (3, ["adversary.q=2", "seed=1"]),
    ]
    rep = write_report([sweep], plots=False, eps=False)
    assert len(rep.pending) == 2
    md = (sweep / "report" / "report.md").read_text()
    assert "2 of 4 jobs have a folder" in md
    assert "job 3 | not started | adversary.q=2 seed=1 |" in md


def test_runs_outside_the_guarantee_are_marked(tmp_path):
    complete(tmp_path / "s" / "0", 0.5, info={"outside_guarantee": True})
    write_report([tmp_path / "s"], plots=False, eps=False)
    md = (tmp_path / "s" / "report" / "report.md").read_text()
    assert "| rev_grad | 2* |" in md and "outside the placement's guarantee" in md
    (row,) = _rows(tmp_path / "s" / "report" / "report.csv")
    assert row["outside_guarantee"] == "true"


def test_several_folders_with_a_nested_layout(tmp_path):
    complete(tmp_path / "a" / "x" / "run1", 0.9)
    complete(tmp_path / "b" / "run2", 0.7, seed=1)
    out = tmp_path / "out"
    rep = write_report([tmp_path / "a", tmp_path / "b"], out, plots=False, eps=False)
    assert rep.out == out and len(rep.runs) == 2
    (row,) = _rows(out / "report.csv")
    assert row["seeds"] == "0 1" and row["complete"] == "2"


def test_progress_is_reported_on_large_sweeps(tmp_path):
    for s in range(5):
        complete(tmp_path / str(s), 0.9, seed=s)
    lines: list[str] = []
    write_report([tmp_path], plots=False, eps=False, progress_every=2, say=lines.append)
    assert lines[0] == "report: reading 5 runs"
    assert [ln for ln in lines if "/5 runs" in ln] == [
        "report: read 2/5 runs (0 s)",
        "report: read 4/5 runs (0 s)",
        "report: read 5/5 runs (0 s)",
    ]


def test_eps_table_compares_the_placement_with_detox_and_the_baseline(tmp_path):
    complete(tmp_path / "a", 0.9)
    notes: list[str] = []
    (curve,) = report.eps_curves([read_run(tmp_path / "a")], q_max=7, notes=notes)
    assert [r.c_max for r in curve.rows] == [0, 0, 1, 3, 5, 8, 12, 14]  # mols l=5 r=3
    assert curve.certified and curve.K == 15 and curve.f == 25
    assert curve.detox_r == 3
    assert curve.detox_eps == [min(q // 2, 5) / 5 for q in range(8)]
    assert curve.used == [(2, 1 / 25)]


# --------------------------------------------------------------------------------------
# The command line


def test_cli_writes_tables_and_plots_and_says_where(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for s in range(2):
        complete(tmp_path / "s" / str(s), 0.9 - s / 10, seed=s)
        complete(tmp_path / "s" / f"q1_{s}", 0.95, seed=s, **{"adversary.q": 1})
    make_run(tmp_path / "s" / "dead", steps=12, top1={10: 0.3}, **{"adversary.q": 3})
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"to {tmp_path / 'out'}" in printed
    assert "5 runs in 3 groups (4 complete, 1 died)" in printed
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "accuracy_vs_q.png",
        "accuracy_vs_step_coord-median_q=1.png",
        "accuracy_vs_step_coord-median_q=2.png",
        "accuracy_vs_step_coord-median_q=3.png",
        "eps_vs_q.png",
        "report.csv",
        "report.md",
        "runs.csv",
        "runs.jsonl.gz",
    ]
    for name in names:
        if name.endswith(".png"):
            assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "![eps_vs_q.png](eps_vs_q.png)" in md


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "error: no such folder: "),
        (lambda p: p.mkdir(), "error: no runs under "),
        (lambda p: p.write_text("x"), "error: not a folder: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, message):
    target = tmp_path / "target"
    setup(target)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_corrupt_line_is_a_warning_on_stderr_not_a_crash(tmp_path, capsys):
    make_run(tmp_path / "a", steps=30, top1={30: 0.8}, extra_lines=("{oops\n",))
    assert main([str(tmp_path / "a"), "--no-plots", "--no-eps"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "skipped 1 unreadable line (line 32)" in err


def test_ignore_option_merges_rows_that_differ_in_those_keys(tmp_path, capsys):
    complete(tmp_path / "a", 0.9, threads=1)
    complete(tmp_path / "b", 0.8, seed=1, threads=2)
    complete(tmp_path / "c", 0.8, seed=2, threads=2, log_every=5)
    args = [str(tmp_path), "--no-plots", "--no-eps", "-q"]
    assert main(args) == 0
    assert "3 runs in 3 groups" in capsys.readouterr().out
    assert main([*args, "--ignore", "threads,log_every"]) == 0
    assert "3 runs in 1 group " in capsys.readouterr().out
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Not distinguishing rows: seed, train_dir, threads, log_every." in md


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--stale-after", "--ignore", "--no-plots", "--eps-work", "--redraw"):
        assert option in text
    assert "95 % interval" in text and "%%" not in text


# --------------------------------------------------------------------------------------
# One tiny real sweep, end to end through the simulate engine


def test_real_sweep_end_to_end(tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    train = [
        sys.executable,
        "-m",
        "byzshield.train",
        "-m",
        f"train_dir={sweep}",
        "approach=mols,draco_lite",
        "adversary.q=2",
        "seed=0,1",
        "max_steps=4",
        "eval_freq=2",
        "checkpoint=false",
        "threads=1",
    ]
    proc = subprocess.run(train, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmd = [sys.executable, "-m", "byzshield.report", str(sweep), "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs in 2 groups (4 complete)" in proc.stdout
    rows = _rows(sweep / "report" / "report.csv")
    assert [(r["approach"], r["complete"], r["seeds"]) for r in rows] == [
        ("draco_lite(K=15, r=3)", "2", "0 1"),
        ("mols(l=5, r=3)", "2", "0 1"),
    ]
    for r in rows:
        assert 0 < float(r["final_top1_mean"]) <= 1 and float(r["train_s_mean"]) > 0
    mols = rows[1]
    assert float(mols["distorted_frac_mean"]) == pytest.approx(1 / 25)  # c_max(2) = 1 of 25
    md = (sweep / "report" / "report.md").read_text()
    assert "16 of 16" not in md and "4 of 4 jobs have a folder" in md
    assert "| 2 | 1 | 0.040 | yes | 0.200 | 0.133 |" in md  # eps(2): mols vs DETOX, baseline


@pytest.mark.slow
def test_attack_sweep_experiment_runs_through_the_joblib_launcher(tmp_path):
    """+experiment=attack_sweep, narrowed on the command line (command-line values win
    over the experiment's sweep grid): two jobs at a time on mnist1d, then the report."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    train = [
        sys.executable,
        "-m",
        "byzshield.train",
        "+experiment=attack_sweep",
        f"train_dir={sweep}",
        "approach=mols,draco_lite_attack",
        "mode=nnm-median",
        "attack=alie",
        "adversary.q=2",
        "seed=0",
        "max_steps=3",
        "eval_freq=3",
    ]
    proc = subprocess.run(train, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    runs = [read_run(sweep / str(i)) for i in range(2)]
    assert [r.status for r in runs] == ["complete", "complete"]
    for run in runs:
        assert run.config["dataset.name"] == "mnist1d" and run.config["network.name"] == "cnn1d"
        assert run.config["mode.pre"] == ["nnm"] and run.config["engine"] == "simulate"
    selections = {r.config["approach.name"]: r.info["selection"]["kind"] for r in runs}
    assert selections == {"mols": "worst_case", "draco_lite_attack": "detox_worst"}


def test_pivot_puts_one_value_per_column_and_filters_with_where(tmp_path):
    path = tmp_path / "report.csv"
    head = "approach,mode,attack,q,complete,final_top1_mean,final_top1_std\n"
    body = [
        "mols,coord-median,none,0,3,0.5,0.01",
        "mols,coord-median,alie,3,3,0.25,0.02",
        "mols,coord-median,alie,1,3,0.4,",
        "baseline,coord-median,alie,3,2,0.125,0.05",
    ]
    path.write_text(head + "\n".join(body) + "\n")
    table = report.pivot_table(path, "attack", {"q": {"0", "3"}})
    lines = table.splitlines()
    assert lines[2] == "| approach | mode | none | alie |"
    # 95 % t intervals: 50 +- 4.3027 * 1 / sqrt(3), 12.5 +- 12.7062 * 5 / sqrt(2)
    assert lines[4] == "| MOLS | coord-median | 50.0 [47.5, 52.5] (3) | 25.0 [20.0, 30.0] (3) |"
    assert lines[5] == "| baseline | coord-median |  | 12.5 [-32.4, 57.4] (2) |"
    assert "q = 0 or 3" in lines[0] and "95 % interval" in lines[0] and len(lines) == 6
    lines = report.pivot_table(path, "attack", {"q": {"0", "3"}}, spread="std").splitlines()
    assert lines[4] == "| MOLS | coord-median | 50.0 ± 1.0 (3) | 25.0 ± 2.0 (3) |"


def test_pivot_options_are_checked(tmp_path, capsys):
    complete(tmp_path / "a", 0.9)
    assert main([str(tmp_path), "--where", "q=3"]) == 2  # --where needs --pivot
    assert "--where selects the groups of --pivot's table" in capsys.readouterr().err
    assert main([str(tmp_path), "--pivot", "q", "--where", "q"]) == 2
    assert "--where takes KEY=VALUE" in capsys.readouterr().err


def test_pivot_keeps_a_where_key_with_several_values_when_dropping_it_would_merge_cells(
    tmp_path,
):
    """--pivot mode --where q=1,3: both q values of one approach and attack stay apart
    (they used to land in one cell, the q=3 value overwriting the q=1 one)."""
    path = tmp_path / "report.csv"
    head = "approach,mode,attack,q,batch_size,runs,complete,final_top1_mean,final_top1_std\n"
    body = [
        "mols,coord-median,alie,1,150,3,3,0.795,",
        "mols,coord-median,alie,3,150,3,3,0.74,",
        "mols,multi-krum,alie,1,150,3,3,0.8,",
        "mols,multi-krum,alie,3,150,3,3,0.7,",
        "mols,multi-krum,alie,5,150,3,3,0.6,",
    ]
    path.write_text(head + "\n".join(body) + "\n")
    lines = report.pivot_table(path, "mode", {"q": {"1", "3"}}).splitlines()
    assert lines[2] == "| approach | attack | q | coord-median | multi-krum |"
    assert lines[4] == "| MOLS | alie | 1 | 79.5 (3) | 80.0 (3) |"
    assert lines[5] == "| MOLS | alie | 3 | 74.0 (3) | 70.0 (3) |"
    assert len(lines) == 6


def test_without_matplotlib_the_report_says_in_one_line_that_it_skipped_the_plots(
    tmp_path, monkeypatch
):
    make_run(tmp_path / "a", steps=30, top1={30: 0.5})
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    lines = []
    rep = write_report([tmp_path / "a"], tmp_path / "out", eps=False, say=lines.append)
    assert lines == [report.PLOTS_SKIPPED] and "pip install 'byzshield[report]'" in lines[0]
    assert not [f for f in rep.files if f.endswith(".png")]
    assert report.PLOTS_SKIPPED in (tmp_path / "out" / "report.md").read_text()


# --------------------------------------------------------------------------------------
# Figures: nothing cut, titles apart, one colour per approach, integer q and step, every
# band and bar named. Each figure the report writes is checked as it is saved.


def _texts(fig) -> list[tuple[str, object]]:
    """(kind, artist) of every title, axis label, visible tick label and legend."""
    items: list[tuple[str, object]] = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        items += [("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = (high - low) * 1e-9
            items += [
                ("tick", t.label1)
                for t in axis.get_major_ticks()
                if low - slack <= t.get_loc() <= high + slack and t.label1.get_visible()
            ]
        if ax.get_legend() is not None:
            items.append(("legend", ax.get_legend()))
    items += [("legend", legend) for legend in fig.legends]
    if fig._suptitle is not None:
        items.append(("title", fig._suptitle))
    return [(k, a) for k, a in items if k == "legend" or a.get_text()]


def layout_problems(fig) -> list[str]:
    """What lies (partly) outside the canvas, and titles that overlap each other."""
    import itertools

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    problems = []
    items = _texts(fig)
    for kind, artist in items:
        box = artist.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            text = artist.get_text() if kind != "legend" else ""
            problems.append(f"{kind} {text!r} outside the {width:.0f}x{height:.0f} canvas")
    titles = [a for kind, a in items if kind == "title"]
    for a, b in itertools.combinations(titles, 2):
        if a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer)):
            problems.append(f"titles {a.get_text()!r} and {b.get_text()!r} overlap")
    return problems


@pytest.fixture
def saved_figures(monkeypatch):
    """{file name: figure facts} of every figure saved while the test runs."""
    return _capture_figures(monkeypatch)


def _capture_figures(monkeypatch) -> dict[str, dict]:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: dict[str, dict] = {}
    original = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        colors: dict[str, set] = {}
        xticks: list[str] = []
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                line = handle.lines[0] if hasattr(handle, "lines") else handle
                name = label.split(" (n=")[0].split(" (incomplete)")[0]
                colors.setdefault(name, set()).add(matplotlib.colors.to_hex(line.get_color()))
            xticks += [t.get_text() for kind, t in _texts(fig) if kind == "tick"]
        legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        saved[Path(fname).name] = {
            "problems": layout_problems(fig),
            "colors": colors,
            "legend": legend_texts,
            "xlabels": [ax.get_xlabel() for ax in fig.axes],
            "xticks": [
                t.label1.get_text()
                for ax in fig.axes
                for t in ax.xaxis.get_major_ticks()
                if ax.get_xlabel().startswith(("q ", "step"))
                and min(ax.get_xlim()) <= t.get_loc() <= max(ax.get_xlim())
            ],
        }
        return original(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


LONG = {"eval_freq": 50, "lr_step": 25}  # settings that vary make titles long


def _figure_sweep(root: Path) -> None:
    """Two approaches x two rules x two batch sizes x q in 0..3, two seeds; MOLS's
    accuracy falls slower than DETOX's."""
    k = 0
    detox_info = {"placement": "draco_lite_attack(K=15, r=3): K=15 workers, f=5 files", "f": 5}
    for name, approach in (
        ("mols", {"name": "mols", "l": 5, "r": 3}),
        ("detox", {"name": "draco_lite_attack", "K": 15, "r": 3}),
    ):
        for buckets in (None, 5):
            for batch, lr, freq, lr_step in ((150, 0.1, 10, 25), (750, 0.2236, 15, 10)):
                for q in (0, 1, 2, 3):
                    for seed in (0, 1):
                        acc = 0.9 - q / 10 * (1.5 if name == "detox" else 1) + seed / 100
                        make_run(
                            root / str(k),
                            steps=30,
                            top1={10: 0.3, 20: acc - 0.05, 30: acc},
                            approach=approach,
                            seed=seed,
                            batch_size=batch,
                            lr=lr,
                            lr_step=lr_step,
                            eval_freq=freq,
                            info=detox_info if name == "detox" else None,
                            **{"adversary.q": q, "attack.name": "alie"},
                            **{"mode.num_buckets": buckets},
                        )
                        k += 1


PAIRS = [
    "mols(l=5, r=3) / coord-median(num_buckets=5) vs "
    "draco_lite_attack(K=15, r=3) / coord-median(num_buckets=null)",
    "MOLS K=15 / coord-median(num_buckets=null) vs "
    "DETOX (worst) K=15 r=3 / coord-median(num_buckets=null)",
]


@pytest.fixture
def figure_sweep(tmp_path) -> Path:
    _figure_sweep(tmp_path / "sweep")
    return tmp_path / "sweep"


@pytest.fixture(scope="module")
def figure_report(tmp_path_factory):
    """(the report, {file name: figure facts}) of the figure sweep, every figure drawn:
    drawn once for the tests that read the figures."""
    tmp = tmp_path_factory.mktemp("figures")
    _figure_sweep(tmp / "sweep")
    with pytest.MonkeyPatch.context() as mp:
        saved = _capture_figures(mp)
        rep = write_report([tmp / "sweep"], tmp / "out", paired=PAIRS, eps_q_max=4)
    return rep, saved


def test_every_figure_keeps_its_text_inside_the_image_and_titles_apart(figure_report):
    """Legends, titles, axis and tick labels of every figure lie inside the canvas and no
    two titles overlap (they used to be cut at the edges, and drop_vs_bias's long panel
    titles ran into each other)."""
    rep, saved_figures = figure_report
    kinds = {"accuracy_vs_step_", "accuracy_vs_q", "eps_vs_q", "drop_vs_bias", "paired_vs_q"}
    assert {k for k in kinds for name in saved_figures if name.startswith(k)} == kinds
    assert sorted(f for f in rep.files if f.endswith(".png")) == sorted(saved_figures)
    problems = {name: facts["problems"] for name, facts in saved_figures.items()}
    assert problems == {name: [] for name in saved_figures}


def test_a_single_q_and_long_names_still_fit(tmp_path, saved_figures):
    for seed in (0, 1):
        complete(tmp_path / "s" / f"m{seed}", 0.8, seed=seed)
        complete(
            tmp_path / "s" / f"d{seed}",
            0.7,
            seed=seed,
            approach={"name": "draco_lite_attack", "K": 15, "r": 3},
        )
    write_report([tmp_path / "s"], tmp_path / "out", eps_q_max=3)
    assert saved_figures and all(not f["problems"] for f in saved_figures.values())
    xticks = saved_figures["accuracy_vs_q.png"]["xticks"]
    assert xticks == ["1", "2", "3"]  # not 1.900, 1.925, ... around the one q that ran


def test_one_colour_per_approach_in_every_figure(figure_report):
    """An approach has the same colour in every figure of the report, and no two
    approaches share one (eps_vs_q used to draw each panel's own placement in blue)."""
    _, saved_figures = figure_report
    seen: dict[str, set] = {}
    for facts in saved_figures.values():
        for name, colors in facts["colors"].items():
            seen.setdefault(name, set()).update(colors)
    assert {"MOLS K=15", "DETOX (worst) K=15 r=3", "baseline K=15"} <= set(seen)
    assert all(len(colors) == 1 for colors in seen.values()), seen
    assert "c_max(q) / f of the runs (run.json)" in seen  # black crosses, not an approach
    del seen["c_max(q) / f of the runs (run.json)"]
    approaches = {n: c for n, c in seen.items() if " − " not in n}  # not the A - B lines
    assert len({c for colors in approaches.values() for c in colors}) == len(approaches)
    assert seen["MOLS K=15"] == {"#1f77b4"}  # MOLS is blue in every report


def test_q_and_step_ticks_are_integers_and_bands_and_bars_are_named(
    figure_report, figure_sweep, tmp_path, saved_figures
):
    for name, facts in figure_report[1].items():
        assert facts["xticks"] or name == "drop_vs_bias.png"
        assert all(t.lstrip("−-").isdigit() for t in facts["xticks"]), (name, facts["xticks"])
    drawn = figure_report[1]
    step = next(f for n, f in drawn.items() if n.startswith("accuracy_vs_step_"))
    assert "shaded: 95 % interval over seeds" in step["legend"]
    assert "bars: 95 % interval over seeds" in drawn["accuracy_vs_q.png"]["legend"]
    assert "dotted: no attack (q = 0)" in drawn["accuracy_vs_q.png"]["legend"]
    assert "bars (paired): 95 % interval over seeds" in drawn["paired_vs_q.png"]["legend"]
    write_report([figure_sweep], tmp_path / "std", eps=False, spread="std", figures=["q"])
    assert "bars: ± std over seeds" in saved_figures["accuracy_vs_q.png"]["legend"]


def test_the_distortion_figure_of_the_placement_command_fits(tmp_path, saved_figures):
    """python -m byzshield.placement designs=[...] out=DIR draws eps_figure too."""
    from byzshield.placement import placement_main

    designs = "designs=[{approach: mols, l: 5, r: 3}, {approach: rama_two, m: 5, s: 5}]"
    assert placement_main([designs, f"out={tmp_path}", "q_max=6"]) == 0
    facts = saved_figures["distortion.png"]
    assert facts["problems"] == []
    assert set(facts["colors"]) == {
        "MOLS K=15",
        "Ramanujan 2 K=25",
        "DETOX (worst) K=15 r=3",
        "DETOX (worst) K=25 r=5",
        "baseline K=15",
        "baseline K=25",
    }


def test_redraw_from_the_tables_gives_the_figures_drawn_from_the_runs(figure_sweep, tmp_path):
    """A report's report.csv and paired.csv hold what its q, drop and paired figures
    draw: --redraw writes the same images without the run folders."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    args = ["--no-eps", "--figures", "q,drop,paired", "-q"]
    assert main([str(figure_sweep), "--out", str(out), *args, "--paired", PAIRS[0]]) == 0
    assert main([str(out), "--redraw", "--out", str(tmp_path / "again"), "-q"]) == 0
    for name in ("accuracy_vs_q.png", "drop_vs_bias.png", "paired_vs_q.png"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


# --------------------------------------------------------------------------------------
# Each rule's worst attack (--worst-over attack), and the backdoor's success rate

WORST_ATTACKS = ("alie", "min_max", "fang")
HETEROGENEITY = (("iid", 1.0), ("dirichlet", 1.0), ("dirichlet", 0.1))


def _accuracy(mode: str, attack: str, q: int, partition: tuple, seed: int) -> float:
    """A made-up final accuracy: each setting has its own worst attack."""
    base = 0.9 - 0.1 * q - (0.2 if partition == ("dirichlet", 0.1) else 0.0)
    hurt = {"alie": 0.02, "min_max": 0.05, "fang": 0.03}.get(attack, 0.0)
    if mode == "trimmed-mean" and attack == "fang":
        hurt = 0.08  # Fang's attack is made for trimmed mean
    if partition[0] != "iid" and attack == "alie":
        hurt += 0.05 * (1 + q)
    return base - hurt + seed / 100


def _worst_sweep(root: Path) -> None:
    k = 0
    for mode in ("coord-median", "trimmed-mean"):
        for partition in HETEROGENEITY:
            for attack, qs in (("none", (0,)), *((a, (1, 2)) for a in WORST_ATTACKS)):
                for q in qs:
                    for seed in (0, 1):
                        acc = _accuracy(mode, attack, q, partition, seed)
                        complete(
                            root / str(k),
                            acc,
                            seed=seed,
                            **{"mode.name": mode, "attack.name": attack, "adversary.q": q},
                            **{"dataset.partition": partition[0], "dataset.alpha": partition[1]},
                        )
                        k += 1


def test_worst_over_attack_finds_each_cells_lowest_mean_and_its_attack(tmp_path):
    _worst_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    code = main([str(tmp_path / "sweep"), "--out", str(out), "--no-eps", "--no-plots", "-q"])
    assert code == 0 and not (out / "worst.md").exists()  # only when asked for
    args = ["--worst-over", "attack", "--no-eps", "--no-plots", "-q"]
    assert main([str(tmp_path / "sweep"), "--out", str(out), *args]) == 0
    with open(out / "worst.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 2  # rule x heterogeneity x q; attack=none is no cell
    for row in rows:
        partition = (row["dataset.partition"], float(row["dataset.alpha"]))
        q = int(row["q"])
        means = {
            a: statistics.mean(_accuracy(row["mode"], a, q, partition, s) for s in (0, 1))
            for a in WORST_ATTACKS
        }
        worst = min(means, key=means.get)
        assert row["worst_attack"] == worst, row
        assert float(row["worst_top1_mean"]) == pytest.approx(means[worst])
        assert sorted(row["attacks"].split()) == sorted(WORST_ATTACKS)
        assert row["worst_top1_n"] == "2"
        reference = statistics.mean(_accuracy(row["mode"], "none", 0, partition, s) for s in (0, 1))
        assert float(row["no_attack_top1_mean"]) == pytest.approx(reference)
    text = (out / "worst.md").read_text()
    assert "| rule | placement | q | dataset.alpha | dataset.partition | worst attack |" in text
    assert "![" not in text  # --no-plots: no heatmap


def test_worst_attack_heatmaps_show_every_cell_on_one_scale_with_nothing_cut(tmp_path):
    pytest.importorskip("matplotlib")
    from byzshield.report.worst import worst_cells, worst_figures

    _worst_sweep(tmp_path / "sweep")
    cells = worst_cells(group_runs([read_run(p) for p in (tmp_path / "sweep").iterdir()]))
    figures = dict(worst_figures(cells))
    assert set(figures) == {"worst_rule_vs_q.png", "worst_rule_vs_heterogeneity.png"}
    for name, fig in figures.items():
        assert layout_problems(fig) == [], name
        images = [im for ax in fig.axes for im in ax.get_images()]
        assert {im.get_clim() for im in images} == {(0, 100)}  # one colour scale
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert len(texts) == len(cells)  # a cell for each (rule, placement, q, partition)
        for c in cells:
            assert f"{100 * c.mean:.1f}\n{c.attack}" in texts
        heat = fig.axes[0]
        assert heat.get_ylabel() == "rule"
        assert [t.get_text() for t in heat.get_yticklabels()] == ["coord-median", "trimmed-mean"]
    ticks = [
        t.get_text() for t in figures["worst_rule_vs_heterogeneity.png"].axes[0].get_xticklabels()
    ]
    ticks = [" ".join(t.split()) for t in ticks]  # wrapped to fit their cells
    assert ticks == ["iid", "Dirichlet alpha 1", "Dirichlet alpha 0.1"]  # least skewed first
    titles = [ax.get_title() for ax in figures["worst_rule_vs_q.png"].axes if ax.get_visible()]
    assert "MOLS K=15, iid" in titles
    from byzshield.report.plots import pyplot

    for fig in figures.values():
        pyplot().close(fig)


def test_worst_over_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys):
    complete(tmp_path / "s" / "a", 0.8, **{"attack.name": "none", "adversary.q": 0})
    assert main([str(tmp_path / "s"), "--worst-over", "attack", "--no-eps", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --worst-over attack needs runs under attack") and "\n" not in err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "s"), "--worst-over", "mode"])


def test_the_backdoor_success_rate_is_a_column_when_a_run_has_it(tmp_path):
    for seed, asr in ((0, 0.25), (1, 0.35)):
        final = json.dumps(
            {"step": 30, "event": "eval", "top1": 0.8, "top5": 1.0, "backdoor_asr": asr}
        )
        make_run(
            tmp_path / "s" / f"b{seed}",
            steps=30,
            top1={10: 0.5, 20: 0.7},
            extra_lines=(final + "\n",),
            seed=seed,
            **{"attack.name": "backdoor"},
        )
    complete(tmp_path / "s" / "plain", 0.85, **{"attack.name": "alie"})
    rep = write_report([tmp_path / "s"], tmp_path / "out", eps=False, plots=False)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| backdoor ASR % |" in text and "30.00 [" in text
    with open(tmp_path / "out" / "report.csv", newline="") as fh:
        rows = {r["attack"]: r for r in csv.DictReader(fh)}
    assert float(rows["backdoor"]["final_backdoor_asr_mean"]) == pytest.approx(0.30)
    assert rows["alie"]["final_backdoor_asr_mean"] == ""
    assert {r.path.name: (r.final or {}).get("backdoor_asr") for r in rep.runs} == {
        "b0": 0.25,
        "b1": 0.35,
        "plain": None,
    }
    complete(tmp_path / "t" / "plain", 0.85)
    write_report([tmp_path / "t"], tmp_path / "out2", eps=False, plots=False)
    assert "backdoor ASR" not in (tmp_path / "out2" / "report.md").read_text()
