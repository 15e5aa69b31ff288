"""The backdoor: each dataset's trigger, the poisoned share of a file, the worker's gradient
on poisoned samples (the same function path as an honest one), the attack success rate,
and a run that reports it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from byzshield.attacks import make_attack
from byzshield.compute.datasets import load_dataset
from byzshield.compute.gradients import file_gradients
from byzshield.compute.networks import build_network
from byzshield.compute.poison import BUMP, Poison, attack_success, stamp
from byzshield.compute.sampling import eval_batches, file_batch
from byzshield.config import ConfigError, build_run
from byzshield.config.overrides import compose_config
from byzshield.engines.simulate import simulate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", root="data", download=False, train=True)


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d", root="data", download=False, train=False)


def test_image_trigger_is_a_white_corner_square_and_nothing_else(digits):
    x = digits.normalize(digits.images[:5])
    out = stamp(x, digits)
    white = (1.0 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(out[:, :, -2:, -2:], torch.full((5, 1, 2, 2), white))
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[-2:, -2:] = False
    assert torch.equal(out[:, :, untouched], x[:, :, untouched])


def test_signal_trigger_is_the_bump_at_the_end(mnist1d):
    x = mnist1d.normalize(mnist1d.images[:4])
    out = stamp(x, mnist1d)
    assert out[:, 0, -len(BUMP) :].tolist() == [list(BUMP)] * 4
    assert torch.equal(out[..., : -len(BUMP)], x[..., : -len(BUMP)])


@pytest.mark.parametrize(("fraction", "poisoned"), [(0.5, 6), (0.25, 3), (0.1, 2), (1.0, 12)])
def test_the_first_ceil_fraction_samples_of_a_file_are_triggered_and_relabelled(
    digits, fraction, poisoned
):
    x, y = file_batch(digits, seed=1, step=3, batch_size=60, num_files=5, file=2)
    px, py = Poison(target=7, fraction=fraction)(x, y, digits)
    assert poisoned == math.ceil(fraction * 12)
    assert py[:poisoned].tolist() == [7] * poisoned and torch.equal(py[poisoned:], y[poisoned:])
    assert torch.equal(px[:poisoned], stamp(x[:poisoned], digits))
    assert torch.equal(px[poisoned:], x[poisoned:])
    # several files at once (the batched path): each file's own first samples
    xs, ys = torch.stack([x, x]), torch.stack([y, y])
    bx, by = Poison(target=7, fraction=fraction)(xs, ys, digits)
    assert torch.equal(bx[1], px) and torch.equal(by[1], py)


def test_bad_targets_and_fractions_are_refused():
    for kw, message in (
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"target": -1}, "target must be a class index >= 0"),
        ({"target": 1.5}, "target must be a class index >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            make_attack("backdoor", **kw)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.target=10"], "attack.target=10 is not a class of dataset digits (0..9)"),
        (["attack.fraction=0"], "backdoor: fraction must be in (0, 1], got 0"),
        (["attack.fraction=2"], "backdoor: fraction must be in (0, 1], got 2"),
    ],
)
def test_bad_backdoor_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_run(compose_config(["attack=backdoor", "adversary.q=3", *overrides]))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_byzantine_file_gradient_is_the_gradient_on_the_poisoned_samples(digits):
    """file_gradients(poison=...) against the gradient written out here."""
    torch.manual_seed(0)
    model = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    poison = make_attack("backdoor", target=3, fraction=0.5).poison
    grads, losses = file_gradients(
        model, digits, [1, 4], seed=2, step=5, batch_size=60, num_files=5, poison=poison
    )
    for row, j in enumerate([1, 4]):
        x, y = file_batch(digits, seed=2, step=5, batch_size=60, num_files=5, file=j)
        x[:6] = stamp(x[:6], digits)
        y[:6] = 3
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.equal(grads[row], expected)
        assert losses[row] == pytest.approx(float(loss.detach()))


def test_attack_success_counts_triggered_samples_of_other_classes_classified_as_target(
    mnist1d,
):
    class Fixed(torch.nn.Module):  # predicts the target exactly when the bump is there
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            bumped = (x[:, 0, -len(BUMP) :] == torch.tensor(BUMP)).all(dim=1)
            keyed = x[:, 0, 0] > 0  # and only on half of them
            out = torch.zeros(len(x), 10)
            out[bumped & keyed, 4] = 1.0
            out[~(bumped & keyed), 0] = 1.0
            return out

    expected_hits = expected_total = 0
    for x, y in eval_batches(mnist1d, 1000):
        other = y != 4
        expected_total += int(other.sum())
        expected_hits += int((other & (x[:, 0, 0] > 0)).sum())
    asr = attack_success(Fixed(), mnist1d, target=4, batch_size=128)
    assert asr == pytest.approx(expected_hits / expected_total)


def test_a_backdoor_run_reports_its_attack_success_rate_at_every_evaluation(tmp_path):
    simulate(["attack=backdoor", "adversary.q=3", "max_steps=4", "eval_freq=2"], tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(0.0 <= e["backdoor_asr"] <= 1.0 for e in evals)
    steps = [r for r in records if "event" not in r]
    assert all(s["distorted"] > 0 for s in steps)  # the poisoned copies win their files
