"""Evaluation on the server: BatchNorm statistics recomputed from training batches
(they never travel from workers), then top-1/top-5 accuracy and loss on the test set,
and under ``attack=backdoor`` the attack success rate ``backdoor_asr`` on the triggered
test set (one more pass over it).

    >>> from byzshield.training.evaluation import evaluate_model
    >>> evaluate_model(model, run)  # doctest: +SKIP
    {'top1': 0.98, 'top5': 1.0, 'test_loss': 0.06}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from byzshield.attacks import data_poison
from byzshield.compute.datasets import ImageDataset
from byzshield.compute.poison import attack_success
from byzshield.compute.sampling import eval_batches, step_batch
from byzshield.config import Run

__all__ = ["evaluate_model", "recompute_batchnorm", "score_test_set"]


@torch.no_grad()
def score_test_set(model: nn.Module, test: ImageDataset, batch_size: int) -> dict:
    """Top-1/top-5 accuracy and mean cross-entropy of ``model`` (eval mode) on ``test``."""
    model.eval()
    device = next(model.parameters()).device
    n = correct1 = correct5 = 0
    loss = 0.0
    for x, y in eval_batches(test, batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    return {"top1": correct1 / n, "top5": correct5 / n, "test_loss": loss / n}


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    train: ImageDataset,
    *,
    seed: int,
    batches: int,
    batch_size: int,
    num_files: int,
) -> None:
    """Re-estimate BatchNorm running statistics as the cumulative average over
    ``batches`` training batches in training mode; they never travel from workers."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    device = next(model.parameters()).device
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for b in range(batches):
        x, _ = step_batch(train, seed=seed + 1, step=b, batch_size=batch_size, num_files=num_files)
        model(x.to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom


def evaluate_model(model: nn.Module, run: Run) -> dict:
    """BatchNorm statistics recomputed, then :func:`score_test_set` on the run's test set;
    with a backdoor attack also ``backdoor_asr``
    (:func:`byzshield.compute.poison.attack_success`: the share of triggered test samples
    of the other classes classified as the target)."""
    cfg = run.config
    recompute_batchnorm(
        model,
        run.train_data,
        seed=cfg.seed,
        batches=cfg.bn_batches,
        batch_size=cfg.batch_size,
        num_files=run.placement.num_files,
    )
    result = score_test_set(model, run.test_data, cfg.eval_batch_size)
    poison = data_poison(run.attack)
    if poison is not None:
        result["backdoor_asr"] = attack_success(
            model, run.test_data, poison.target, cfg.eval_batch_size
        )
    return result
