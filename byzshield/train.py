"""Distributed training entry point: rank 0 parameter server, ranks 1..K workers.

    torchrun --standalone --nproc-per-node 16 -m byzshield.train
    torchrun --standalone --nproc-per-node 16 -m byzshield.train approach=mols mode=bulyan \
        attack=alie attack.q=3
    torchrun --standalone --nproc-per-node 16 -m byzshield.train -m mode=coord-median,multi-krum
    python -m byzshield.train approach=rama_two   # launches torchrun with K+1 processes

The composed config (conf/config.yaml) is validated once, before the process group
starts; rank 0 prints the one-line error when it cannot run. Started without torchrun,
the module validates the config and then runs torchrun itself with K+1 processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from byzshield.attacks import make_attack
from byzshield.comm import RankFailure, init
from byzshield.config import register_schema, validate
from byzshield.data import load_dataset
from byzshield.networks import build_network
from byzshield.server import ParameterServer
from byzshield.worker import run_worker

RANK = int(os.environ.get("RANK", "0"))
register_schema()


@hydra.main(config_path="pkg://byzshield.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)  # bit-identical replicas need equal thread counts
    try:
        world = os.environ.get("WORLD_SIZE")
        spec = validate(cfg, world_size=None if world is None else int(world))
        data = [
            load_dataset(spec.dataset, root=spec.dataset_root, download=spec.download, train=train)
            for train in (True, False)
        ]
    except ValueError as exc:
        _fail(f"error: {exc}", 2)
    if "WORLD_SIZE" not in os.environ:  # plain `python -m byzshield.train`: launch torchrun
        sys.exit(_launch(spec.world_size))
    comm = init(timeout=spec.train.timeout, job=HydraConfig.get().job.get("num") or 0)
    try:
        folder = Path(comm.broadcast_text(HydraConfig.get().runtime.output_dir))
        _log_to(folder, comm.rank)
        torch.manual_seed(spec.train.seed)
        model = build_network(
            spec.network,
            num_classes=spec.num_classes,
            in_channels=data[0].in_channels,
            image_size=data[0].image_size,
        )
        attack = make_attack(spec.attack, **spec.attack_params)
        if comm.is_server:
            for note in spec.notes:
                print(f"note: {note}")
            print(
                f"{spec.placement.describe()}; mode={spec.aggregator} "
                f"(f={spec.aggregator_f}); attack={spec.attack} q={spec.q}; "
                f"{spec.network} on {spec.dataset}; output {folder}",
                flush=True,
            )
            result = ParameterServer(comm, spec, model, *data, attack, folder).run()
            print(
                f"test accuracy: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
                f"loss {result['test_loss']:.4f} after {spec.max_steps} steps",
                flush=True,
            )
        else:
            run_worker(comm, spec, model, data[0], attack)
    except RankFailure as exc:
        _fail(f"error (rank {comm.rank}): {exc}", 1)
    finally:
        comm.close()


def _launch(world_size: int) -> int:
    """Run this config under `torchrun --standalone` with the right process count."""
    hc = HydraConfig.get()
    if hc.mode.name == "MULTIRUN":
        _fail(
            f"error: a multirun needs torchrun: torchrun --standalone --nproc-per-node "
            f"{world_size} -m byzshield.train -m ...",
            2,
        )
    overrides = [o for o in hc.overrides.task if not o.startswith("train_dir=")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(world_size),
        "-m",
        "byzshield.train",
        *overrides,
        f"train_dir={hc.runtime.output_dir}",
    ]
    print(
        f"launching {world_size} processes: torchrun --standalone --nproc-per-node "
        f"{world_size} -m byzshield.train {' '.join(overrides)}",
        flush=True,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> None:
    if RANK == 0:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def _log_to(folder: Path, rank: int) -> None:
    """Each rank logs to rank<N>.log in the run folder; only rank 0 talks to the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("byzshield")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _check_overrides(argv: list[str]) -> None:
    """Compose once before Hydra does, so a bad key or value is one line, from rank 0."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return
    from byzshield.cli import UsageError, compose

    try:
        compose("config", argv)
    except UsageError as exc:
        _fail(f"error: {exc}", 2)


if __name__ == "__main__":
    _check_overrides(sys.argv[1:])
    if RANK != 0:  # only rank 0 writes Hydra's folders; it broadcasts the one it chose
        sys.argv += [
            "hydra.run.dir=.",
            "hydra.sweep.dir=.",
            "hydra.sweep.subdir=.",
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
    main()
