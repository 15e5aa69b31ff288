"""File gradients: the one function that turns a model and a file into a gradient.

A torchrun worker calls :func:`file_gradients` for the files it holds; the simulate
engine calls it for every file once. With the same parameters, thread count (one
intra-op thread) and torch build, the same call gives the same bits in any process, so
the two engines agree bit for bit (docs/design.md sections 4 and 8). The label-flip
attack is a change of the data, so it lives here too: :func:`flip_labels`; so does the
backdoor's (``poison``, a :class:`byzshield.compute.poison.Poison`).

    >>> import torch
    >>> from byzshield.compute.datasets import load_dataset
    >>> from byzshield.compute.gradients import file_gradients
    >>> from byzshield.compute.networks import build_network
    >>> data = load_dataset("digits", root="data", download=False, train=True)
    >>> model = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    >>> grads, losses = file_gradients(model, data, (0, 3), seed=0, step=0, batch_size=60,
    ...                                num_files=5)
    >>> grads.shape[0], len(losses)
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byzshield.compute.batched import BatchedGradients
from byzshield.compute.datasets import ImageDataset
from byzshield.compute.params import flat_params
from byzshield.compute.poison import Poison
from byzshield.compute.sampling import Partition, file_batches

__all__ = ["file_gradients", "flip_labels"]


def file_gradients(
    model: nn.Module,
    data: ImageDataset,
    files: Sequence[int],
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    flip: bool = False,
    poison: Poison | None = None,
    out: torch.Tensor | None = None,
    batched: bool = False,
    on_file: Callable[[int], None] | None = None,
    partition: Partition | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """(len(files), d) gradients of the mean cross-entropy over each file, and each loss.

    The model is in training mode; each file is a separate forward/backward pass, so
    BatchNorm sees only that file's samples, exactly as every other replica does. With
    ``batched`` (the network's ``NetworkInfo.batched_files``, on the CPU) the files go
    through one batched pass instead (:class:`byzshield.compute.batched.BatchedGradients`),
    whose result for a file does not depend on the other files of the call; both engines
    make the same choice, so replicas stay bit-identical. With ``flip`` the labels are
    flipped first (:func:`flip_labels`, the ``label_flip`` attack); with ``poison`` each
    file's samples are poisoned first (the ``backdoor`` attack). ``out``, when given,
    is the (len(files), d) float32 CPU buffer the gradients are written to (reusing one
    avoids page faults every step). ``on_file(i)`` is called as soon as row i is final (a
    worker starts hashing it for the digest vote while the next file is computed).
    ``partition`` is how the step's batch is cut into files (the run's
    ``dataset.partition``; None: iid, :mod:`byzshield.compute.sampling`).
    """
    if batched:
        out, losses = _batched(
            model, data, files, seed, step, batch_size, num_files, flip, poison, out, partition
        )
        if on_file is not None:
            for i in range(len(files)):
                on_file(i)
        return out, losses
    model.train()
    params = list(model.parameters())
    d = sum(p.numel() for p in params)
    if out is None:
        out = torch.empty(len(files), d)
    device = params[0].device
    losses = []
    batches = file_batches(
        data,
        seed=seed,
        step=step,
        batch_size=batch_size,
        num_files=num_files,
        files=files,
        partition=partition,
    )  # the step's sample order is drawn once for all the files
    for i, (x, y) in enumerate(batches):
        if flip:
            y = flip_labels(y, data.num_classes)
        if poison is not None:
            x, y = poison(x, y, data)
        if device.type != "cpu":
            x, y = x.to(device), y.to(device)
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if device.type == "cpu":
            torch.cat([p.grad.reshape(-1) for p in params], out=out[i])
        else:
            out[i].copy_(torch.cat([p.grad.reshape(-1) for p in params]))
        losses.append(float(loss.detach()))
        if on_file is not None:
            on_file(i)
    return out, losses


def _batched(model, data, files, seed, step, batch_size, num_files, flip, poison, out, partition):
    """file_gradients(..., batched=True): the files stacked into one batched pass, with
    the kernel built once per model (kept on it)."""
    kernel = model.__dict__.get("_batched_gradients")
    if kernel is None:
        kernel = model.__dict__["_batched_gradients"] = BatchedGradients(model)
    batches = file_batches(
        data,
        seed=seed,
        step=step,
        batch_size=batch_size,
        num_files=num_files,
        files=files,
        partition=partition,
    )
    x = torch.stack([b[0] for b in batches])
    y = torch.stack([b[1] for b in batches])
    if flip:
        y = flip_labels(y, data.num_classes)
    if poison is not None:
        x, y = poison(x, y, data)
    grads, losses = kernel(flat_params(model)[None], x[None], y[None])
    if out is None:
        out = torch.empty(len(files), grads.shape[2])
    out.copy_(grads[0])
    return out, [float(v) for v in losses[0]]


def flip_labels(labels: Tensor, num_classes: int) -> Tensor:
    """y -> num_classes - 1 - y for integer class labels in [0, num_classes): the data a
    worker under the ``label_flip`` attack trains on (Allen-Zhu et al. 2021; ByzFL).

    Raises:
        ValueError: when labels are not integers or lie outside [0, num_classes).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.is_complex():
        raise ValueError(f"labels must be an integer torch.Tensor, got {labels!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return (num_classes - 1) - labels
