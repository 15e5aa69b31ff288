"""TensorBoard events (MetricsLog, byzshield/training/loop.py) from a real simulate run, read
back with TensorBoard's own reader (needs the tensorboard package: the `test` extra), and
the run without it."""

from __future__ import annotations

import json
import sys

import pytest

from byzshield.training.events import EventWriter, crc32c
from byzshield.training.records import MetricsLog


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (pip install -e '.[test]' or '.[tensorboard]')",
    )
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_simulate_run_writes_train_and_eval_scalars_matching_metrics_jsonl(tmp_path):
    from byzshield.engines.simulate import simulate

    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    final = simulate(["max_steps=3", "eval_freq=0", "checkpoint=false"], tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _scalars(tmp_path / "tensorboard")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("event") != "eval"]

    loss = scalars["train/loss"]
    assert [s for s, _ in loss] == [0, 1, 2]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [v for _, v in scalars["train/distorted"]] == [r["distorted"] for r in steps]
    for key in ("lr", "step_s", "compute_s", "vote_s", "aggregation_s", "bytes_received"):
        assert len(scalars[f"train/{key}"]) == 3, key

    (top1,) = scalars["eval/top1"]
    assert top1[0] == 3  # the final evaluation, at max_steps
    assert top1[1] == pytest.approx(final["top1"], rel=1e-6)
    assert scalars["eval/test_loss"][0][1] == pytest.approx(final["test_loss"], rel=1e-6)
    # lists, strings and flags stay in metrics.jsonl only
    assert not any(t.endswith(("/byzantine", "/distorted_files", "/event")) for t in scalars)


def test_without_tensorboard_only_metrics_jsonl_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed: find_spec is None
    log = MetricsLog(tmp_path)
    assert log.tb is None
    log.write({"step": 0, "loss": float("nan"), "distorted": 1})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 0,
        "loss": None,
        "distorted": 1,
    }
    assert not (tmp_path / "tensorboard").exists()


def test_crc32c_matches_the_published_check_values():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720, B.4
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros
    assert crc32c(bytes([0xFF] * 32)) == 0x62A8AB43


def test_event_writer_files_read_back_as_tensorboard_scalars(tmp_path):
    writer = EventWriter(tmp_path / "tb")
    writer.add_scalars(0, {"train/loss": 2.5, "train/big": 1e39, "train/n": 7})
    writer.add_scalars(2**40, {"train/loss": -0.125})
    writer.close()
    second = EventWriter(tmp_path / "tb2")  # a second file of the process: its own name
    second.close()
    assert writer.path.name != second.path.name
    scalars = _scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(0, 2.5), (2**40, -0.125)]
    assert scalars["train/big"] == [(0, float("inf"))]  # beyond float32: inf, as torch's
    assert scalars["train/n"] == [(0, 7.0)]
