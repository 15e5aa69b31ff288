"""The lockstep engine: runs of one shape trained together follow the simulate engine's
votes exactly and its parameters to float32 rounding; a run's bits do not depend on the
runs beside it or on an interruption; a sweep trains in groups and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_env

from byzshield.config import build_run
from byzshield.config.overrides import compose_config
from byzshield.engines.lockstep import LockstepGroup, Member, lockstep
from byzshield.engines.simulate import simulate
from byzshield.server.metrics import TIME_KEYS
from byzshield.training.loop import TrainingError
from byzshield.training.records import announce
from byzshield.training.runfolder import prepare, release

TIMES = {*TIME_KEYS, "step_s", "other_s", "vote_tail_s"}
BASE = (
    "dataset=mnist1d",
    "network=cnn1d",
    "batch_size=150",
    "lr=0.1",
    "threads=1",
    "outside_guarantee=true",
)
# each through the batched update (fast) or the general robust update (general)
CONFIGS = {
    "mols-alie-median": ("approach=mols", "attack=alie", "adversary.q=3"),
    "mols-alie-mom": ("approach=mols", "attack=alie", "adversary.q=3", "mode.num_buckets=5"),
    "detox-ipm": ("approach=draco_lite_attack", "attack=ipm", "adversary.q=3"),
    "detox-random-alie": ("approach=draco_lite", "attack=alie", "adversary.q=4"),
    "rama-revgrad-mean": ("approach=rama_two", "attack=rev_grad", "adversary.q=5", "mode=mean"),
    "baseline-constant": ("approach=baseline", "attack=constant", "adversary.q=2"),
    "mols-none": ("approach=mols", "attack=none"),
    "mols-alie-dirichlet": (
        "approach=mols",
        "attack=alie",
        "adversary.q=3",
        "dataset.partition=dirichlet",
        "dataset.alpha=0.3",
    ),
    "general-labelflip-classes": (  # flipped labels recomputed on the partitioned files
        "approach=mols",
        "attack=label_flip",
        "adversary.q=3",
        "dataset.partition=classes",
        "dataset.classes_per_file=1",
    ),
    "mols-minmax-median": ("approach=mols", "attack=min_max", "adversary.q=3"),
    "mols-minsum-trimmed": (
        "approach=mols",
        "attack=min_sum",
        "attack.direction=std",
        "adversary.q=3",
        "mode=trimmed-mean",
    ),
    "detox-fang-trimmed": ("approach=draco_lite_attack", "attack=fang", "mode=trimmed-mean"),
    "baseline-minmax-sign-mean": (
        "approach=baseline",
        "attack=min_max",
        "attack.direction=sign",
        "adversary.q=2",
        "mode=mean",
    ),
    "general-backdoor": ("approach=mols", "attack=backdoor", "adversary.q=3"),
    "general-multikrum-labelflip": (
        "approach=mols",
        "attack=label_flip",
        "adversary.q=3",
        "mode=multi-krum",
    ),
    "general-ties": (  # r = 2: ties drop files, which the general update handles
        "approach=draco_lite_attack",
        "approach.K=10",
        "approach.r=2",
        "attack=alie",
        "adversary.q=3",
        "batch_size=100",
    ),
}
DISCRETE = (
    "byzantine",
    "distorted",
    "distorted_files",
    "all_strict",
    "non_strict_files",
    "nonfinite_winners",
    "lost_votes",
    "outside_guarantee",
    "bytes_received",
    "lr",
    "label_tv",
)


def _last_params(folder: Path) -> dict:
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def _steps(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in read_metrics(folder)[0]]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    """Every config of CONFIGS for 4 steps with the simulate engine, and all of them
    with the lockstep engine in one call (so the groups mix configs)."""
    root = tmp_path_factory.mktemp("engines")
    common = (*BASE, "max_steps=4", "eval_freq=2")
    jobs = []
    for name, overrides in CONFIGS.items():
        simulate([*common, *overrides], root / name / "simulate")
        jobs.append(([*common, *overrides], root / name / "lockstep"))
    lockstep(jobs, threads=1)
    return root


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lockstep_votes_as_the_simulate_engine_and_follows_its_parameters(name, both_engines):
    sim, ls = both_engines / name / "simulate", both_engines / name / "lockstep"
    a, b = _steps(sim), _steps(ls)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        assert {k: ra[k] for k in DISCRETE} == {k: rb[k] for k in DISCRETE}
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert (ra["attack_factor"] is None) == (rb["attack_factor"] is None)
        if ra["attack_factor"] is not None:  # Min-Max's and Min-Sum's gamma
            assert rb["attack_factor"] == pytest.approx(ra["attack_factor"], rel=1e-4)
    pa, pb = _last_params(sim), _last_params(ls)
    for key in pa:
        assert (pa[key] - pb[key]).abs().max() <= 1e-4 * pa[key].abs().max(), key
    info = json.loads((ls / "run.json").read_text())
    assert info["engine"] == "lockstep"


FAST = {  # the configs of CONFIGS the batched update takes, and its attack form
    "mols-alie-median": "alie",
    "detox-ipm": "ipm",
    "mols-minmax-median": "min_max",
    "mols-minsum-trimmed": "min_sum",
    "detox-fang-trimmed": "fang",
    "baseline-minmax-sign-mean": "min_max",
    "rama-revgrad-mean": "elementwise",
}


@pytest.mark.parametrize("name", ["general-backdoor", "general-multikrum-labelflip", *FAST])
def test_the_batched_update_covers_the_strongest_attacks_and_trimmed_mean(name):
    from byzshield.engines.lockstep.fast import fast_update
    from byzshield.server.update import build_update

    run = build_run(compose_config([*BASE, *CONFIGS[name], "engine=lockstep"]))
    d = run.num_params
    fast = fast_update(run, build_update(run.update_spec(), d), d)
    assert (fast.kind if fast is not None else None) == FAST.get(name)


def _members(jobs) -> list[Member]:
    out = []
    for overrides, folder in jobs:
        config = compose_config([*overrides, "engine=lockstep", f"train_dir={folder}"])
        run = build_run(config)
        path, resume = prepare(Path(folder), run)
        announce(run, path, "lockstep", quiet=True)
        out.append(Member(run, path, resume, name=str(folder)))
    return out


def test_a_lockstep_run_is_the_same_alone_beside_others_and_resumed(tmp_path):
    run_a = (*BASE, "approach=mols", "attack=alie", "adversary.q=3", "seed=4", "eval_freq=3")
    others = [
        (*BASE, "approach=mols", "attack=ipm", "adversary.q=2", "seed=1", "max_steps=6"),
        (*BASE, "approach=mols", "attack=none", "seed=9", "max_steps=4", "mode.num_buckets=5"),
        (*BASE, "approach=mols", "attack=alie", "dataset.partition=dirichlet", "max_steps=5"),
    ]
    lockstep([([*run_a, "max_steps=6"], tmp_path / "alone")])
    lockstep(
        [
            (others[0], tmp_path / "o0"),
            ([*run_a, "max_steps=6"], tmp_path / "beside"),
            (others[1], tmp_path / "o1"),
            (others[2], tmp_path / "o2"),  # another partition in the same batched group
        ],
        threads=2,
    )
    lockstep([([*run_a, "max_steps=3"], tmp_path / "resumed")])  # stops after step 3
    lockstep([([*run_a, "max_steps=6"], tmp_path / "resumed")])  # resumes from it
    ref = _last_params(tmp_path / "alone")
    for name in ("beside", "resumed"):
        got = _last_params(tmp_path / name)
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
        assert _steps(tmp_path / name) == _steps(tmp_path / "alone"), name


def test_a_lockstep_run_that_becomes_non_finite_stops_alone(tmp_path):
    good = (*BASE, "approach=mols", "attack=none", "max_steps=3", "eval_freq=0")
    bad = (*BASE, "approach=mols", "mode=mean", "aggregator_f=0", "attack=constant")
    bad = (*bad, "attack.value=-1e38", "adversary.q=3", "max_steps=40", "eval_freq=0")
    members = _members([(good, tmp_path / "good"), (bad, tmp_path / "bad")])
    lines = []
    group = LockstepGroup(members, threads=1, say=lines.append)
    results = group.train()
    for m in members:
        release(m.folder)
    assert 0 in results and 1 not in results
    assert len(group.failures) == 1
    assert group.failures[0].startswith(f"{tmp_path / 'bad'}: step ")
    assert "the model became non-finite" in group.failures[0]
    assert read_metrics(tmp_path / "good")[1][-1]["step"] == 3
    # the group ends with a line per run: its folder, and its final evaluation or error
    good_line, bad_line = lines[-2:]
    assert good_line.startswith(f"{tmp_path / 'good'}: test accuracy: top-1 ")
    assert good_line.endswith(" after 3 steps")
    assert bad_line.startswith(f"{tmp_path / 'bad'}: error: step ") and "non-finite" in bad_line
    with pytest.raises(TrainingError, match="became non-finite"):
        lockstep([(bad, tmp_path / "bad2")])


def test_a_lockstep_multirun_trains_by_shape_and_a_rerun_does_nothing(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "byzshield.train",
        "-m",
        "engine=lockstep",
        *BASE,
        "approach=mols,draco_lite_attack",
        "attack=alie",
        "adversary.q=1,3",
        "seed=0",
        "max_steps=4",
        "eval_freq=2",
        f"train_dir={tmp_path / 'sweep'}",
    ]
    first = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=run_env()
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "lockstep: 4 runs in 2 groups" in first.stdout
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert len(jobs) == 4
    for job in jobs:
        assert json.loads((job / "run.json").read_text())["engine"] == "lockstep"
        assert read_metrics(job)[1][-1]["step"] == 4
    again = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=run_env()
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("all 2 runs are complete; nothing to do") == 2
    report = subprocess.run(
        [sys.executable, "-m", "byzshield.report", str(tmp_path / "sweep"), "--no-plots"],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_env(),
    )
    assert report.returncode == 0, report.stderr
    assert "4 runs in 4 groups (4 complete)" in report.stdout


@pytest.mark.parametrize(("threads", "expected"), [(None, 1), (2, 2)])
def test_a_lockstep_group_trains_on_one_intra_op_thread_unless_told(
    threads, expected, monkeypatch, tmp_path
):
    """The default is one thread whatever the CPU count (two sweeps side by side would
    otherwise wait on each other's threads: docs/engines.md); the caller's count is
    restored afterwards."""
    seen = []
    monkeypatch.setattr(LockstepGroup, "_train", lambda self: seen.append(torch.get_num_threads()))
    folder = tmp_path / "run"
    (member,) = _members([((*BASE, "max_steps=1", "eval_freq=0"), folder)])
    before = torch.get_num_threads()
    try:
        LockstepGroup([member], threads=threads).train()
    finally:
        release(member.folder)
    assert seen == [expected]
    assert torch.get_num_threads() == before
