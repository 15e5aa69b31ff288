"""Benchmark: MNIST-1D sweep throughput, runs per hour, lockstep engine against the
simulate engine as the sweeps ran it before (two jobs at a time through Hydra's joblib
launcher, one thread each).

    python benchmarks/lockstep.py                    # 40 runs x 100 steps, 1 round
    python benchmarks/lockstep.py --rounds 2 --steps 300 --batch-size 750
    python benchmarks/lockstep.py --attacks min_max,min_sum,fang --modes coord-median,trimmed-mean
    python benchmarks/lockstep.py --set dataset.partition=iid,dirichlet   # more overrides
    python benchmarks/lockstep.py --lockstep-threads 1   # one core against simulate's two

The same Hydra multirun, ``approach=mols,draco_lite_attack attack=alie adversary.q=1..4
seed=0..4`` (40 runs; cnn1d on MNIST-1D, coord-median, evaluation every 25 steps; the
attacks, rules and any other override are options), once
with ``hydra/launcher=joblib hydra.launcher.n_jobs=2 engine=simulate threads=1`` (the
reference: what +experiment=attack_sweep did) and once with ``engine=lockstep``
(both CPUs), in alternating rounds, each whole command timed from outside; runs per hour
= runs / wall time. Both print the same final accuracies to float32 rounding, so the
script also prints the largest difference of the mean final top-1 between the two.

Every figure is printed with the machine's load average: this machine is shared, so
compare the ratio measured in one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sweep(engine: str, folder: Path, args) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "byzshield.train",
        "-m",
        "dataset=mnist1d",
        "network=cnn1d",
        f"batch_size={args.batch_size}",
        f"max_steps={args.steps}",
        "eval_freq=25",
        "lr=0.1",
        "outside_guarantee=true",
        "log_every=100000",
        "approach=mols,draco_lite_attack",
        f"attack={args.attacks}",
        f"mode={args.modes}",
        f"adversary.q={','.join(str(q) for q in range(1, args.qs + 1))}",
        f"seed={','.join(str(s) for s in range(args.seeds))}",
        f"train_dir={folder}",
        *args.set,
    ]
    if engine == "simulate":
        cmd += ["engine=simulate", "threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    else:
        cmd += ["engine=lockstep"]
        if args.lockstep_threads:
            cmd += [f"threads={args.lockstep_threads}"]
    return cmd


def _finals(folder: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for job in folder.iterdir():
        if not (job / "metrics.jsonl").exists():
            continue
        info = json.loads((job / "run.json").read_text())
        evals = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e.get("event") == "eval"]
        key = (
            f"{info['placement']} {info['mode']} {info['attack']['name']} "
            f"q={info['selection']['q']}"
        )
        out.setdefault(key, []).append(evals[-1]["top1"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=150)
    p.add_argument("--qs", type=int, default=4, help="adversary.q = 1..QS")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--attacks", default="alie", help="attack= of the sweep (comma list)")
    p.add_argument("--modes", default="coord-median", help="mode= of the sweep (comma list)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=V[,V]", help="another override"
    )
    p.add_argument(
        "--lockstep-threads",
        type=int,
        metavar="N",
        help="the lockstep engine's threads (default: one per CPU); 1 on a machine other "
        "work shares, where two threads wait on each other",
    )
    args = p.parse_args()
    sweep = [args.attacks, args.modes, *(s.split("=", 1)[1] for s in args.set if "=" in s)]
    runs = 2 * args.qs * args.seeds
    for values in sweep:
        runs *= len(values.split(","))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    times: dict[str, list[float]] = {"simulate": [], "lockstep": []}
    finals: dict[str, dict] = {}
    print(
        f"{runs} runs of {args.steps} steps, batch {args.batch_size}, cnn1d on MNIST-1D, "
        f"attack={args.attacks} mode={args.modes} {' '.join(args.set)}; lockstep threads "
        f"{args.lockstep_threads or 'one per CPU'}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine in ("simulate", "lockstep"):
                folder = Path(tmp) / f"{engine}{r}"
                t0 = time.perf_counter()
                subprocess.run(
                    _sweep(engine, folder, args),
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wall = time.perf_counter() - t0
                times[engine].append(wall)
                finals[engine] = _finals(folder)
                print(
                    f"  round {r + 1} {engine:8s}: {wall:7.1f} s, {runs / wall * 3600:7.0f} "
                    f"runs/hour (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    sim, ls = statistics.median(times["simulate"]), statistics.median(times["lockstep"])
    print(
        f"median: simulate + joblib (2 jobs) {runs / sim * 3600:.0f} runs/hour, lockstep "
        f"{runs / ls * 3600:.0f} runs/hour: {sim / ls:.1f}x"
    )
    gaps = [
        abs(statistics.mean(finals["simulate"][k]) - statistics.mean(finals["lockstep"][k]))
        for k in finals["simulate"]
    ]
    print(
        f"largest difference of a configuration's mean final top-1 between the engines: "
        f"{100 * max(gaps):.2f} points (over {len(gaps)} configurations of {args.seeds} seeds)"
    )


if __name__ == "__main__":
    main()
