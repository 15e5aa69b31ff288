"""Evaluation on the server: BatchNorm statistics are recomputed, never taken from a
worker, then the test set is scored."""

from __future__ import annotations

import torch

from byzshield.compute.datasets import load_dataset
from byzshield.compute.networks import build_network
from byzshield.training.evaluation import recompute_batchnorm, score_test_set


def test_evaluation_recomputes_batchnorm_statistics_instead_of_trusting_buffers():
    torch.manual_seed(0)
    train = load_dataset("digits", root="data", download=False, train=True)
    test = load_dataset("digits", root="data", download=False, train=False)
    model = build_network("resnet18", num_classes=10, in_channels=1, image_size=8)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(1e6)  # garbage a worker could have sent
    recompute_batchnorm(model, train, seed=0, batches=2, batch_size=60, num_files=6)
    out = score_test_set(model, test, 200)
    assert abs(float(bn.running_mean.abs().max())) < 1e3
    assert set(out) == {"top1", "top5", "test_loss"} and 0 <= out["top1"] <= 1
