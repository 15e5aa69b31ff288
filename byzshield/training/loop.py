"""What both engines share: the training loop, apply (optimizer and schedule), metrics,
checkpoints, evaluation and the progress display.

One step, whichever engine gathers the copies::

    byzantine = selection.workers(step)                     # design.search.Selection
    copies, times = engine.gather(step, params, byzantine)  # torchrun or simulate
    outcome = update(copies, byzantine, step)              # server.update: attack, vote, rule
    apply(outcome.gradient)                                 # SGD with momentum, step LR

The update is :func:`byzshield.server.update.build_update`'s, built once. The per-step
record in ``metrics.jsonl`` (:func:`byzshield.server.metrics.step_record`) has the same
keys for every engine; its time split (compute, communication, attack simulation, vote,
aggregation, update) adds up to ``step_s``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from byzshield.compute.datasets import ImageDataset
from byzshield.compute.params import flat_params
from byzshield.compute.sampling import eval_batches, step_batch
from byzshield.config import Run
from byzshield.server.copies import Copies
from byzshield.server.erasures import drop_line, erase, erasures, unvoteable
from byzshield.server.metrics import step_record
from byzshield.server.sharded import Peers
from byzshield.server.update import build_update
from byzshield.training.runfolder import (
    PROGRESS,
    Resume,
    RunFileError,
    interrupted_start_line,
    save_checkpoint,
    write_atomic,
)

__all__ = [
    "Engine",
    "MetricsLog",
    "Progress",
    "Trainer",
    "TrainingError",
    "evaluate",
    "final_line",
    "interrupted_line",
    "recompute_batchnorm",
    "say",
    "score_test_set",
]

log = logging.getLogger("byzshield.training.loop")


class Engine(Protocol):
    """How the copies of a step's files reach the parameter server.

    ``dropped``: the workers dropped for the rest of the run, each with why (the torchrun
    engine drops a worker whose message is malformed, that fails or that is late; the
    simulate engine drops none), in the order they were dropped. ``peers``: the channels
    between the servers of a sharded parameter server when they are processes (the
    torchrun engine's, :mod:`byzshield.server.sharded`); None when there is one server,
    or its servers are threads of this process.
    """

    name: str
    dropped: dict[int, str]
    peers: Peers | None

    def gather(
        self, step: int, params: torch.Tensor, byzantine: tuple[int, ...]
    ) -> tuple[Copies, dict]:
        """The step's copies and the times ``compute_s`` and ``communication_s``."""
        ...

    def close(self, step: int) -> None: ...


# --------------------------------------------------------------------------------------
# Evaluation


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


def evaluate(model: nn.Module, run: Run) -> dict:
    """BatchNorm statistics recomputed, then :func:`score_test_set` on the run's test set."""
    cfg = run.config
    recompute_batchnorm(
        model,
        run.train_data,
        seed=cfg.seed,
        batches=cfg.bn_batches,
        batch_size=cfg.batch_size,
        num_files=run.placement.num_files,
    )
    return score_test_set(model, run.test_data, cfg.eval_batch_size)


# --------------------------------------------------------------------------------------
# Metrics, checkpoints, progress


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """metrics.jsonl (one JSON object per line, non-finite numbers as null), plus
    TensorBoard events under tensorboard/ when the tensorboard package is installed and
    ``tensorboard`` is true (the lockstep engine turns them off: a writer per run and a
    scalar per key and step would cost more than the step itself)."""

    def __init__(self, folder: Path, *, tensorboard: bool = True, buffering: int = 1):
        self.file = open(folder / "metrics.jsonl", "a", buffering=buffering)  # noqa: SIM115
        self.folder, self.tb, self._tb_tried = folder, None, not tensorboard

    def _tensorboard(self):
        """The events writer, opened at the first record: a run with nothing left to do
        adds no events file."""
        if not self._tb_tried:
            self._tb_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:
                self.tb = None
        return self.tb

    def write(self, record: dict) -> None:
        """Append ``record``; a full disk raises RunFileError (one line)."""
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        try:
            self.file.write(json.dumps(clean, allow_nan=False) + "\n")
        except OSError as exc:
            raise _unwritable(self.file.name, exc) from None
        if self._tensorboard() is not None:
            prefix = "eval/" if record.get("event") == "eval" else "train/"
            for k, v in clean.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(prefix + k, v, record["step"])

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as exc:
            raise _unwritable(self.file.name, exc) from None
        finally:
            if self.tb is not None:
                self.tb.close()


def _unwritable(path: str, exc: OSError) -> RunFileError:
    return RunFileError.of(Path(path), exc)


def say(message: str) -> None:
    """A line of the run's account: on the console and, once
    :func:`byzshield.cli.launcher.log_to_folder` opened it, in the folder's ``rank0.log``."""
    print(message, flush=True)
    log.info(message)


def final_line(result: dict, steps: int) -> str:
    """The run's last line: its final evaluation and how many steps its model has."""
    return (
        f"test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
        f"loss {result['test_loss']:.4f} after {_steps(steps)}"
    )


def complete_line(steps: int, max_steps: int) -> str:
    """A rerun of a finished run (or one with a lowered ``max_steps``): nothing to do."""
    if steps > max_steps:
        return (
            f"the run is complete: its model has {_steps(steps)}, beyond max_steps="
            f"{max_steps}; nothing to do (a run is never trained backwards; raise max_steps "
            "to train on)"
        )
    return f"the run is complete ({_steps(steps)}); nothing to do"


class Progress:
    """A tqdm bar on a terminal, otherwise one line every ``every`` steps (in the log
    either way)."""

    def __init__(self, total: int, every: int, initial: int = 0):
        self.total, self.every = total, every
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True
            )

    def step(self, step: int, record: dict) -> None:
        line = None
        if step % self.every == 0 or step == self.total - 1:
            line = (
                f"step {step + 1}/{self.total} loss {record['loss']:.4f} lr {record['lr']:.4g} "
                f"distorted {record['distorted']} ({record['step_s'] * 1000:.0f} ms/step)"
            )
            log.info(line)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", distorted=record["distorted"])
        elif line is not None:
            print(line, flush=True)

    def say(self, message: str) -> None:
        (self.bar.write if self.bar is not None else print)(message)
        sys.stdout.flush()
        log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# The loop


class TrainingError(RuntimeError):
    """Training cannot go on (the model became non-finite); the message is one line."""


def interrupted_line() -> str:
    """The line for Ctrl-C: how far training got and how to go on."""
    if "run_steps" in PROGRESS:
        if not PROGRESS["run_steps"]:
            return (
                "interrupted before the first step; nothing new was trained; rerun the "
                "same command to resume every run from its last checkpoint"
            )
        return (
            f"interrupted after {PROGRESS['run_steps']} of {PROGRESS['total']} run-steps; "
            "rerun the same command to resume every run from its last checkpoint"
        )
    if "step" not in PROGRESS:
        return interrupted_start_line()
    kept = PROGRESS.get("checkpoint")
    where = f" from {kept}" if kept else " from the start (no checkpoint was written yet)"
    return (
        f"interrupted at step {PROGRESS['step'] + 1} of {PROGRESS['total']}; rerun the "
        f"same command to resume{where}"
    )


class Trainer:
    """The parameter server's side of a run: model, optimizer, schedule and the loop.

    ``model``: the initial network when the caller built it already (it is trained in
    place); by default the run builds one. With ``resume``
    (:func:`byzshield.training.runfolder.prepare`) it starts after the checkpoint's step,
    with its parameters, optimizer, schedule and rule state.
    """

    def __init__(
        self,
        run: Run,
        engine: Engine,
        folder: Path,
        *,
        device: str = "cpu",
        resume: Resume | None = None,
        tensorboard: bool = True,
        model: nn.Module | None = None,
    ):
        self.run, self.engine, self.folder = run, engine, folder
        cfg = run.config
        self.model = (run.build_model() if model is None else model).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.lr_step, gamma=cfg.gamma
        )
        peers = None if engine is None else engine.peers
        self.update = build_update(run.update_spec(), run.num_params, peers=peers)
        self.metrics = MetricsLog(folder, tensorboard=tensorboard)
        self.checkpoints = folder / "checkpoints"
        self.start = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict = {}
        self.told: set[int] = set()  # dropped workers already reported
        if resume is not None:
            state = resume.state
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.update.load_state_dict(state["aggregator"])
            self.start, self.last_checkpoint = int(state["step"]), resume.path
            self.last_eval = dict(state.get("eval") or {})

    def erasures(self, step: int) -> tuple[int, ...]:
        cfg = self.run.config
        return erasures(self.run.placement, cfg.stragglers, seed=cfg.seed, step=step)

    def apply(self, gradient: torch.Tensor) -> float:
        """One SGD step with ``gradient`` (d,) as every parameter's gradient; returns the lr."""
        lr = self.optimizer.param_groups[0]["lr"]
        offset = 0
        for p in self.model.parameters():
            n = p.numel()
            p.grad = gradient[offset : offset + n].view_as(p).to(p.device, copy=True)
            offset += n
        self.optimizer.step()
        self.scheduler.step()
        return lr

    def check_finite(self, step: int) -> None:
        """Stop, in one line, when an update made the model non-finite."""
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                kept = self.last_checkpoint or "none written yet"
                raise TrainingError(
                    f"step {step}: the model became non-finite ({name} holds NaN or Inf) after "
                    f"the update; stopping. The last good checkpoint is {kept}"
                )

    def step(self, step: int) -> dict:
        """Gather, robust update, apply; the step's metrics record."""
        byzantine = self.run.selection.workers(step)
        t0 = time.perf_counter()
        params = flat_params(self.model)  # what is broadcast: counted as communication
        packed = time.perf_counter() - t0
        copies, times = self.engine.gather(step, params, byzantine)
        missing = self.erasures(step)
        erase(copies, self.run.placement, missing)
        outcome = self.update(copies, byzantine, step)
        self.check_voteable(step)
        t1 = time.perf_counter()
        lr = self.apply(outcome.gradient)
        self.check_finite(step)
        t2 = time.perf_counter()
        times = {**times, "communication_s": times["communication_s"] + packed}
        return step_record(
            step,
            outcome.metrics,
            lr,
            byzantine,
            missing,
            times,
            t2 - t1,
            t2 - t0,
            dropped=self.engine.dropped,
        )

    def check_voteable(self, step: int) -> None:
        """Stop, in one line, when the dropped workers leave no file that can still have
        a strict majority of its holders (no vote could be trusted again)."""
        why = unvoteable(self.run.placement, step, self.engine.dropped)
        if why is not None:
            kept = self.last_checkpoint or "none written yet"
            raise TrainingError(f"{why}. The last good checkpoint is {kept}")

    def drops_to_tell(self, step: int) -> list[str]:
        """One line for each worker dropped since the last call (:func:`drop_line`)."""
        new = {w: why for w, why in self.engine.dropped.items() if w not in self.told}
        self.told.update(new)
        run, dropped = self.run, self.engine.dropped
        return [
            drop_line(run.placement, run.aggregator, run.aggregator_f, step, w, why, dropped)
            for w, why in new.items()
        ]

    def evaluate(self, step: int) -> dict:
        result = evaluate(self.model, self.run)
        self.last_eval = result
        self.metrics.write({"step": step, "event": "eval", **result})
        if self.run.config.checkpoint:
            self.last_checkpoint = save_checkpoint(self.checkpoints, step, self.state(step))
        return result

    def state(self, step: int) -> dict:
        """What a checkpoint holds: tensors and plain values only (weights_only loads)."""
        cfg = self.run.config
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "aggregator": self.update.state_dict(),
            "network": cfg.network.name,
            "dataset": cfg.dataset.name,
            "dataset_root": cfg.dataset.root,
            "num_classes": self.run.train_data.num_classes,
            "eval": self.last_eval,
        }

    def train(self, steps: Iterable[int] | None = None) -> dict:
        """Run every step, evaluating every ``eval_freq`` steps and at the end; prints
        the final line. A model already at or beyond ``max_steps`` is not trained."""
        cfg = self.run.config
        total = self.run.max_steps
        step = self.start
        self.update.start()  # a sharded server's other processes learn the rule's state
        if self.start >= total and self.last_eval:
            say(complete_line(self.start, total))
            self.engine.close(step)
            self.metrics.close()
            say(final_line(self.last_eval, self.start))
            return self.last_eval
        if self.start:
            say(f"resuming after step {self.start} from {self.last_checkpoint}")
        end = max(total, self.start)  # a checkpoint beyond max_steps: evaluate it as is
        progress = Progress(total, cfg.log_every, initial=min(self.start, total))
        try:
            for step in steps if steps is not None else range(self.start, total):
                PROGRESS.update(step=step, total=total, checkpoint=self.last_checkpoint)
                record = self.step(step)
                self.metrics.write(record)
                for line in self.drops_to_tell(step):  # on the console and in rank0.log
                    progress.say(line)
                progress.step(step, record)
                done = step + 1
                if cfg.eval_freq and done % cfg.eval_freq == 0 and done < total:
                    ev = self.evaluate(done)
                    progress.say(
                        f"step {done}: test top-1 {ev['top1']:.4f} top-5 {ev['top5']:.4f} "
                        f"loss {ev['test_loss']:.4f}"
                    )
            final = self.evaluate(end)
        finally:
            progress.close()
            self.engine.close(step)
            self.update.close()
            self.metrics.close()
        say(final_line(final, end))
        return final


def _steps(n: int) -> str:
    return f"{n} step{'' if n == 1 else 's'}"


def _servers(S: int, engine: str) -> str:
    if S == 1:
        return ""
    where = "ranks 0.." + str(S - 1) if engine == "torchrun" else "threads"
    return f", parameter server sharded {S} ways ({where})"


def announce(run: Run, folder: Path, engine: str, *, quiet: bool = False) -> None:
    """Print what the run is about to do (unless ``quiet``) and store it in ``run.json``
    in its folder."""
    cfg = run.config
    info = {**run.info, "engine": engine, "device": cfg.device, "seed": cfg.seed}
    info["ps_shards"] = cfg.ps_shards
    write_atomic(folder / "run.json", json.dumps(info, indent=2) + "\n")
    if quiet:
        return
    for note in run.notes:
        say(note if note.startswith("warning:") else f"note: {note}")
    attack = run.info["attack"]
    z = f" z={attack['z_used']:.4g}" if "z_used" in attack else ""
    say(
        f"{run.placement.describe()}; mode={run.info['mode']} (f={run.aggregator_f}); "
        f"attack={cfg.attack.name}{z} q={run.q}; {cfg.network.name} on {cfg.dataset.name}; "
        f"engine={engine}{_servers(cfg.ps_shards, engine)}; output {folder}"
    )
    say(f"byzantine: {run.selection.describe()}")
