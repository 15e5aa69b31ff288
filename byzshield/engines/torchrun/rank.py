"""One rank of a torchrun run, whichever it is: the parameter server (rank 0) takes and
prepares the run folder and trains; servers 1..S-1 of a sharded server and the workers
serve until it stops them.

``python -m byzshield.train`` calls :func:`run_rank` in each torchrun process; tests call
it for ranks running as threads of one process
(:meth:`byzshield.engines.torchrun.comm.Comm.local_group`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from byzshield.config import Run, add_server_parts
from byzshield.engines.torchrun.comm import Comm
from byzshield.engines.torchrun.server import TorchrunEngine, run_shard_server
from byzshield.engines.torchrun.worker import run_worker
from byzshield.training.loop import Trainer
from byzshield.training.records import announce
from byzshield.training.runfolder import prepare, release

__all__ = ["StartError", "run_rank"]


class StartError(RuntimeError):
    """The server refused to start (its folder holds another config, ...): every rank
    stops with this one line."""


def run_rank(
    comm: Comm,
    run: Run,
    output: Path,
    *,
    server_parts: bool,
    on_folder: Callable[[Path, int], None] | None = None,
) -> dict | None:
    """One rank of ``run`` over ``comm``: the server (rank 0) takes and prepares the
    folder ``output``, tells the other ranks its status and the folder, then trains,
    gives the folder back and returns the final evaluation; every other rank serves until
    the server stops it and returns None. ``server_parts``: the server builds the
    Byzantine selection and the rule here (under torchrun, build_run left them out).
    ``on_folder(folder, rank)`` is called on every rank once the folder is known (the
    command line opens each rank's log there). Raises :class:`StartError` on every rank
    when the server refused to start."""
    status, folder, resume = "", output, None
    if comm.is_server:
        try:
            if server_parts:
                run = add_server_parts(run)  # the worst-case search: once, on rank 0 only
            folder, resume = prepare(folder, run)  # locked; resume, or refuse
        except ValueError as exc:
            status = f"error: {exc}"
    try:
        status = comm.broadcast_text(status)  # the server's line, on every rank
        if status:
            raise StartError(status)
        folder = Path(comm.broadcast_text(str(folder)))
        if on_folder is not None:
            on_folder(folder, comm.rank)
        if comm.is_shard_server:  # servers 1..S-1 of a sharded parameter server
            run_shard_server(comm, run)
            return None
        if not comm.is_server:
            run_worker(comm, run)
            return None
        engine = TorchrunEngine(comm, run, run.num_params)
        announce(run, folder, "torchrun")
        trainer = Trainer(run, engine, folder, device=run.config.device, resume=resume)
        return trainer.train()
    finally:
        if comm.is_server and not status:
            release(folder)
