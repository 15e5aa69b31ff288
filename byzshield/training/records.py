"""What a run writes and says as it trains: ``metrics.jsonl`` (and TensorBoard events),
the progress display, and the run's own lines (final, complete, interrupted), each also
in the folder's ``rank0.log``."""

from __future__ import annotations

import json
import logging
import math
import sys
from importlib.util import find_spec
from pathlib import Path

from byzshield.config import Run
from byzshield.training.events import EventWriter
from byzshield.training.runfolder import (
    PROGRESS,
    RunFileError,
    interrupted_start_line,
    write_atomic,
)

__all__ = [
    "MetricsLog",
    "Progress",
    "announce",
    "complete_line",
    "final_line",
    "interrupted_line",
    "say",
    "steps_text",
]

log = logging.getLogger("byzshield.training")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """metrics.jsonl (one JSON object per line, non-finite numbers as null), plus
    TensorBoard events under tensorboard/ (:class:`~byzshield.training.events.EventWriter`,
    one event per record) when the tensorboard package, their reader, is installed and
    ``tensorboard`` is true (the lockstep engine turns them off: a file per run and a
    write per step and run would cost more than the step itself)."""

    def __init__(self, folder: Path, *, tensorboard: bool = True, buffering: int = 1):
        self.file = open(folder / "metrics.jsonl", "a", buffering=buffering)  # noqa: SIM115
        self.folder, self.tb, self._tb_tried = folder, None, not tensorboard

    def _tensorboard(self) -> EventWriter | None:
        """The events file, opened at the first record: a run with nothing left to do
        adds none. Only looked up, not imported: TensorBoard reads the files."""
        if not self._tb_tried:
            self._tb_tried = True
            if find_spec("tensorboard") is not None:
                try:
                    self.tb = EventWriter(self.folder / "tensorboard")
                except OSError as exc:
                    raise _unwritable(str(self.folder / "tensorboard"), exc) from None
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
            scalars = {
                prefix + k: v
                for k, v in clean.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
            }
            try:
                self.tb.add_scalars(record["step"], scalars)
            except OSError as exc:
                raise _unwritable(str(self.tb.path), exc) from None

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
    """The run's last line: its final evaluation (with a backdoor's attack success rate)
    and how many steps its model has."""
    asr = result.get("backdoor_asr")
    return (
        f"test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
        f"loss {result['test_loss']:.4f}"
        + (f", backdoor ASR {asr:.4f}" if asr is not None else "")
        + f" after {steps_text(steps)}"
    )


def complete_line(steps: int, max_steps: int) -> str:
    """A rerun of a finished run (or one with a lowered ``max_steps``): nothing to do."""
    if steps > max_steps:
        return (
            f"the run is complete: its model has {steps_text(steps)}, beyond max_steps="
            f"{max_steps}; nothing to do (a run is never trained backwards; raise max_steps "
            "to train on)"
        )
    return f"the run is complete ({steps_text(steps)}); nothing to do"


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


def steps_text(n: int) -> str:
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
        f"{run.placement.describe()}; mode={run.info['mode']} (f={run.rule_f}); "
        f"attack={cfg.attack.name}{z} q={run.q}; {cfg.network.name} on {cfg.dataset.name}; "
        f"engine={engine}{_servers(cfg.ps_shards, engine)}; output {folder}"
    )
    say(f"byzantine: {run.selection.describe()}")
