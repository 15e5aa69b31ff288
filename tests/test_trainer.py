"""Whole runs in process with the simulate engine: metrics, checkpoints, evaluation."""

import json

import torch
from conftest import read_metrics

from byzshield.adversary import distorted_files
from byzshield.engines.simulate import simulate
from byzshield.evaluate import checkpoints, evaluate_checkpoint
from byzshield.placement import rama_two
from byzshield.trainer import TIME_KEYS

RAMA = ("approach=rama_two", "approach.m=3", "approach.s=3", "batch_size=90")  # K=9, f=9


def test_worst_case_attack_distorts_exactly_the_files_the_set_controls_every_step(tmp_path):
    simulate([*RAMA, "attack=rev_grad", "attack.q=3", "max_steps=4", "eval_freq=0"], tmp_path)
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
    simulate([*RAMA, "attack=alie", "attack.q=3", "max_steps=60", "eval_freq=30"], tmp_path)
    _, evals = read_metrics(tmp_path)
    assert [e["step"] for e in evals] == [30, 60]
    assert evals[-1]["top1"] > 0.6, evals  # chance is 0.1
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
