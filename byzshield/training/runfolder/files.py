"""Writing a run's files: whole or not at all (a temporary file, flushed to disk,
renamed), and the one-line errors when that fails (a full disk names the path and the
free space)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message is one line."""


class FolderInUse(RunFolderError):
    """Another run holds the folder's lock; the message names it."""


class RunFileError(RuntimeError):
    """A file of a run that could not be written; the message is one line naming the
    path and the free space."""

    @classmethod
    def of(cls, path: Path, exc: BaseException, more: str = ""):
        """The error for writing ``path`` failing with ``exc``."""
        return cls(f"cannot write {path}: {_why(exc)}; {_free(Path(path).parent)}{more}")


class CheckpointError(RunFileError):
    """A checkpoint that could not be written; the previous ones are intact."""


def _size(n: float) -> str:
    units = ["B", "kB", "MB", "GB", "TB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def _free(folder: Path) -> str:
    try:
        return f"{_size(shutil.disk_usage(folder).free)} free there"
    except OSError:
        return "free space unknown"


def _why(exc: BaseException) -> str:
    """One line for a failed write: an OSError's reason, or what torch.save raised (on
    a full disk, a RuntimeError such as "unexpected pos 530112 vs 530016")."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)[:100]
    return f"{type(exc).__name__} from torch.save ({text})" if text else type(exc).__name__


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (what a crash right after it keeps)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file in the same folder, flushed to
    disk and renamed over ``path``. Raises RunFileError (one line, with the free space);
    the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise RunFileError.of(path, exc) from None
