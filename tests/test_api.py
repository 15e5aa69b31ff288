"""The notebook interface: byzshield.run / runs / load_run / load_sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import byzshield


def test_run_trains_and_load_run_reads_it_back(tmp_path):
    final = byzshield.run(
        ["attack=alie", "adversary.q=2", "max_steps=6", "eval_freq=3"], tmp_path / "a"
    )
    steps, evals = byzshield.load_run(tmp_path / "a")
    assert [s["step"] for s in steps] == list(range(6))
    assert [e["step"] for e in evals] == [3, 6] and evals[-1]["top1"] == final["top1"]
    assert (
        byzshield.run(
            ["attack=alie", "adversary.q=2", "max_steps=6", "eval_freq=3"], tmp_path / "a"
        )
        == final
    )  # resumed: nothing to do


def test_load_run_skips_a_torn_last_line_with_one_warning(tmp_path):
    rows = [{"step": 0, "loss": 2.3}, {"step": 1, "loss": 2.2}, {"step": 2, "event": "eval"}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + '{"step": 2, "loss": 2.')  # kill -9
    with pytest.warns(UserWarning, match=r"metrics.jsonl: skipped 1 unreadable line \(line 4\)"):
        steps, evals = byzshield.load_run(tmp_path)
    assert steps == rows[:2] and evals == rows[2:]


def test_runs_trains_in_lockstep_and_load_sweep_finds_every_run(tmp_path):
    common = ["dataset=mnist1d", "network=cnn1d", "max_steps=4", "eval_freq=2"]
    finals = byzshield.runs(
        [[*common, f"seed={s}"] for s in range(3)], [tmp_path / str(s) for s in range(3)]
    )
    assert len(finals) == 3 and all(0 <= f["top1"] <= 1 for f in finals)
    found = byzshield.load_sweep(tmp_path)
    assert sorted(r.seed for r in found) == [0, 1, 2]
    assert {r.status for r in found} == {"complete"}
    assert found[0].config["engine"] == "lockstep"


def test_bad_input_to_the_interface_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no metrics.jsonl"):
        byzshield.load_run(tmp_path)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        byzshield.run(["lr=-1"], tmp_path / "b")
    with pytest.raises(AttributeError, match="no attribute 'trainn'"):
        byzshield.trainn  # noqa: B018


def test_import_byzshield_does_not_load_torch():
    code = "import sys, byzshield; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
