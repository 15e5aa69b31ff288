"""Benchmark: how heterogeneous each ``dataset.partition`` makes the files (label_tv), and
what drawing a partitioned step costs against an iid one.

    python benchmarks/partition.py                  # ~20 s on one core
    python benchmarks/partition.py --steps 50 --seeds 5 --batch-sizes 300 150

The setup is MNIST-1D with the default placement, MOLS l=5 r=3 (K = 15, f = 25 files),
each run built as ``python -m byzshield.train dataset=mnist1d network=cnn1d ...`` builds
it (:func:`byzshield.config.build_run`). For each partition:

- ``label_tv``: the mean over steps 0..steps-1 and the seeds of the value every step
  writes to metrics.jsonl (:meth:`byzshield.config.Run.label_tv`), with the standard
  deviation over those steps and its smallest and largest value;
- the time to draw a step, median over the steps (each step drawn once, as a run does;
  the per-class epoch permutations are cached across steps as in a run): ``indices`` is
  the partition's (f, m) sample table alone, ``files`` the whole step's normalised
  files (:func:`byzshield.compute.sampling.step_files`, the lockstep engine's input;
  the simulate engine's ``file_batches`` gathers the same rows file by file).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from byzshield.compute.sampling import step_files
from byzshield.config import build_run
from byzshield.config.overrides import compose_config

PARTITIONS = {
    "iid": ("dataset.partition=iid",),
    "dirichlet alpha=10": ("dataset.partition=dirichlet", "dataset.alpha=10"),
    "dirichlet alpha=1": ("dataset.partition=dirichlet", "dataset.alpha=1"),
    "dirichlet alpha=0.1": ("dataset.partition=dirichlet", "dataset.alpha=0.1"),
    "classes k=2": ("dataset.partition=classes", "dataset.classes_per_file=2"),
    "classes k=1": ("dataset.partition=classes", "dataset.classes_per_file=1"),
}


def _run(batch_size: int, seed: int, overrides: tuple[str, ...]):
    config = compose_config(
        [
            "dataset=mnist1d",
            "network=cnn1d",
            f"batch_size={batch_size}",
            f"seed={seed}",
            *overrides,
        ]
    )
    return build_run(config, server=False)


def _draw_times(run, steps: range, fn) -> float:
    times = []
    for step in steps:
        t0 = time.perf_counter()
        fn(run, step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _indices(run, step: int) -> None:
    cfg = run.config
    part = run.partition
    if part is None:  # pragma: no cover - build_run always sets one
        raise SystemExit("the run has no partition")
    part.step_indices(
        run.train_data,
        seed=cfg.seed,
        step=step,
        batch_size=cfg.batch_size,
        num_files=run.placement.num_files,
    )


def _files(run, step: int) -> None:
    cfg = run.config
    step_files(
        run.train_data,
        seed=cfg.seed,
        step=step,
        batch_size=cfg.batch_size,
        num_files=run.placement.num_files,
        partition=run.partition,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[300, 150])
    parser.add_argument("--timing-steps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for batch_size in args.batch_sizes:
        m = batch_size // 25
        print(
            f"\nMNIST-1D, MOLS l=5 r=3 (K=15, f=25 files of {m}), batch {batch_size}: "
            f"label_tv over steps 0..{args.steps - 1} x seeds 0..{args.seeds - 1}; "
            f"draw times: median over {args.timing_steps} steps, one thread\n"
        )
        print("| partition | label_tv mean | sd | min | max | indices us/step | files us/step |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        base = None
        for name, overrides in PARTITIONS.items():
            values = []
            for seed in range(args.seeds):
                run = _run(batch_size, seed, overrides)
                values += [run.label_tv(step) for step in range(args.steps)]
            run = _run(batch_size, 0, overrides)
            timed = range(10_000, 10_000 + args.timing_steps)  # steps no one drew yet
            t_idx = _draw_times(run, timed, _indices)
            t_files = _draw_times(run, range(20_000, 20_000 + args.timing_steps), _files)
            if base is None:
                base = (t_idx, t_files)
            ratio = f" ({t_idx / base[0]:.1f}x)" if name != "iid" else ""
            ratio_f = f" ({t_files / base[1]:.1f}x)" if name != "iid" else ""
            print(
                f"| {name} | {statistics.fmean(values):.3f} | {statistics.stdev(values):.3f} "
                f"| {min(values):.3f} | {max(values):.3f} | {t_idx * 1e6:.0f}{ratio} "
                f"| {t_files * 1e6:.0f}{ratio_f} |"
            )


if __name__ == "__main__":
    main()
