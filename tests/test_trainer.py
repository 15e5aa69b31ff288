"""Whole runs in process with the simulate engine: metrics, checkpoints, evaluation."""

import json

import pytest
import torch
from conftest import read_metrics

from byzshield.config import ConfigError
from byzshield.design.bounds import distorted_files
from byzshield.design.placements import rama_two
from byzshield.engines.simulate import simulate
from byzshield.evaluate import checkpoints, evaluate_checkpoint
from byzshield.server.metrics import TIME_KEYS

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


def test_worst_case_attack_distorts_exactly_the_files_the_set_controls_every_step(tmp_path):
    simulate([*RAMA, "attack=rev_grad", "adversary.q=3", "max_steps=4", "eval_freq=0"], tmp_path)
    steps, evals = read_metrics(tmp_path)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["selection"]["c_max"] == 3 and info["selection"]["certified"]
    assert len(steps) == 4 and len(evals) == 1
    for row in steps:
        assert row["distorted"] == 3
        assert row["distorted_files"] == distorted_files(rama_two(3, 3), row["byzantine"])
        assert row["all_strict"] and row["bytes_received"] > 0


def test_time_split_columns_add_up_to_the_step_time(tmp_path):
    simulate([*RAMA, "attack=alie", "attack.z=1.0", "max_steps=5", "eval_freq=0"], tmp_path)
    steps, _ = read_metrics(tmp_path)
    for row in steps:
        parts = sum(row[k] for k in TIME_KEYS)
        assert all(row[k] >= 0 for k in TIME_KEYS)
        assert abs(row["step_s"] - parts - row["other_s"]) < 1e-6
        assert row["other_s"] <= 0.2 * row["step_s"] + 0.002, row  # little is unaccounted
        assert row["attack_s"] > 0  # the ALIE simulation has its own column


def test_short_training_under_attack_beats_chance_by_far_and_the_evaluator_agrees(tmp_path):
    simulate([*RAMA, "attack=alie", "adversary.q=3", "max_steps=60", "eval_freq=30"], tmp_path)
    _, evals = read_metrics(tmp_path)
    assert [e["step"] for e in evals] == [30, 60]
    assert evals[-1]["top1"] > 0.4, evals  # chance is 0.1
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000030.pt", "step_000060.pt"]
    again = [evaluate_checkpoint(p) for p in checkpoints(tmp_path)]
    assert [(e["step"], e["top1"]) for e in again] == [(e["step"], e["top1"]) for e in evals]


def test_checkpoints_load_with_weights_only(tmp_path):
    simulate([*RAMA, "mode=centered-clipping", "max_steps=2", "eval_freq=0"], tmp_path)
    state = torch.load(next((tmp_path / "checkpoints").glob("*.pt")), weights_only=True)
    assert state["step"] == 2 and "rule.center" in state["aggregator"]


def test_simulate_threads_do_not_change_the_bits(tmp_path):
    a, b = tmp_path / "one", tmp_path / "three"
    simulate([*RAMA, "attack=label_flip", "threads=1", "max_steps=3", "eval_freq=0"], a)
    simulate([*RAMA, "attack=label_flip", "threads=3", "max_steps=3", "eval_freq=0"], b)
    pa = torch.load(a / "checkpoints" / "step_000003.pt", weights_only=True)["model"]
    pb = torch.load(b / "checkpoints" / "step_000003.pt", weights_only=True)["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize(
    "design",
    [
        (
            "approach=draco_lite",
            "approach.K=6",
            "approach.r=2",
            "mode=mean",
            "adversary.q=3",
            "adversary.selection=worst_case",
        ),  # fmt: skip
        ("approach=mols", "approach.l=3", "approach.r=2", "batch_size=90", "mode=mean"),
        ("approach=mols", "approach.l=4", "approach.r=3", "batch_size=96", "adversary.q=4"),
        ("approach=rama_two", "approach.m=4", "approach.s=2", "batch_size=96", "mode=mean"),
    ],
)
def test_realised_distortion_equals_c_max_for_odd_and_even_r(tmp_path, design):
    """The adversary's model and the vote are one definition: ties are dropped, so a file
    is distorted exactly when Byzantine copies hold a strict majority of its copies."""
    simulate([*design, "max_steps=3", "eval_freq=0"], tmp_path)
    steps, _ = read_metrics(tmp_path)
    c_max = json.loads((tmp_path / "run.json").read_text())["selection"]["c_max"]
    assert c_max > 0
    assert [s["distorted"] for s in steps] == [c_max] * 3


def test_a_saturated_worst_case_still_has_q_byzantine_workers(tmp_path):
    simulate(["adversary.q=15", "mode=mean", "max_steps=1", "eval_freq=0"], tmp_path)
    steps, _ = read_metrics(tmp_path)
    assert len(steps[0]["byzantine"]) == 15 and steps[0]["distorted"] == 25


def test_outside_guarantee_runs_a_broken_defence_and_marks_every_step(tmp_path):
    ovs = ["approach=draco_lite", "adversary.q=6", "max_steps=2", "eval_freq=0"]
    with pytest.raises(ConfigError, match="outside_guarantee=true runs it anyway"):
        simulate(ovs, tmp_path / "refused")
    simulate([*ovs, "outside_guarantee=true"], tmp_path / "ran")
    steps, _ = read_metrics(tmp_path / "ran")
    assert all(s["outside_guarantee"] for s in steps)
    assert json.loads((tmp_path / "ran" / "run.json").read_text())["outside_guarantee"]


def test_evaluate_prints_the_default_checkpoint_path_whole(tmp_path, monkeypatch, capsys):
    from byzshield.evaluate import main

    monkeypatch.chdir(tmp_path)
    folder = "runs/2026-12-07_14-28-00"  # the default train_dir: 51 characters with the file
    simulate([*RAMA, "max_steps=1", "eval_freq=0"], tmp_path / folder)
    capsys.readouterr()
    assert main([folder]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert row.split()[0] == f"{folder}/checkpoints/step_000001.pt"
    assert header.index("step") + len("step") == row.index(" 1 ") + 2  # columns aligned
