"""Checkpoints: written atomically, validated before they are trusted, the newest
valid one chosen (a bad one renamed ``*.corrupt``)."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from byzshield.training.runfolder.files import CheckpointError, _fsync_folder, _size

CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "aggregator")


@dataclass
class Resume:
    """Where a resumed run starts: after ``step`` steps, from checkpoint ``state``."""

    step: int
    state: dict
    path: Path


def save_checkpoint(folder: Path, step: int, state: dict) -> Path:
    """checkpoints/step_NNNNNN.pt, written atomically: a temporary file, flushed to disk
    (fsync), renamed, and the rename made durable. A full or read-only disk raises
    CheckpointError (one line: the path, why, the free space and what a checkpoint
    needs) and leaves the previous checkpoints as they were and no temporary file
    (torch.save raises RuntimeError, not OSError, on a full disk)."""
    import torch

    path = folder / f"step_{step:06d}.pt"
    tmp = folder / f".step_{step:06d}.pt.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        need = "; the previous checkpoints are intact"
        with contextlib.suppress(OSError):
            kept = [p for _, p in _checkpoints(folder)]
            if kept:
                need = f"; a checkpoint needs about {_size(kept[0].stat().st_size)}" + need
        raise CheckpointError.of(path, exc, need) from None
    return path


def _named_step(path: Path) -> int | None:
    m = re.fullmatch(r"step_(\d+)\.pt", path.name)
    return int(m.group(1)) if m else None


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step by name, path) of the checkpoints in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(_named_step(p), p) for p in folder.glob("step_*.pt")]
    return sorted(((s if s is not None else -1, p) for s, p in found), reverse=True)


def _tensors(obj, prefix: str = ""):
    """(name, tensor) of every tensor in nested dicts and lists."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _model_problem(state: dict, model) -> str | None:
    """Why ``state`` (a checkpoint) does not fit ``model``, or None."""
    import torch

    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict):
        return "holds no model weights"
    name = type(model).__name__
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    if missing or extra:
        what = (f"lacks {', '.join(missing[:3])}" if missing else "") + (
            f"{'; ' if missing else ''}has {', '.join(extra[:3])}, which {name} lacks"
            if extra
            else ""
        )
        return f"does not fit the model ({name}: it {what})"
    for k, t in own.items():
        if not isinstance(saved[k], torch.Tensor) or saved[k].shape != t.shape:
            there = _shape(saved[k])
            return f"does not fit the model ({k} is {there} there, {_shape(t)} in {name})"
    optimizer = state.get("optimizer")
    if isinstance(optimizer, dict):
        params = list(model.parameters())
        for idx, st in (optimizer.get("state") or {}).items():
            buf = st.get("momentum_buffer") if isinstance(st, dict) else None
            if buf is None:
                continue
            if not isinstance(idx, int) or not 0 <= idx < len(params):
                return f"holds optimizer state for parameter {idx!r}, which {name} lacks"
            if getattr(buf, "shape", None) != params[idx].shape:
                return f"holds an optimizer state that does not fit {name} (parameter {idx})"
    return None


def checkpoint_problem(state, path: Path, model=None, *, keys=CHECKPOINT_KEYS) -> str | None:
    """Why ``state``, loaded from ``path``, must not be trusted (a phrase that follows the
    path, e.g. "holds non-finite values (conv1.weight)"), or None: ``keys`` present,
    ``step`` a step count equal to the file name's, ``model``'s keys and shapes (when
    given) and every tensor finite."""
    import torch

    if not isinstance(state, dict):
        return f"is not a checkpoint (it holds a {type(state).__name__})"
    missing = [k for k in keys if k not in state]
    if missing:
        return f"holds no {', '.join(missing)}"
    step, named = state["step"], _named_step(path)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"holds step {step!r}, not a number of steps"
    if named is not None and step != named:
        return f"says step {step} but its name says step {named}"
    if model is not None:
        problem = _model_problem(state, model)
        if problem:
            return problem
    for name, t in _tensors({k: state.get(k) for k in ("model", "optimizer", "aggregator")}):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"holds non-finite values ({name})"
    return None


def _set_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".corrupt")
    n = 2
    while bad.exists():
        bad = path.with_name(f"{path.name}.corrupt-{n}")
        n += 1
    path.rename(bad)
    return bad


def newest_checkpoint(folder: Path, model=None) -> Resume | None:
    """The newest checkpoint in ``folder`` that loads (tensors only), holds a full
    training state and passes :func:`checkpoint_problem` against ``model``; each bad
    one newer than it is reported in one line and renamed ``*.corrupt``."""
    import torch

    found = _checkpoints(folder)
    for k, (_, path) in enumerate(found):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            problem = checkpoint_problem(state, path, model)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            problem = f"is unreadable ({type(exc).__name__}{': ' if reason else ''}{reason})"
        if problem is None:
            return Resume(int(state["step"]), state, path)
        bad = _set_aside(path)
        then = "trying the previous one" if k + 1 < len(found) else "none is left: step 0"
        print(f"warning: checkpoint {path} {problem}; renamed {bad.name}, {then}", flush=True)
    return None
