"""A run's output folder: resume, refuse a different config, never overwrite, checkpoints.

A rerun with the same config into the same ``train_dir`` resumes from the newest valid
checkpoint and, after N more steps, holds the parameters a run that was never
interrupted would hold (the step is a pure function of the parameters, the optimizer
and schedule state, the rule's state and (seed, step)). A rerun with a different config
is refused with one line (``start_over=true`` starts over in a new sub-folder instead).
Nothing is overwritten: the steps a resumed run repeats are moved from metrics.jsonl to
``metrics.superseded-N.jsonl``, a corrupt checkpoint is renamed ``*.corrupt`` before the
previous one is used, and Hydra's ``.hydra/`` of the first start is kept in
``.hydra-first/``.

    python -m byzshield.train train_dir=runs/a max_steps=200   # killed at step 130
    python -m byzshield.train train_dir=runs/a max_steps=200   # resumes from step 100
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "Resume",
    "RunFolderError",
    "newest_checkpoint",
    "prepare",
    "save_checkpoint",
]

# Keys that may change between a run and its resumption: they do not change the bits of
# any step (both engines give the same bits, and so does a server sharded any number of
# ways; max_steps/epochs only say where to stop).
RESUMABLE = frozenset(
    {
        "train_dir",
        "engine",
        "threads",
        "log_every",
        "timeout",
        "max_steps",
        "epochs",
        "eval_freq",
        "checkpoint",
        "start_over",
        "ps_shards",
    }  # fmt: skip
)
CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "aggregator")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written; the message is one line naming the path."""


@dataclass
class Resume:
    """Where a resumed run starts: after ``step`` steps, from checkpoint ``state``."""

    step: int
    state: dict
    path: Path


def config_record(config) -> dict:
    """The config as plain JSON values, without the keys a resumed run may change."""
    out = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    for key in RESUMABLE:
        out.pop(key, None)
    return out


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return diffs


def _used(folder: Path) -> bool:
    return (folder / "metrics.jsonl").exists() or (folder / "checkpoints").is_dir()


def prepare(folder: Path, config) -> tuple[Path, Resume | None]:
    """The folder this run writes to and where it resumes (None: from step 0).

    Raises RunFolderError when ``folder`` holds a run with a different config (unless
    ``config.start_over``, which starts over in ``folder/restart-N``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    record = config_record(config)
    saved = folder / "config.json"
    if saved.exists() or _used(folder):
        old = json.loads(saved.read_text()) if saved.exists() else None
        diffs = ["the folder holds a run without config.json"] if old is None else []
        if old is not None:
            diffs = _differences(old, record)
        if diffs and config.start_over:
            n = 1
            while (folder / f"restart-{n}").exists():
                n += 1
            return prepare(folder / f"restart-{n}", config)
        if diffs:
            _restore_hydra(folder)
            shown = "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
            raise RunFolderError(
                f"train_dir {folder} holds a run with another config ({shown}); use another "
                f"train_dir, or start_over=true to start over in {folder}/restart-N"
            )
        resume = newest_checkpoint(folder / "checkpoints")
        _supersede(folder, 0 if resume is None else resume.step)
        return folder, resume
    saved.write_text(json.dumps(record, indent=2) + "\n")
    if (folder / ".hydra").is_dir() and not (folder / ".hydra-first").exists():
        shutil.copytree(folder / ".hydra", folder / ".hydra-first")
    return folder, None


def _restore_hydra(folder: Path) -> None:
    """Put back the .hydra/ of the first start (Hydra rewrote it before the check ran)."""
    first = folder / ".hydra-first"
    if first.is_dir():
        shutil.rmtree(folder / ".hydra", ignore_errors=True)
        shutil.copytree(first, folder / ".hydra")


def _supersede(folder: Path, step: int) -> None:
    """Move the records of steps >= ``step`` (and evaluations after it) out of
    metrics.jsonl into metrics.superseded-N.jsonl: the resumed run writes them again."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return
    keep, moved = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            later = row["step"] > step if row.get("event") == "eval" else row["step"] >= step
        except (ValueError, KeyError, TypeError):
            later = True  # a torn last line of a killed run
        (moved if later else keep).append(line)
    if not moved:
        return
    n = 1
    while (folder / f"metrics.superseded-{n}.jsonl").exists():
        n += 1
    (folder / f"metrics.superseded-{n}.jsonl").write_text("\n".join(moved) + "\n")
    path.write_text("".join(line + "\n" for line in keep))


def newest_checkpoint(folder: Path) -> Resume | None:
    """The newest checkpoint in ``folder`` that loads (tensors only) and holds a full
    training state; a bad one is reported in one line and renamed ``*.corrupt``."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("step_*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [k for k in CHECKPOINT_KEYS if k not in state]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            bad = path.with_name(path.name + ".corrupt")
            print(
                f"warning: checkpoint {path} is unreadable ({type(exc).__name__}: {reason}); "
                f"moved to {bad.name}, using the previous one",
                flush=True,
            )
            path.rename(bad)
            continue
        return Resume(int(state["step"]), state, path)
    return None


def save_checkpoint(folder: Path, step: int, state: dict) -> Path:
    """checkpoints/step_NNNNNN.pt, written atomically (temporary file + rename): a full
    or read-only disk leaves the previous checkpoints as they were."""
    path = folder / f"step_{step:06d}.pt"
    tmp = folder / f".step_{step:06d}.pt.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc} (the previous "
            f"checkpoints are intact)"
        ) from None
    return path
