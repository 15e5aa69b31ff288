"""The torchrun engine with its ranks as threads of this process: the server and the
workers run the very code of ``python -m byzshield.train`` under torchrun
(:func:`byzshield.engines.torchrun.run_rank`), over gloo process groups on one in-process
store (:meth:`byzshield.engines.torchrun.comm.Comm.local_group`), so server logic is tested
without K + 1 Python processes (each paying torch's import and a rendezvous)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch.distributed as dist

from byzshield.compute.networks import use_kernels
from byzshield.config import build_run
from byzshield.config.overrides import compose_config
from byzshield.engines.torchrun import run_rank
from byzshield.engines.torchrun.comm import Comm

_JOBS = iter(range(1 << 30))  # a fresh store prefix per run


def run_threaded(overrides, folder: Path, *, timeout: float = 60.0, workers: dict | None = None):
    """Train ``overrides`` (a config of the torchrun engine) into ``folder`` with the
    server's ranks (0, or 0..S-1 with ``ps_shards=S``) and K worker ranks as threads.
    ``workers`` maps a worker index to a function ``(comm, run) -> None`` run instead
    of the real worker (a faulty one). Returns
    (the server's final evaluation or the exception it raised, {rank: exception})."""
    config = compose_config([*overrides, "engine=torchrun", f"train_dir={folder}"])
    use_kernels(config.network.name)
    server_run = build_run(config)
    world = server_run.world_size
    store = dist.PrefixStore(f"run{next(_JOBS)}/", dist.HashStore())
    results: dict = {}
    errors: dict[int, BaseException] = {}

    servers = config.ps_shards  # ranks 0..S-1: a sharded parameter server

    def rank(r: int) -> None:
        try:
            comm = Comm.local_group(store, r, world, timeout=timeout, num_servers=servers)
            try:
                if r == 0:
                    results[0] = run_rank(comm, server_run, folder, server_parts=False)
                else:
                    run = build_run(config, server=False)
                    fault = (workers or {}).get(r - servers)
                    if fault is not None:
                        fault(comm, run)
                    else:
                        run_rank(comm, run, folder, server_parts=False)
            finally:
                comm.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 4)
    return results.get(0, errors.get(0)), {r: e for r, e in errors.items() if r}
