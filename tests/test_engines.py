"""Bit-identity of the two engines: torchrun (K+1 processes over gloo) and simulate (one
process) give torch.equal parameters and equal per-step metrics apart from timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_metrics, run_env, torchrun_cmd

from byzshield.engines.simulate import simulate
from byzshield.server.metrics import TIME_KEYS

COMMON = ("adversary.q=2", "max_steps=3", "eval_freq=2", "seed=5")
REAL_SWEEP = ("attack=label_flip,alie", "adversary.selection=worst_case")
DESIGNS = {  # small instances of the four families; K + 1 processes each
    "mols": (13, "approach=mols", "approach.l=4", "approach.r=3", "batch_size=96"),
    "rama_two": (
        10,
        "approach=rama_two",
        "approach.m=3",
        "approach.s=3",
        "batch_size=90",
        "mode=multi-krum",
    ),
    "draco_lite": (10, "approach=draco_lite", "approach.K=9", "approach.r=3", "mode=mean"),
    "baseline": (7, "approach=baseline", "approach.K=6", "batch_size=60", "mode=mean"),
    "mols_dirichlet": (  # heterogeneous files: every copy of a file is still the same samples
        13,
        "approach=mols",
        "approach.l=4",
        "approach.r=3",
        "batch_size=96",
        "dataset.partition=dirichlet",
        "dataset.alpha=0.3",
    ),
}
TIMES = {*TIME_KEYS, "step_s", "other_s", "vote_tail_s"}


def _job_overrides(job: Path) -> list[str]:
    ovs = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return [o for o in ovs if not o.startswith("train_dir=")]


def _params(folder: Path) -> dict:
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_a) == len(rows_b) > 0
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert set(ra) == set(rb)
        assert {k: v for k, v in ra.items() if k not in TIMES} == {
            k: v for k, v in rb.items() if k not in TIMES
        }
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


ATTACKS = ("rev_grad", "constant", "label_flip", "alie")
SELECTIONS = ("worst_case", "random")


@pytest.mark.parametrize(
    ("design", "attack", "selection"),
    [
        *((d, a, s) for d in ("mols", "rama_two") for a in ATTACKS for s in SELECTIONS),
        *((d, a, "worst_case") for d in ("draco_lite", "baseline") for a in ("alie", "label_flip")),
        ("mols", "backdoor", "worst_case"),  # a worker's poisoned samples, and the ASR
    ],
)
def test_the_torchrun_engine_in_threads_and_simulate_give_the_same_bits(
    tmp_path, design, attack, selection
):
    """The torchrun engine's server and workers (ranks as threads over gloo, the code of
    real processes: tests/threaded.py) against the simulate engine."""
    from threaded import run_threaded

    _, *overrides = DESIGNS[design]
    ovs = [*overrides, *COMMON, f"attack={attack}", f"adversary.selection={selection}"]
    result, errors = run_threaded(ovs, tmp_path / "torchrun")
    assert not errors and isinstance(result, dict), (result, errors)
    simulate(ovs, tmp_path / "simulate")
    assert_same_run(tmp_path / "torchrun", tmp_path / "simulate")
    if selection == "worst_case":
        c_max = json.loads((tmp_path / "simulate" / "run.json").read_text())["selection"]["c_max"]
        assert all(s["distorted"] == c_max for s in read_metrics(tmp_path / "torchrun")[0])


@pytest.mark.parametrize(
    "design",
    [  # real processes, with the slow tests (CI runs them): the default suite has the same
        # comparison with the ranks as threads above, and torchrun itself in
        # tests/test_train_distributed.py
        pytest.param("mols", marks=pytest.mark.slow),
        pytest.param("rama_two", marks=pytest.mark.slow),
        pytest.param("draco_lite", marks=pytest.mark.slow),
        pytest.param("baseline", marks=pytest.mark.slow),
        pytest.param("mols_dirichlet", marks=pytest.mark.slow),
    ],
)
def test_torchrun_and_simulate_give_the_same_bits(tmp_path, design):
    """Real processes under torchrun, a multirun of two jobs (the in-thread test above
    covers the attacks and selections)."""
    nproc, *overrides = DESIGNS[design]
    sweep = tmp_path / "torchrun"
    proc = subprocess.run(
        torchrun_cmd(nproc, "-m", f"train_dir={sweep}", *overrides, *COMMON, *REAL_SWEEP),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 2  # every job of the multirun in its own folder
    seen = set()
    for job in jobs:
        ovs = _job_overrides(job)
        seen.add(tuple(o for o in ovs if o.startswith("attack=") or "selection" in o))
        assert (job / "run.json").exists() and (job / "rank0.log").exists()
        steps, evals = read_metrics(job)
        assert len(steps) == 3 and [e["step"] for e in evals] == [2, 3]
        if "adversary.selection=worst_case" in ovs:
            assert all(
                s["distorted"] == json.loads((job / "run.json").read_text())["selection"]["c_max"]
                for s in steps
            ), job
        simulate(ovs, tmp_path / "simulate" / job.name)
        assert_same_run(job, tmp_path / "simulate" / job.name)
    assert len(seen) == 2


def test_stragglers_and_the_1d_network_give_the_same_bits_in_both_engines(tmp_path):
    from threaded import run_threaded

    _, *overrides = DESIGNS["rama_two"]
    # MNIST-1D's 1-D CNN runs without oneDNN: covers the other kernel path too
    ovs = (*overrides, *COMMON, "attack=alie", "stragglers=2", "dataset=mnist1d", "network=cnn1d")
    result, errors = run_threaded(ovs, tmp_path / "tr")
    assert not errors and isinstance(result, dict), (result, errors)
    simulate(ovs, tmp_path / "sim")
    assert_same_run(tmp_path / "tr", tmp_path / "sim")
    steps, _ = read_metrics(tmp_path / "sim")
    assert all(len(s["missing_workers"]) == 2 for s in steps)


@pytest.mark.parametrize(
    "overrides",
    [
        ("dataset.partition=dirichlet", "dataset.alpha=0.3", "attack=alie"),
        # label flip: the Byzantine workers recompute their files on flipped labels
        ("dataset.partition=classes", "dataset.classes_per_file=2", "attack=label_flip"),
    ],
    ids=["dirichlet-alie", "classes-label_flip"],
)
def test_partitioned_files_give_the_same_bits_in_both_engines(tmp_path, overrides):
    from threaded import run_threaded

    _, *design = DESIGNS["mols"]
    ovs = (*design, *COMMON, *overrides, "dataset=mnist1d", "network=cnn1d")
    result, errors = run_threaded(ovs, tmp_path / "tr")
    assert not errors and isinstance(result, dict), (result, errors)
    simulate(ovs, tmp_path / "sim")
    assert_same_run(tmp_path / "tr", tmp_path / "sim")
    steps, _ = read_metrics(tmp_path / "sim")
    assert all(0 < s["label_tv"] < 1 for s in steps)


@pytest.mark.slow
def test_default_mols_run_under_alie_is_identical_in_both_engines(tmp_path):
    overrides = ("attack=alie", "attack.z=1.0", "max_steps=20", "eval_freq=10")
    proc = subprocess.run(
        torchrun_cmd(16, f"train_dir={tmp_path / 'tr'}", *overrides),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    simulate(overrides, tmp_path / "sim")
    assert_same_run(tmp_path / "tr", tmp_path / "sim")


def test_simulate_multirun_runs_jobs_one_after_another_in_one_process(tmp_path):
    folder = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "byzshield.train",
            "-m",
            f"train_dir={folder}",
            "approach=rama_two",
            "approach.m=3",
            "approach.s=3",
            "batch_size=90",
            "mode=coord-median,mean",
            "max_steps=2",
            "eval_freq=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, mode in (("0", "coord-median"), ("1", "mean")):
        steps, evals = read_metrics(folder / job)
        assert len(steps) == 2 and len(evals) == 1
        assert f"mode={mode}" in (folder / job / ".hydra" / "overrides.yaml").read_text()
        assert json.loads((folder / job / "run.json").read_text())["engine"] == "simulate"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_simulate_trains_on_cuda(tmp_path):
    result = simulate(["device=cuda", "max_steps=5", "eval_freq=0"], tmp_path)
    assert 0 <= result["top1"] <= 1


def test_device_cuda_with_the_torchrun_engine_is_refused_in_one_line(tmp_path):
    from byzshield.config import ConfigError, build_run
    from byzshield.config.overrides import compose_config

    with pytest.raises(ConfigError, match="device=cuda needs engine=simulate"):
        build_run(compose_config(["device=cuda", "engine=torchrun"]))


@pytest.mark.parametrize("attack", ["rev_grad", "alie"])
@pytest.mark.parametrize("lie", ["none", "honest_digest", "honest_tensor"])
def test_the_digest_vote_gives_the_same_bits_in_both_engines_and_as_the_full_vote(
    tmp_path, attack, lie
):
    """vote=digest over gloo (headers with digests, then pulls; ranks as threads) against
    the simulate engine, with consistent Byzantine workers and with liars of both kinds."""
    from threaded import run_threaded

    _, *overrides = DESIGNS["rama_two"]
    ovs = [*overrides, *COMMON, "vote=digest", f"attack={attack}", f"adversary.digest_lie={lie}"]
    job = tmp_path / "torchrun"
    result, errors = run_threaded(ovs, job)
    assert not errors and isinstance(result, dict), (result, errors)
    simulate(ovs, tmp_path / "simulate")
    assert_same_run(job, tmp_path / "simulate")
    if lie != "honest_digest":  # there digest=first is stricter than the full vote
        full = [o for o in ovs if o != "vote=digest"] + ["vote=full"]
        simulate(full, tmp_path / "full")
        pa, pb = _params(job), _params(tmp_path / "full")
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
        full_steps, _ = read_metrics(tmp_path / "full")
        steps, _ = read_metrics(job)
        for a, b in zip(full_steps, steps, strict=True):  # r = 3
            assert a["bytes_received"] >= 2.5 * b["bytes_received"]


@pytest.mark.slow
def test_a_worker_whose_pulled_copy_does_not_match_its_digest_is_caught(tmp_path):
    """A real lying process: worker 1 sends the true digests, then negated gradients
    when pulled. Each of its copies is rejected, the next holder pulled: the run ends
    with the bits of a run without the liar, and digest_liars names worker 1 only."""
    nproc, *overrides = DESIGNS["rama_two"]
    ovs = (*overrides, *COMMON, "attack=none", "adversary.q=0", "vote=digest")
    cmd = torchrun_cmd(nproc, f"train_dir={tmp_path / 'liar'}", *ovs)
    script = str(Path(__file__).with_name("faulty_train.py"))
    cmd[cmd.index("-m", cmd.index("--nproc-per-node")) : cmd.index("byzshield.train") + 1] = [
        script
    ]
    faulty = {"FAULTY_RANK": "2", "FAULTY_MESSAGE": "pulled"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**run_env(), **faulty}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    simulate(ovs, tmp_path / "honest")
    pa, pb = _params(tmp_path / "liar"), _params(tmp_path / "honest")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    steps, _ = read_metrics(tmp_path / "liar")
    assert all(set(s["digest_liars"]) == {"1"} for s in steps)
    assert all(s["distorted"] == 0 and s["byzantine"] == [] for s in steps)
