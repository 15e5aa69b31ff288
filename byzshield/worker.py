"""One worker: receive the model, compute one gradient per held file, (maybe) lie, send.

A worker's message to the server is one flat float32 tensor of ``load * d + 2`` values:
its ``load`` file gradients (in the order of ``placement.worker_files[w]``), then its
compute time in seconds and its mean training loss over the files.

Byzantine workers corrupt what they send here, with attacks that need nothing but their
own gradient (rev_grad, constant, sign_flip, gaussian; label_flip changes the labels
before the gradient). Attacks that need the honest gradients of others (ALIE, IPM) are
omniscient: the worker sends its honest gradients and the server simulates the attack
(:func:`byzshield.server.simulate_omniscient_attack`).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from byzshield.attacks import flip_labels
from byzshield.comm import Comm
from byzshield.data import ImageDataset, derive_seed, file_batch

__all__ = ["CONTROL_FIELDS", "attack_generator", "file_gradients", "flat_params", "run_worker"]

CONTROL_FIELDS = 2  # control vector: [step, stop, is_byzantine[worker 0..K-1]]
log = logging.getLogger("byzshield.worker")


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one float32 vector (d,)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy a (d,) vector into the model's parameters (inverse of :func:`flat_params`)."""
    torch.nn.utils.vector_to_parameters(flat, list(model.parameters()))


def attack_generator(seed: int, step: int, file: int) -> torch.Generator:
    """The generator a Byzantine worker's attack draws from for one file.

    Seeded from (seed, step, file) only, so all Byzantine copies of a file agree (they
    collude) and a rerun reproduces them.
    """
    return torch.Generator().manual_seed(derive_seed("attack", seed, step, file))


def file_gradients(
    model: nn.Module,
    data: ImageDataset,
    files: tuple[int, ...],
    *,
    seed: int,
    step: int,
    batch_size: int,
    num_files: int,
    flip: bool = False,
) -> tuple[torch.Tensor, float]:
    """(len(files), d) gradients of the mean cross-entropy over each file, and mean loss.

    The model is in training mode; each file is a separate forward/backward pass, so
    BatchNorm sees only that file's samples, exactly as every other replica does.
    """
    model.train()
    params = list(model.parameters())
    out = torch.empty(len(files), sum(p.numel() for p in params))
    losses = []
    for i, j in enumerate(files):
        x, y = file_batch(
            data, seed=seed, step=step, batch_size=batch_size, num_files=num_files, file=j
        )
        if flip:
            y = flip_labels(y, data.num_classes)
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.cat([p.grad.reshape(-1) for p in params], out=out[i])
        losses.append(float(loss.detach()))
    return out, sum(losses) / len(losses)


def run_worker(comm: Comm, spec, model: nn.Module, data: ImageDataset, attack) -> None:
    """Serve steps until the server says stop (worker index = rank - 1)."""
    w = comm.rank - 1
    K = spec.placement.num_workers
    files = spec.placement.worker_files[w]
    d = sum(p.numel() for p in model.parameters())
    control = torch.zeros(CONTROL_FIELDS + K, dtype=torch.int64)
    params = torch.empty(d)
    message = torch.empty(len(files) * d + 2)
    cfg = spec.train
    while True:
        comm.receive_from_server(control)
        step, stop = int(control[0]), int(control[1])
        if stop:
            log.info("stop after %d steps", step)
            return
        comm.receive_from_server(params)
        load_flat(model, params)
        byzantine = bool(control[CONTROL_FIELDS + w])
        t0 = time.perf_counter()
        grads, loss = file_gradients(
            model,
            data,
            files,
            seed=cfg.seed,
            step=step,
            batch_size=cfg.batch_size,
            num_files=spec.placement.num_files,
            flip=byzantine and attack.flips_labels,
        )
        if byzantine and not attack.needs_honest:
            for i, j in enumerate(files):
                grads[i] = attack(grads[i], generator=attack_generator(cfg.seed, step, j))
        message[:-2] = grads.reshape(-1)
        message[-2] = time.perf_counter() - t0
        message[-1] = loss
        comm.send_to_server(message)
        if step % 50 == 0:
            log.info(
                "step %d sent %d file gradients%s",
                step,
                len(files),
                " (Byzantine)" if byzantine else "",
            )
