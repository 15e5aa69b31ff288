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

import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from byzshield.attacks import make_attack
from byzshield.cli import check_train_overrides, fail, launch_torchrun, log_to_folder
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
        fail(f"error: {exc}", 2)
    if "WORLD_SIZE" not in os.environ:  # plain `python -m byzshield.train`: launch torchrun
        sys.exit(launch_torchrun(spec.world_size))
    comm = init(timeout=spec.train.timeout, job=HydraConfig.get().job.get("num") or 0)
    try:
        folder = Path(comm.broadcast_text(HydraConfig.get().runtime.output_dir))
        log_to_folder(folder, comm.rank)
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
        fail(f"error (rank {comm.rank}): {exc}", 1)
    finally:
        comm.close()


if __name__ == "__main__":
    check_train_overrides(sys.argv[1:])
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
