"""Benchmark: MNIST-1D sweep throughput, runs per hour, lockstep engine against the
simulate engine as the sweeps ran it before (two jobs at a time through Hydra's joblib
launcher, one thread each).

    python benchmarks/lockstep.py                    # 40 runs x 100 steps, 1 round
    python benchmarks/lockstep.py --rounds 2 --steps 300 --batch-size 750
    python benchmarks/lockstep.py --attacks min_max,min_sum,fang --modes coord-median,trimmed-mean
    python benchmarks/lockstep.py --set dataset.partition=iid,dirichlet   # more overrides
    python benchmarks/lockstep.py --lockstep-threads 2   # two intra-op threads (default 1)
    python benchmarks/lockstep.py --threads-table    # 1 and 2 sweeps side by side
    python benchmarks/lockstep.py --threads-table --quick

The same Hydra multirun, ``approach=mols,draco_lite_attack attack=alie adversary.q=1..4
seed=0..4`` (40 runs; cnn1d on MNIST-1D, coord-median, evaluation every 25 steps; the
attacks, rules and any other override are options), once
with ``hydra/launcher=joblib hydra.launcher.n_jobs=2 engine=simulate threads=1`` (the
reference: what +experiment=attack_sweep did) and once with ``engine=lockstep``
(both CPUs), in alternating rounds, each whole command timed from outside; runs per hour
= runs / wall time. Both print the same final accuracies to float32 rounding, so the
script also prints the largest difference of the mean final top-1 between the two.

``--threads-table``: the lockstep engine's ``threads`` (its intra-op threads) with one
sweep alone and two sweeps side by side, as two users would run them: each sweep is
``+experiment=paper_mnist1d``'s job (MOLS K=15, ALIE, coord-median, cnn1d on MNIST-1D,
batch 150) over ``--seeds`` seeds and ``--steps`` steps, for threads 1, 2 and the
default (``threads`` unset). Per cell: the median over the sweep's run-steps of its ms
per run-step (``step_s`` in metrics.jsonl: a step of the batched group over its runs)
and the whole command's wall time, the mean over the processes running together.

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


def _sweep_ms(folder: Path) -> float:
    """Median ms per run-step of a lockstep sweep, from its runs' metrics.jsonl."""
    steps = [
        json.loads(line)["step_s"]
        for metrics in folder.rglob("metrics.jsonl")
        for line in metrics.read_text().splitlines()
        if '"eval"' not in line
    ]
    return 1000 * statistics.median(steps)


def threads_table(args) -> None:
    """ms per run-step of 1 and 2 lockstep sweeps side by side, by ``threads``."""
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    seeds = ",".join(str(s) for s in range(args.seeds))
    print(
        f"lockstep sweeps of {args.seeds} runs x {args.steps} steps (MOLS K=15, ALIE, "
        f"coord-median, cnn1d on MNIST-1D, batch {args.batch_size}); {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    settings = [("1", ["threads=1"]), ("2", ["threads=2"]), ("default", [])]
    cells: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, extra in settings:
                for procs in (1, 2):
                    folders = [Path(tmp) / f"{name}-{procs}-{r}-{k}" for k in range(procs)]
                    cmds = [
                        [
                            sys.executable,
                            "-m",
                            "byzshield.train",
                            "-m",
                            "engine=lockstep",
                            "dataset=mnist1d",
                            "network=cnn1d",
                            "attack=alie",
                            "attack.ddof=0",
                            f"batch_size={args.batch_size}",
                            f"max_steps={args.steps}",
                            "eval_freq=0",
                            "outside_guarantee=true",
                            "log_every=100000",
                            f"seed={seeds}",
                            f"train_dir={folder}",
                            *extra,
                        ]  # fmt: skip
                        for folder in folders
                    ]
                    t0 = time.perf_counter()
                    procs_run = [
                        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in cmds
                    ]
                    walls = []
                    for proc in procs_run:
                        if proc.wait():
                            sys.exit(f"a lockstep sweep failed: {' '.join(cmds[0])}")
                        walls.append(time.perf_counter() - t0)
                    ms = statistics.mean(_sweep_ms(f) for f in folders)
                    cells.setdefault((name, procs), []).append((ms, statistics.mean(walls)))
                    print(
                        f"  threads={name:7s} {procs} process(es): {ms:6.2f} ms per run-step, "
                        f"{statistics.mean(walls):6.1f} s each (load {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
    print("\n| threads | 1 sweep: ms per run-step (s) | 2 sweeps side by side: ms (s) |")
    print("| --- | --- | --- |")
    for name, _ in settings:
        row = []
        for procs in (1, 2):
            values = cells[(name, procs)]
            ms = statistics.median(v for v, _ in values)
            wall = statistics.median(w for _, w in values)
            row.append(f"{ms:.2f} ({wall:.1f} s)")
        print(f"| {name} | {row[0]} | {row[1]} |")
    print(f"(medians over {args.rounds} round(s); load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads-table", action="store_true", help="1 and 2 sweeps by threads")
    p.add_argument("--quick", action="store_true", help="--threads-table: 3 seeds x 30 steps")
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
        help="the lockstep engine's intra-op threads (default: the engine's, 1: on a "
        "machine other work shares, two threads wait on each other)",
    )
    args = p.parse_args()
    if args.threads_table:
        if args.quick:
            args.seeds, args.steps = 3, 30
        return threads_table(args)
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
        f"{args.lockstep_threads or 1}; "
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
