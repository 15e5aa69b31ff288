"""Preparing a run folder: its lock, refusing another config, where the run resumes,
metrics.jsonl trimmed to it; and what a Ctrl-C before the first step says."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

from byzshield.training.runfolder.checkpoints import Resume, _checkpoints, newest_checkpoint
from byzshield.training.runfolder.files import (
    FolderInUse,
    RunFileError,
    RunFolderError,
    _why,
    write_atomic,
)
from byzshield.training.runfolder.lock import RunLock, keep

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

# Keys added after runs were written, with the value every run before them had: a folder
# whose config.json lacks one holds a run with that value, so the same run resumes.
ADDED_KEYS = {
    "dataset.partition": "iid",
    "dataset.alpha": 1.0,
    "dataset.classes_per_file": 2,
    "detect": "off",
    "placement.relabel": "none",
    "adversary.lie_on": "all",
    "adversary.evade": False,
}

PROGRESS: dict = {}
"""Where this process's training stands, for the one line printed when it is
interrupted: ``folders`` (prepared), ``step``/``total``/``checkpoint`` (the loop), or
``run_steps``/``total`` (the lockstep engine)."""


def config_record(config) -> dict:
    """The config as plain JSON values, without the keys a resumed run may change."""
    out = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    for key in RESUMABLE:
        out.pop(key, None)
    return out


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        b = new.get(key, "<unset>")
        a = old.get(key, {} if isinstance(b, dict) else ADDED_KEYS.get(name, "<unset>"))
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{name}.")
        elif a != b:
            diffs.append(f"{name}: {a} -> {b}")
    return diffs


def _used(folder: Path) -> bool:
    return (folder / "metrics.jsonl").exists() or (folder / "checkpoints").is_dir()


def prepare(folder: Path, run) -> tuple[Path, Resume | None]:
    """Take the folder for ``run`` (a :class:`byzshield.config.Run`): its lock, then where
    the run resumes (None: from step 0). Returns the folder it writes to. The lock is
    held until :func:`release` (or the process's end).

    Raises FolderInUse when another run holds the folder, RunFolderError when it holds a
    run with a different config (unless ``config.start_over``, which starts over in
    ``folder/restart-N``) or cannot be written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder)
        note = lock.acquire()  # FolderInUse: the holder's files are left as they are
    except FolderInUse:
        # a sweep's job: Hydra rewrote the holder's .hydra/ before this check could run
        _restore_hydra(folder, ".hydra-held")
        raise
    except OSError as exc:
        raise RunFolderError(f"train_dir {folder} cannot be used: {_why(exc)}") from None
    try:
        if note:
            print(note, flush=True)
        resume = _take(folder, run)
    except BaseException:
        lock.release()
        raise
    if isinstance(resume, Path):  # start_over: the run goes to a new sub-folder
        lock.release()
        return prepare(resume, run)
    _hold_hydra(folder)
    keep(folder, lock)
    PROGRESS.setdefault("folders", []).append(folder)
    return folder, resume


def _take(folder: Path, run) -> Resume | Path | None:
    """The locked folder's resume point (or the restart-N folder to use instead)."""
    config = run.config
    record = config_record(config)
    saved = folder / "config.json"
    try:
        if saved.exists() or _used(folder):
            try:
                old = json.loads(saved.read_text()) if saved.exists() else None
            except ValueError:
                old = {"config.json": "unreadable"}
            diffs = ["the folder holds a run without config.json"] if old is None else []
            if old is not None:
                diffs = _differences(old, record)
            if diffs and config.start_over:
                n = 1
                while (folder / f"restart-{n}").exists():
                    n += 1
                return folder / f"restart-{n}"
            if diffs:
                _restore_hydra(folder)
                shown = "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
                raise RunFolderError(
                    f"train_dir {folder} holds a run with another config ({shown}); use "
                    f"another train_dir, or start_over=true to start over in "
                    f"{folder}/restart-N"
                )
            _remove_partial(folder / "checkpoints")
            resume = newest_checkpoint(folder / "checkpoints", run.build_model())
            _trim_metrics(folder, resume)
            return resume
        write_atomic(saved, json.dumps(record, indent=2) + "\n")
        if (folder / ".hydra").is_dir() and not (folder / ".hydra-first").exists():
            shutil.copytree(folder / ".hydra", folder / ".hydra-first")
        return None
    except (OSError, RunFileError) as exc:
        why = str(exc) if isinstance(exc, RunFileError) else _why(exc)
        raise RunFolderError(f"train_dir {folder} cannot be used: {why}") from None


def _hold_hydra(folder: Path) -> None:
    """Keep the lock holder's .hydra/ in .hydra-held/: a sweep's job started into the same
    folder meanwhile has Hydra rewrite .hydra/ before its own start is refused, and puts
    it back from there."""
    if (folder / ".hydra").is_dir():
        shutil.rmtree(folder / ".hydra-held", ignore_errors=True)
        shutil.copytree(folder / ".hydra", folder / ".hydra-held")


def _restore_hydra(folder: Path, source: str = ".hydra-first") -> None:
    """Put back the .hydra/ of the first start, or of the lock's holder (Hydra rewrote it
    before the check ran)."""
    first = folder / source
    if first.is_dir():
        shutil.rmtree(folder / ".hydra", ignore_errors=True)
        shutil.copytree(first, folder / ".hydra")


def _remove_partial(folder: Path) -> None:
    """Remove the temporary checkpoints a crash (or a full disk) left; the lock says no
    other run is writing them."""
    for tmp in sorted(folder.glob(".step_*.pt.tmp")) if folder.is_dir() else ():
        tmp.unlink()
        print(f"note: removed {tmp}, a checkpoint left half-written by a crash", flush=True)


def _metrics_line(record: dict) -> str:
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
    return json.dumps(clean, allow_nan=False)


def _trim_metrics(folder: Path, resume: Resume | None) -> None:
    """Move the records of steps >= the resume step (and evaluations after it) out of
    metrics.jsonl into metrics.superseded-N.jsonl: the resumed run writes them again.
    An evaluation at the resume step that a torn last line lost is written back from
    the checkpoint, which holds it."""
    step = 0 if resume is None else resume.step
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    keep, moved = [], []
    evaluated = False
    for line in lines:
        try:
            row = json.loads(line)
            event = row.get("event") == "eval"
            later = row["step"] > step if event else row["step"] >= step
            evaluated |= event and row["step"] == step
        except (ValueError, KeyError, TypeError, AttributeError):
            later = True  # a torn last line of a killed run
        (moved if later else keep).append(line)
    saved_eval = resume.state.get("eval") if resume is not None else None
    restore = bool(saved_eval) and isinstance(saved_eval, dict) and not evaluated
    if restore:
        keep.append(_metrics_line({"step": step, "event": "eval", **saved_eval}))
    if moved:
        n = 1
        while (folder / f"metrics.superseded-{n}.jsonl").exists():
            n += 1
        write_atomic(folder / f"metrics.superseded-{n}.jsonl", "\n".join(moved) + "\n")
    if moved or restore:
        write_atomic(path, "".join(line + "\n" for line in keep))
    if restore:
        print(
            f"note: metrics.jsonl had lost the evaluation at step {step}; written back from "
            f"{resume.path}",
            flush=True,
        )


def _train_dir(argv: list[str]) -> Path | None:
    """The ``train_dir=`` of a command line, when it names one folder."""
    for arg in reversed(argv):
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "train_dir" and value and "$" not in value and "," not in value:
            return Path(value).expanduser()
    return None


def interrupted_start_line(folder: Path | None = None) -> str:
    """The line for Ctrl-C before the first step: where the folder stands (the prepared
    one, else the command line's ``train_dir``), as its checkpoints' names say."""
    folders = PROGRESS.get("folders") or []
    if folder is None and len(folders) > 1:
        return (
            f"interrupted during start-up; nothing new was trained in the {len(folders)} "
            "runs; rerun the same command to resume each from its last checkpoint"
        )
    folder = folder or (folders[0] if folders else _train_dir(sys.argv[1:]))
    found = _checkpoints(folder / "checkpoints") if folder is not None else []
    if not found:
        return "interrupted during start-up; nothing was trained"
    step, path = found[0]
    return (
        f"interrupted during start-up; nothing new was trained ({folder} stays at step "
        f"{step}, {path}); rerun the same command to resume"
    )
