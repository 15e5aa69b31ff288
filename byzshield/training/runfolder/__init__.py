"""A run's output folder: one run at a time, resume, refuse a different config, never
overwrite, checkpoints that are checked before they are trusted.

A rerun with the same config into the same ``train_dir`` resumes from the newest valid
checkpoint and, after N more steps, holds the parameters a run that was never
interrupted would hold (the step is a pure function of the parameters, the optimizer
and schedule state, the rule's state and (seed, step)). A rerun with a different config
is refused with one line (``start_over=true`` starts over in a new sub-folder instead).

- **One run per folder.** :func:`prepare` takes the folder's lock (``train_dir/.lock``,
  naming the holder's pid, host and start time) and keeps it until the run ends; a
  second start into a folder in use is refused in one line naming the holder and
  changes nothing there. The lock is an ``flock``: the kernel frees it when the holder
  dies, even by ``kill -9``, and a lock file left by a dead holder on this host is taken
  over with a note. A holder on another host (a shared file system) cannot be checked:
  the start is refused and says which file to remove if that run has ended (unless it
  was this very Slurm job, before Slurm requeued it).
- **Checkpoints are validated on load**: the training state complete, ``step`` equal to
  the step in the file name, the model's keys and shapes, every value finite. A bad one
  is renamed ``*.corrupt`` and the previous one is tried. A checkpoint beyond a lowered
  ``max_steps`` is kept: the run is complete at its real step count.
- **Nothing is overwritten or half-written.** The steps a resumed run repeats are moved
  from metrics.jsonl to ``metrics.superseded-N.jsonl``; an evaluation row lost with a
  torn last line is rewritten from the checkpoint that holds it; Hydra's ``.hydra/`` of
  the first start is kept in ``.hydra-first/``. Every file that is written whole
  (checkpoints, config.json, run.json, a trimmed metrics.jsonl) goes to a temporary
  file, flushed to disk (fsync) and renamed, so a crash or a full disk leaves the
  previous version; a full disk stops the run with one line naming the path and the
  free space, and the temporary file is removed (a crash's leftover is removed at the
  next start).

    python -m byzshield.train train_dir=runs/a max_steps=200   # killed at step 130
    python -m byzshield.train train_dir=runs/a max_steps=200   # resumes from step 100

One concern a file: ``files`` (atomic, durable writes and their one-line errors),
``lock`` (one run per folder), ``checkpoints`` (writing, validating, choosing one),
``folder`` (preparing a folder for a run). Importing the package does not load torch
(the start-up Ctrl-C line reads it first).
"""

from byzshield.training.runfolder.checkpoints import (
    CHECKPOINT_KEYS,
    Resume,
    checkpoint_problem,
    newest_checkpoint,
    save_checkpoint,
)
from byzshield.training.runfolder.files import (
    CheckpointError,
    FolderInUse,
    RunFileError,
    RunFolderError,
    write_atomic,
)
from byzshield.training.runfolder.folder import (
    PROGRESS,
    RESUMABLE,
    config_record,
    interrupted_start_line,
    prepare,
)
from byzshield.training.runfolder.lock import LOCK, RunLock, check_free, release

__all__ = [
    "CHECKPOINT_KEYS",
    "LOCK",
    "PROGRESS",
    "RESUMABLE",
    "CheckpointError",
    "FolderInUse",
    "Resume",
    "RunFileError",
    "RunFolderError",
    "RunLock",
    "check_free",
    "checkpoint_problem",
    "config_record",
    "interrupted_start_line",
    "newest_checkpoint",
    "prepare",
    "release",
    "save_checkpoint",
    "write_atomic",
]
