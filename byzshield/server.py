"""The parameter server: broadcast, gather, vote, aggregate, update (BYZSHIELD.md §4).

One step on rank 0:

1. send every worker the control vector ``[step, stop, is_byzantine[0..K-1]]`` and the
   flat parameters;
2. receive every worker's ``load`` file gradients (see :mod:`byzshield.worker`);
3. simulate the omniscient attacks (ALIE, IPM) — the one place where Byzantine copies
   are computed from honest gradients (:func:`simulate_omniscient_attack`);
4. majority-vote the r copies of each file (:func:`vote_and_aggregate`);
5. aggregate the f vote winners with the robust rule, assuming f = c_max(q) of the
   placement unless ``aggregator_f`` overrides it;
6. SGD with momentum, lr = lr0 * gamma^(step // lr_step).

Evaluation recomputes BatchNorm statistics on the server (forward passes in training
mode over ``bn_batches`` training batches) instead of trusting one worker's buffers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from byzshield.adversary import random_selection
from byzshield.aggregators import aggregate
from byzshield.comm import Comm
from byzshield.data import ImageDataset, eval_batches, step_batch
from byzshield.placement import Placement
from byzshield.vote import vote_rows
from byzshield.worker import CONTROL_FIELDS, attack_generator, flat_params

__all__ = [
    "ParameterServer",
    "StepResult",
    "byzantine_workers",
    "evaluate",
    "simulate_omniscient_attack",
    "vote_and_aggregate",
]

log = logging.getLogger("byzshield.server")


def byzantine_workers(spec, step: int) -> tuple[int, ...]:
    """The Byzantine workers (0-based) at ``step``, by ``attack.selection``."""
    if spec.q == 0:
        return ()
    sel = spec.selection
    if sel == "worst_case":
        return tuple(spec.worst_case.byzantine)
    if sel == "random":
        return tuple(
            random_selection(spec.placement.num_workers, spec.q, seed=spec.train.seed, step=step)
        )
    if sel == "random_fixed":
        return tuple(random_selection(spec.placement.num_workers, spec.q, seed=spec.train.seed))
    return tuple(sel)


def simulate_omniscient_attack(
    grads: torch.Tensor,
    placement: Placement,
    byzantine: tuple[int, ...],
    attack,
    *,
    seed: int,
    step: int,
) -> torch.Tensor | None:
    """In place: Byzantine copies of ``grads`` (K, l, d) become the omniscient attack.

    The adversary sees the true gradient of every file (all copies are still honest
    here), so ``honest`` is the (f, d) stack of file gradients; each Byzantine copy of
    file j becomes ``attack(g_j, honest=..., generator=(seed, step, j))``. All Byzantine
    copies of a file are equal, so where they hold r' copies they win the vote.

    Returns the honest (f, d) stack (the server counts distorted files against it), or
    None when there is nothing to simulate.
    """
    if not byzantine or not attack.needs_honest:
        return None
    K, l, d = grads.shape
    honest = grads.reshape(K * l, d).index_select(0, _CopyIndex(placement).index[:, 0])
    for w in byzantine:
        for i, j in enumerate(placement.worker_files[w]):
            grads[w, i] = attack(
                honest[j], honest=honest, generator=attack_generator(seed, step, j)
            )
    return honest


@dataclass
class StepResult:
    """What the vote and the aggregator did in one step."""

    value: torch.Tensor  # (d,) aggregate
    distorted: list[int]  # files whose vote a Byzantine copy won with a wrong value
    non_strict: int  # files with no strict majority
    nonfinite: list[int]  # vote winners with NaN/Inf, dropped by the aggregator
    vote_s: float
    aggregate_s: float


class _CopyIndex:
    """(f, r) flat indices into the (K * l, d) view of the received gradients."""

    def __init__(self, placement: Placement):
        pos = {(w, j): i for w, fs in enumerate(placement.worker_files) for i, j in enumerate(fs)}
        self.holders = [list(ws) for ws in placement.file_workers]
        self.index = torch.tensor(
            [[w * placement.load + pos[(w, j)] for w in ws] for j, ws in enumerate(self.holders)],
            dtype=torch.long,
        )


def vote_and_aggregate(
    grads: torch.Tensor,
    placement: Placement,
    byzantine: tuple[int, ...],
    *,
    aggregator: str,
    f: int,
    params: dict,
    copy_index: _CopyIndex | None = None,
    truth: torch.Tensor | None = None,
) -> StepResult:
    """Vote per file over the (K, l, d) received gradients, then aggregate the winners.

    ``truth`` (f, d), when given, is each file's honest gradient, used only to count
    distorted files; without it a file counts as distorted when a Byzantine copy won and
    differs from an honest copy of the file (or no honest copy exists).
    """
    ci = copy_index or _CopyIndex(placement)
    K, l, d = grads.shape
    t0 = time.perf_counter()
    rows = grads.reshape(K * l, d)
    if placement.replication > 1:
        vb = vote_rows(rows, ci.index)  # compares copies in place; copies out f winners
        winners, indices = vb.winners, vb.indices.tolist()
        non_strict = int((~vb.strict).sum())
    else:
        winners = rows.index_select(0, ci.index[:, 0])
        indices, non_strict = [0] * placement.num_files, 0
    bad = set(byzantine)
    distorted = []
    if bad:
        for j, i in enumerate(indices):
            holders = ci.holders[j]
            if holders[i] not in bad:
                continue
            if truth is not None:
                ref = truth[j]
            else:
                honest = [k for k, w in enumerate(holders) if w not in bad]
                ref = rows[ci.index[j, honest[0]]] if honest else None
            if ref is None or not torch.equal(winners[j], ref):
                distorted.append(j)
    t1 = time.perf_counter()
    res = aggregate(aggregator, winners, f=f, **params)
    t2 = time.perf_counter()
    return StepResult(res.value, distorted, non_strict, list(res.nonfinite_rows), t1 - t0, t2 - t1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    *,
    seed: int,
    bn_batches: int,
    batch_size: int,
    eval_batch_size: int,
    num_files: int,
) -> dict:
    """Top-1/top-5 accuracy and loss on ``test``, with BatchNorm statistics recomputed.

    BatchNorm running statistics never travel from workers; they are re-estimated here
    as the cumulative average over ``bn_batches`` training batches in training mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        model.train()
        for b in range(bn_batches):
            x, _ = step_batch(
                train, seed=seed + 1, step=b, batch_size=batch_size, num_files=num_files
            )
            model(x)
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
    model.eval()
    n = correct1 = correct5 = 0
    loss = 0.0
    for x, y in eval_batches(test, eval_batch_size):
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    return {"top1": correct1 / n, "top5": correct5 / n, "test_loss": loss / n}


class _Metrics:
    """metrics.jsonl (one JSON object per line), plus TensorBoard when installed."""

    def __init__(self, folder: Path):
        self.file = open(folder / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class ParameterServer:
    """Rank 0's state: model, optimizer, schedule, metrics and checkpoints."""

    def __init__(
        self,
        comm: Comm,
        spec,
        model: nn.Module,
        train: ImageDataset,
        test: ImageDataset,
        attack,
        folder: Path,
    ):
        self.comm, self.spec, self.model = comm, spec, model
        self.train_data, self.test_data, self.attack = train, test, attack
        self.folder = folder
        cfg = spec.train
        self.optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.lr_step, gamma=cfg.gamma
        )
        self.copy_index = _CopyIndex(spec.placement)
        self.prev_aggregate: torch.Tensor | None = None
        self.metrics = _Metrics(folder)
        self.last_eval: dict = {}
        self._buffers: torch.Tensor | None = None

    # -- one step ---------------------------------------------------------------------
    def step(self, step: int) -> dict:
        spec, p = self.spec, self.spec.placement
        K, l = p.num_workers, p.load
        byz = byzantine_workers(spec, step)
        control = torch.zeros(CONTROL_FIELDS + K, dtype=torch.int64)
        control[0] = step
        for w in byz:
            control[CONTROL_FIELDS + w] = 1
        params = flat_params(self.model)
        d = params.numel()
        t0 = time.perf_counter()
        self.comm.send_to_workers(control)
        self.comm.send_to_workers(params)
        if self._buffers is None or self._buffers.shape != (K, l * d + 2):
            self._buffers = torch.empty(K, l * d + 2)  # reused: no page faults per step
        buffers = self._buffers
        self.comm.receive_from_workers(buffers)
        t1 = time.perf_counter()
        grads = buffers[:, :-2].view(K, l, d)
        compute_s = float(buffers[:, -2].max())
        bad = set(byz)
        honest_losses = [float(buffers[w, -1]) for w in range(K) if w not in bad]
        truth = simulate_omniscient_attack(
            grads, p, byz, self.attack, seed=spec.train.seed, step=step
        )
        params_agg = dict(spec.aggregator_params)
        if spec.aggregator == "centered-clipping" and self.prev_aggregate is not None:
            params_agg["center"] = self.prev_aggregate
        res = vote_and_aggregate(
            grads,
            p,
            byz,
            aggregator=spec.aggregator,
            f=spec.aggregator_f,
            params=params_agg,
            copy_index=self.copy_index,
            truth=truth,
        )
        self.prev_aggregate = res.value
        t2 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=False)
        offset = 0
        for prm in self.model.parameters():
            n = prm.numel()
            prm.grad = res.value[offset : offset + n].view_as(prm).clone()
            offset += n
        self.optimizer.step()
        self.scheduler.step()
        t3 = time.perf_counter()
        wait = t1 - t0
        return {
            "step": step,
            "loss": sum(honest_losses) / len(honest_losses) if honest_losses else math.nan,
            "lr": lr,
            "byzantine": list(byz),
            "distorted": len(res.distorted),
            "distorted_files": res.distorted,
            "all_strict": res.non_strict == 0,
            "non_strict_files": res.non_strict,
            "nonfinite_winners": len(res.nonfinite),
            "compute_s": compute_s,
            "communication_s": max(0.0, wait - compute_s),
            "vote_s": res.vote_s,
            "aggregation_s": res.aggregate_s,
            "update_s": t3 - t2,
            "step_s": t3 - t0,
            "bytes_received": int(buffers.numel() * buffers.element_size()),
        }

    # -- evaluation and checkpoints ---------------------------------------------------
    def evaluate(self, step: int) -> dict:
        cfg = self.spec.train
        result = evaluate(
            self.model,
            self.train_data,
            self.test_data,
            seed=cfg.seed,
            bn_batches=cfg.bn_batches,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            num_files=self.spec.placement.num_files,
        )
        self.last_eval = result
        self.metrics.write({"step": step, "event": "eval", **result})
        if cfg.checkpoint:
            self.save_checkpoint(step)
        return result

    def save_checkpoint(self, step: int) -> Path:
        """checkpoints/step_NNNNNN.pt, written atomically (temporary file + os.replace)."""
        folder = self.folder / "checkpoints"
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{step:06d}.pt"
        tmp = folder / f".step_{step:06d}.pt.tmp"
        torch.save(
            {
                "step": step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "network": self.spec.network,
                "dataset": self.spec.dataset,
                "dataset_root": self.spec.dataset_root,
                "num_classes": self.spec.num_classes,
                "eval": self.last_eval,
            },
            tmp,
        )
        os.replace(tmp, path)
        return path

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> dict:
        spec = self.spec
        cfg = spec.train
        total = spec.max_steps
        tty = sys.stdout.isatty()
        bar = None
        if tty:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="training", unit="step", dynamic_ncols=True)
        try:
            for step in range(total):
                record = self.step(step)
                self.metrics.write(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", distorted=record["distorted"])
                elif step % cfg.log_every == 0 or step == total - 1:
                    print(
                        f"step {step + 1}/{total} loss {record['loss']:.4f} "
                        f"lr {record['lr']:.4g} distorted {record['distorted']} "
                        f"({record['step_s'] * 1000:.0f} ms/step)",
                        flush=True,
                    )
                done = step + 1
                if cfg.eval_freq and done % cfg.eval_freq == 0 and done < total:
                    ev = self.evaluate(done)
                    msg = (
                        f"step {done}: test top-1 {ev['top1']:.4f} top-5 {ev['top5']:.4f} "
                        f"loss {ev['test_loss']:.4f}"
                    )
                    (bar.write if bar is not None else print)(msg)
            final = self.evaluate(total)
        finally:
            if bar is not None:
                bar.close()
            self.stop(total)
            self.metrics.close()
        return final

    def stop(self, step: int) -> None:
        """Tell the workers to return (best effort: a dead worker must not hang us)."""
        K = self.spec.placement.num_workers
        control = torch.zeros(CONTROL_FIELDS + K, dtype=torch.int64)
        control[0], control[1] = step, 1
        with contextlib.suppress(Exception):  # already stopping: a dead worker must not hang us
            self.comm.send_to_workers(control)
