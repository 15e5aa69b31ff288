"""The parameter server's training loop, whichever engine gathers the copies: the step,
apply (optimizer and schedule), the checkpoints, and evaluation at ``eval_freq``.

One step, whichever engine gathers the copies::

    plan = detector.plan(step, selection.workers(step))  # who lies, roles, who is excluded
    copies, times = engine.gather(step, params, plan)    # torchrun or simulate
    outcome = update(copies, liars, step, excluded)      # server.update: attack, vote, rule
    detector.observe(plan, outcome.disagreements)        # detect: the certificate
    apply(outcome.gradient)                              # SGD with momentum, step LR

The update is :func:`byzshield.server.update.build_update`'s, built once. The per-step
record in ``metrics.jsonl`` (:func:`byzshield.server.metrics.step_record`) has the same
keys for every engine; its time split (compute, communication, attack simulation, vote,
aggregation, update) adds up to ``step_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from byzshield.compute.params import flat_params
from byzshield.config import Run
from byzshield.server.copies import Copies
from byzshield.server.erasures import drop_line, erase, stragglers, unvoteable
from byzshield.server.evidence import StepPlan
from byzshield.server.metrics import step_record
from byzshield.server.sharded import Peers
from byzshield.server.update import build_update
from byzshield.training.evaluation import evaluate_model
from byzshield.training.records import (
    MetricsLog,
    Progress,
    complete_line,
    final_line,
    say,
)
from byzshield.training.runfolder import PROGRESS, Resume, save_checkpoint
from byzshield.training.sgd import build_optimizer

__all__ = ["Engine", "Trainer", "TrainingError"]


class Engine(Protocol):
    """How the copies of a step's files reach the parameter server.

    ``dropped``: the workers dropped for the rest of the run, each with why (the torchrun
    engine drops a worker whose message is malformed, that fails or that is late; the
    simulate engine drops none), in the order they were dropped. ``peers``: the channels
    between the servers of a sharded parameter server when they are processes (the
    torchrun engine's, :mod:`byzshield.server.sharded`); None when there is one server,
    or its servers are threads of this process. ``gather`` is told the step's
    :class:`~byzshield.server.evidence.StepPlan`: who lies, and where (each worker's
    role; the copies are indexed by roles, the placement's worker ids).
    """

    name: str
    dropped: dict[int, str]
    peers: Peers | None

    def gather(self, step: int, params: torch.Tensor, plan: StepPlan) -> tuple[Copies, dict]:
        """The step's copies and the times ``compute_s`` and ``communication_s``."""
        ...

    def close(self, step: int) -> None: ...


# --------------------------------------------------------------------------------------
# The loop


class TrainingError(RuntimeError):
    """Training cannot go on (the model became non-finite); the message is one line."""


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
        self.optimizer, self.scheduler = build_optimizer(
            self.model, lr=cfg.lr, momentum=cfg.momentum, step_size=cfg.lr_step, gamma=cfg.gamma
        )
        peers = None if engine is None else engine.peers
        self.update = build_update(run.update_spec(), run.num_params, peers=peers)
        self.detector = run.detector()
        self.lines: list[str] = []  # the detector's, to say after the step
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
            self.detector.load_state_dict(state.get("detection"))
            self.start, self.last_checkpoint = int(state["step"]), resume.path
            self.last_eval = dict(state.get("eval") or {})

    def stragglers(self, step: int) -> tuple[int, ...]:
        cfg = self.run.config
        return stragglers(self.run.placement, cfg.stragglers, seed=cfg.seed, step=step)

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

    def plan(self, step: int) -> StepPlan:
        """The step's plan: the selection's Byzantine workers, who of them lies, each
        worker's role, who is excluded (:class:`byzshield.server.evidence.Detector`)."""
        return self.detector.plan(step, self.run.selection.workers(step))

    def decide(self, copies: Copies, plan: StepPlan, missing: tuple[int, ...]):
        """The robust update of the step's ``copies`` (indexed by roles) with the workers
        ``missing`` (stragglers) erased and those excluded left out (the rule's f then
        follows ``Run.f_after``), then its evidence to the detector."""
        erase(copies, self.run.placement, plan.as_roles(missing))
        excluded = plan.as_roles(plan.excluded)
        outcome = self.update(copies, plan.as_roles(plan.liars), plan.step, excluded)
        self.lines += self.detector.observe(plan, outcome.disagreements)
        return outcome

    def step(self, step: int) -> dict:
        """Gather, robust update, apply; the step's metrics record."""
        plan = self.plan(step)
        t0 = time.perf_counter()
        params = flat_params(self.model)  # what is broadcast: counted as communication
        packed = time.perf_counter() - t0
        copies, times = self.engine.gather(step, params, plan)
        missing = self.stragglers(step)
        outcome = self.decide(copies, plan, missing)
        self.check_voteable(step)
        t1 = time.perf_counter()
        lr = self.apply(outcome.gradient)
        self.check_finite(step)
        t2 = time.perf_counter()
        times = {**times, "communication_s": times["communication_s"] + packed}
        record = step_record(
            step,
            outcome.metrics,
            lr,
            plan.byzantine,
            missing,
            times,
            t2 - t1,
            t2 - t0,
            dropped=self.engine.dropped,
            label_tv=self.run.label_tv(step),
        )
        return self.detector.annotate(record, plan)

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
            drop_line(run.placement, run.rule, run.rule_f, step, w, why, dropped)
            for w, why in new.items()
        ]

    def evaluate_and_save(self, step: int) -> dict:
        """Evaluate, append the row to metrics.jsonl and write the step's checkpoint."""
        result = evaluate_model(self.model, self.run)
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
        } | ({"detection": self.detector.state_dict()} if self.detector.on else {})

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
        for line in self.detector.describe():
            say(line)
        end = max(total, self.start)  # a checkpoint beyond max_steps: evaluate it as is
        progress = Progress(total, cfg.log_every, initial=min(self.start, total))
        try:
            for step in steps if steps is not None else range(self.start, total):
                PROGRESS.update(step=step, total=total, checkpoint=self.last_checkpoint)
                record = self.step(step)
                self.metrics.write(record)
                for line in [*self.drops_to_tell(step), *self.lines]:  # console, rank0.log
                    progress.say(line)
                self.lines.clear()
                progress.step(step, record)
                done = step + 1
                if cfg.eval_freq and done % cfg.eval_freq == 0 and done < total:
                    ev = self.evaluate_and_save(done)
                    progress.say(
                        f"step {done}: test top-1 {ev['top1']:.4f} top-5 {ev['top5']:.4f} "
                        f"loss {ev['test_loss']:.4f}"
                    )
            final = self.evaluate_and_save(end)
        finally:
            progress.close()
            self.engine.close(step)
            self.update.close()
            self.metrics.close()
        say(final_line(final, end))
        return final
