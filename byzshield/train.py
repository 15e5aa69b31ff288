"""Training entry point: parse, build the run, train it with its engine, tear down.

    python -m byzshield.train                                   # one process (simulate)
    python -m byzshield.train -m mode=coord-median,bulyan adversary.q=1,3   # a sweep
    torchrun --standalone --nproc-per-node 16 -m byzshield.train    # server + 15 workers
    python -m byzshield.train engine=torchrun approach=rama_two      # launches torchrun

``engine=auto`` (the default) is torchrun under torchrun and simulate otherwise; both
give the same bits for the same config (see byzshield/engines). Bad configs stop with
one line before any process group starts.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path


def _interrupted_while_starting(signum, frame) -> None:
    line = "interrupted during start-up; nothing was trained"
    try:  # where train_dir stands, when it already holds checkpoints (torch-free)
        from byzshield.training.runfolder import interrupted_start_line

        line = interrupted_start_line()
    except Exception:  # noqa: BLE001, S110 - caught mid-import: the plain line
        pass
    print(f"\n{line}", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":  # Ctrl-C while torch and Hydra load: one line, no traceback
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    gc.disable()  # what the imports build lives as long as the process (cli() freezes it)

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from byzshield.cli.launcher import (
    drop_empty_job_log,
    fail,
    fail_job,
    launch_torchrun,
    log_to_folder,
)
from byzshield.cli.startup import entry_point
from byzshield.compute.networks import use_kernels
from byzshield.config import TrainConfig, build_run, load_config, register_schema
from byzshield.engines.simulate import train_simulated
from byzshield.training.loop import TrainingError
from byzshield.training.records import announce
from byzshield.training.runfolder import PROGRESS, FolderInUse, RunFileError, prepare, release

UNDER_TORCHRUN = "WORLD_SIZE" in os.environ
register_schema()


@hydra.main(config_path="pkg://byzshield.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """A job Hydra composed: one of a sweep, or a run started with Hydra's own flags (a
    plain single run is composed once, at start-up, and goes straight to :func:`job`)."""
    drop_empty_job_log(Path(HydraConfig.get().runtime.output_dir))  # rank<N>.log instead
    try:
        config = load_config(cfg)
    except ValueError as exc:
        return fail_job(f"error: {exc}")  # in a sweep: reported, and the next job runs
    train(config)


def job(config: TrainConfig) -> None:
    """A single run, its config composed and checked at start-up."""
    drop_empty_job_log(Path(HydraConfig.get().runtime.output_dir))  # rank<N>.log instead
    train(config)


def train(config: TrainConfig) -> None:
    """Build the run, then train it with its engine (the result is printed)."""
    try:
        use_kernels(config.network.name)  # one thread, the same kernels in every process
        engine = engine_of(config)
        world = int(os.environ["WORLD_SIZE"]) if UNDER_TORCHRUN else None
        run = build_run(config, server=not UNDER_TORCHRUN, world_size=world)
    except ValueError as exc:
        return fail_job(f"error: {exc}")  # in a sweep: reported, and the next job runs
    if engine == "torchrun" and not UNDER_TORCHRUN:  # plain python: launch K+S processes
        sys.exit(launch_torchrun(run.world_size))
    if engine == "lockstep":
        return lockstep_job(config, run)
    PROGRESS.clear()  # a Ctrl-C line about this job, not the sweep's previous one
    output = Path(HydraConfig.get().runtime.output_dir)
    if engine == "simulate":
        return simulate_job(run, output)
    torchrun_job(run, output)


def engine_of(config: TrainConfig) -> str:
    """``engine``, with ``auto`` resolved: torchrun under torchrun, simulate otherwise."""
    if config.engine != "auto":
        engine = config.engine
    else:
        engine = "torchrun" if UNDER_TORCHRUN else "simulate"
    if engine in ("simulate", "lockstep") and UNDER_TORCHRUN:
        raise ValueError(f"engine={engine} runs in one process: python -m byzshield.train")
    return engine


def simulate_job(run, output: Path) -> None:
    """engine=simulate: the whole run in this process, no process group."""
    try:
        folder, resume = prepare(output, run)  # locked; resume, or refuse
    except ValueError as exc:
        fail(f"error: {exc}", 2)
    try:
        try:
            log_to_folder(folder, 0)
            train_simulated(run, folder, resume)
        finally:
            release(folder)
    except (TrainingError, RunFileError) as exc:
        fail(f"error: {exc}", 1)


def torchrun_job(run, output: Path) -> None:
    """This process's rank of a torchrun run; its failure in one line."""
    from byzshield.engines.torchrun import StartError, run_rank  # only ranks need them
    from byzshield.engines.torchrun.comm import RankFailure, init

    job_num = HydraConfig.get().job.get("num") or 0
    comm = init(timeout=run.config.timeout, job=job_num, num_servers=run.config.ps_shards)
    try:
        run_rank(comm, run, output, server_parts=True, on_folder=log_to_folder)
    except StartError as exc:
        fail(str(exc), 2)
    except RankFailure as exc:  # a worker also prints a hung server: no one else can
        fail(f"error (rank {comm.rank}): {exc}", 1, console=comm.is_server or exc.timed_out)
    except (TrainingError, RunFileError) as exc:
        fail(f"error: {exc}", 1)
    finally:
        comm.close()


def lockstep_job(config, run) -> None:
    """engine=lockstep: in a multirun, keep the job for training with the others of its
    shape once Hydra has composed them all (its folder stays locked until then);
    otherwise train it now (a group of one)."""
    from byzshield.engines import lockstep  # only lockstep jobs need it

    hc = HydraConfig.get()
    multirun = hc.mode.name == "MULTIRUN"
    try:
        folder, resume = prepare(Path(hc.runtime.output_dir), run)
    except FolderInUse as exc:  # the folder is another run's: leave no refused.txt there
        return fail_job(f"error: {exc}", mark=False)
    except ValueError as exc:
        return fail_job(f"error: {exc}")
    member = lockstep.Member(run, folder, resume, name=f"job {hc.job.num}" if multirun else "")
    if multirun:
        announce(run, folder, "lockstep", quiet=True)
        return lockstep.collect(member)
    try:
        log_to_folder(folder, 0)
        announce(run, folder, "lockstep")
        group = lockstep.LockstepGroup([member], threads=config.threads, show_steps=True)
        group.train()  # prints the result
    except RunFileError as exc:
        fail(f"error: {exc}", 1)
    finally:
        release(folder)
    if group.failures:
        fail(f"error: {group.failures[0]}", 1)


def train_collected() -> list[str]:
    """The lockstep jobs of a multirun, trained once Hydra has composed them all; a file
    that cannot be written (a full disk) stops the sweep with one line."""
    if "byzshield.engines.lockstep" not in sys.modules:
        return []  # no job of this command was a lockstep job (they import it)
    from byzshield.engines import lockstep

    try:
        return lockstep.train_collected()
    except RunFileError as exc:
        fail(f"error: {exc}", 1)


def cli() -> None:
    """The ``byzshield-train`` console script: ``python -m byzshield.train``.

    The objects the imports built (torch's, Hydra's: about 230,000) live as long as the
    process, so they are frozen out of the cyclic garbage collector: its full collections
    and the one at exit no longer walk them, about 1 CPU-s of a 200-step MNIST-1D run
    (``benchmarks/startup.py``). Objects made from here on are collected as usual."""
    gc.freeze()
    gc.enable()
    sys.exit(entry_point(main, job=job, after=train_collected))  # the sweep's exit status


if __name__ == "__main__":
    cli()
