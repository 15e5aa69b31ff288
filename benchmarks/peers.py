"""Benchmark: whole runs of byzshield against ByzFL's own training loop, the same job.

    python benchmarks/peers.py                  # 2 alternating rounds, 200 steps
    python benchmarks/peers.py --quick          # 1 round (a few minutes)
    python benchmarks/peers.py --byzfl-default  # also ByzFL at torch's default threads
    python benchmarks/peers.py --mode coord-median   # the median (ByzFL's Median) instead
    python benchmarks/peers.py --byzfl-freeze   # also ByzFL with gc.freeze() after imports
    python benchmarks/peers.py --baseline /tmp/old  # also byzshield from another checkout

The job (issue 31): MNIST-1D (byzshield's embedded copy, 4,000 training and 1,000 test
signals), the 1-D CNN (``byzshield.compute.networks.CNN1d``, 5,210 parameters, the same
class and initialisation on both sides), 15 workers of which 3 are Byzantine and send
ALIE (z = tau = 1), the trimmed mean, lr 0.1 with momentum 0.9, 200 steps, 300 honest
samples a step, evaluation on the test set every 50 steps and at the end.

- **byzshield**: ``python -m byzshield.train`` with ``dataset=mnist1d network=cnn1d
  attack=alie mode=trimmed-mean lr=0.1`` on its defaults (MOLS l=5 r=3: K=15, 25 files
  of 12 samples, each held by 3 workers; the worst-case q=3; checkpoints, metrics.jsonl
  and TensorBoard events written as by default). One run with the simulate engine, and
  5 seeds in one lockstep sweep (``-m engine=lockstep seed=0,1,2,3,4``).
- **ByzFL** (``pip install byzfl``): its ``Client``, ``ByzantineClient``,
  ``RobustAggregator`` (in its ``Server``) and the DSGD loop of
  ``byzfl.benchmark.train.start_training`` (reproduced here: that function also needs its
  file manager and dataset downloads): 12 honest clients of 25 samples a step (300),
  iid shards of the training set, one Byzantine client sending 3 ALIE vectors
  (tau=1), ``TrMean(f=3)`` over the 15 vectors, the server's SGD with momentum 0.9
  (client momentum 0: the momentum is the server's, as in byzshield). The model class is
  registered in ``byzfl.fed_framework.models`` under a name of its own. 5 seeds run one
  after the other in one process (one import, one data load).

What differs: byzshield's workers compute redundant files (each of 25 files once in the
simulate engine, voted bit for bit) and it writes checkpoints and per-step metrics;
ByzFL's honest clients each compute one batch and it writes nothing. Both sides run at
one intra-op thread (``torch.set_num_threads(1)`` for ByzFL, its faster setting on this
machine; ``--byzfl-default`` adds a labelled run at torch's default); byzshield's
simulate engine computes its files on ``threads`` threads (default: one per CPU) of one
intra-op thread each. byzshield's command freezes what its imports built out of Python's
cyclic garbage collector (``byzshield.train.cli``); ByzFL's loop, which allocates many
Python objects a step, pays full collections over torch's ~230,000 objects, most in its
first run in a process (2x its later runs): ``--byzfl-freeze`` adds a labelled ByzFL run
with ``gc.freeze()`` after its imports, to show how much of a ratio that is. Each whole
command is timed from outside (wall and CPU, start-up
included), the two sides alternating; the ratio is ByzFL / byzshield. Both must learn:
final top-1 above chance (10 %) by a margin, checked.
"""

from __future__ import annotations

import json
import os
import sys
import time

JOB = ["dataset=mnist1d", "network=cnn1d", "attack=alie", "lr=0.1"]
"""byzshield's side, with ``mode=``: on its defaults (MOLS l=5 r=3, q=3 worst case,
batch 300)."""

BYZFL_RULES = {"trimmed-mean": "TrMean", "coord-median": "Median", "mean": "Average"}
"""byzshield's ``mode`` -> ByzFL's aggregator (given f = 3 where it takes one)."""

CHANCE = 0.10
LEARNED = 0.20
"""Final top-1 a run must pass to count as having learned (chance is 10 %)."""


# --------------------------------------------------------------------- ByzFL's side


def byzfl_runs(
    seeds: list[int], steps: int, threads: int | None, rule: str, out: str, freeze: bool
) -> None:
    """Train ``seeds`` with ByzFL's classes, one after the other; write their accuracies."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    if threads is not None:
        torch.set_num_threads(threads)
    from byzfl import ByzantineClient, Client, Server
    from byzfl.fed_framework import models

    if freeze:
        import gc

        gc.freeze()

    from byzshield.compute.datasets import load_dataset
    from byzshield.compute.networks import CNN1d

    models.byzshield_cnn1d = lambda: CNN1d(num_classes=10, in_channels=1, length=40)
    train = load_dataset("mnist1d", root=".", download=False, train=True)
    test = load_dataset("mnist1d", root=".", download=False, train=False)
    x_train, x_test = train.normalize(train.images), test.normalize(test.images)
    honest, byzantine, batch, f = 12, 3, 25, 3
    test_loader = DataLoader(TensorDataset(x_test, test.labels), batch_size=500)
    finals = []
    for seed in seeds:
        torch.manual_seed(seed)
        np.random.seed(seed)
        shards = torch.randperm(len(train)).chunk(honest)  # iid shards
        server = Server(
            {
                "device": "cpu",
                "model_name": "byzshield_cnn1d",
                "test_loader": test_loader,
                "optimizer_name": "SGD",
                "optimizer_params": {"momentum": 0.9},
                "learning_rate": 0.1,
                "weight_decay": 0.0,
                "milestones": [steps + 1],
                "learning_rate_decay": 1.0,
                "aggregator_info": {"name": rule, "parameters": {"f": f}},
                "pre_agg_list": [],
            }
        )
        clients = [
            Client(
                {
                    "model_name": "byzshield_cnn1d",
                    "device": "cpu",
                    "loss_name": "CrossEntropyLoss",
                    "LabelFlipping": False,
                    "nb_labels": 10,
                    "momentum": 0.0,
                    "training_dataloader": DataLoader(
                        TensorDataset(x_train[idx], train.labels[idx]),
                        batch_size=batch,
                        shuffle=True,
                    ),
                    "store_per_client_metrics": False,
                }
            )
            for idx in shards
        ]
        attacker = ByzantineClient(
            {"name": "ALittleIsEnough", "f": byzantine, "parameters": {"tau": 1.0}}
        )
        # byzfl.benchmark.train.start_training's DSGD loop, evaluation every 50 steps
        state = server.get_dict_parameters()
        for client in clients:
            client.set_model_state(state)
        for step in range(steps):
            if step and step % 50 == 0:
                server.compute_test_accuracy()
            for client in clients:
                client.compute_gradients()
            gradients = [c.get_flat_gradients_with_momentum() for c in clients]
            server.update_model_with_gradients(gradients + attacker.apply_attack(gradients))
            state = server.get_dict_parameters()
            for client in clients:
                client.set_model_state(state)
        finals.append(server.compute_test_accuracy())
    with open(out, "w") as fh:
        json.dump({"top1": finals}, fh)


# ----------------------------------------------------------------------- the parent


def _timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` run to its end in ``cwd`` (not the checkout: ``python
    -m`` puts its working directory first on sys.path); it must succeed."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _byzshield_top1(folder) -> list[float]:
    from pathlib import Path

    out = []
    for metrics in sorted(Path(folder).rglob("metrics.jsonl")):
        evals = [json.loads(x) for x in metrics.read_text().splitlines() if '"eval"' in x]
        out.append(evals[-1]["top1"])
    return out


def main() -> None:
    import argparse
    import statistics
    import tempfile
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--seeds", type=int, default=5, help="runs of the sweep comparison")
    p.add_argument("--quick", action="store_true", help="1 round")
    p.add_argument("--byzfl-default", action="store_true", help="ByzFL at torch's default")
    p.add_argument("--byzfl-freeze", action="store_true", help="ByzFL with gc.freeze()")
    p.add_argument("--baseline", help="a byzshield checkout to time as well (PYTHONPATH)")
    p.add_argument("--only", choices=("simulate", "lockstep"), help="one comparison")
    p.add_argument("--mode", default="trimmed-mean", choices=sorted(BYZFL_RULES))
    args = p.parse_args()
    rounds = 1 if args.quick else args.rounds
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    plain = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}  # torch's default
    me = [sys.executable, os.path.abspath(__file__)]
    seeds = ",".join(str(s) for s in range(args.seeds))
    base = [*JOB, f"mode={args.mode}", f"max_steps={args.steps}", "log_every=100000"]
    rule = BYZFL_RULES[args.mode]
    print(
        f"{args.steps} steps, MNIST-1D, cnn1d, K=15 q=3 ALIE, {args.mode} (ByzFL: {rule}); "
        f"{rounds} "
        f"alternating round(s); load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs",
        flush=True,
    )
    cases = []  # (name, runs, byzshield command(folder), ByzFL command(out))
    if args.only != "lockstep":
        cases.append(
            (
                "simulate, 1 run",
                1,
                lambda d: [sys.executable, "-m", "byzshield.train", *base, f"train_dir={d}"],
                lambda o, t="1": [*me, "--byzfl-child", o, "0", str(args.steps), t, rule],
            )
        )
    if args.only != "simulate":
        cases.append(
            (
                f"lockstep, {args.seeds} seeds",
                args.seeds,
                lambda d: [
                    sys.executable,
                    "-m",
                    "byzshield.train",
                    "-m",
                    "engine=lockstep",
                    *base,
                    f"seed={seeds}",
                    f"train_dir={d}",
                ],  # fmt: skip
                lambda o, t="1": [*me, "--byzfl-child", o, seeds, str(args.steps), t, rule],
            )
        )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, runs, ours, theirs in cases:
            times: dict[str, list[tuple[float, float]]] = {"ByzFL": [], "byzshield": []}
            if args.baseline:
                times["byzshield (baseline)"] = []
            if args.byzfl_default:
                times["ByzFL (torch default threads)"] = []
            if args.byzfl_freeze:
                times["ByzFL (gc.freeze() after imports)"] = []
            acc: dict[str, list[float]] = {}
            for r in range(rounds):
                for side in times:
                    tag = "".join(c if c.isalnum() else "-" for c in side)
                    folder = Path(tmp) / f"{name.split(',')[0]}-{tag}-{r}"
                    run_env = plain if "default" in side else env
                    if side.startswith("byzshield"):
                        cmd = ours(folder)
                        if "baseline" in side:
                            run_env = dict(env, PYTHONPATH=str(Path(args.baseline).resolve()))
                    else:
                        out = str(folder) + ".json"
                        cmd = theirs(out, "default" if "default" in side else "1")
                        cmd[-2] += "+freeze" if "freeze" in side else ""
                    wall, cpu = _timed(cmd, run_env, tmp)
                    times[side].append((wall, cpu))
                    if side.startswith("byzshield"):
                        acc[side] = _byzshield_top1(folder)
                    else:
                        acc[side] = json.loads(Path(out).read_text())["top1"]
                    print(
                        f"  {name}, round {r + 1}, {side}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s, "
                        f"final top-1 {statistics.mean(acc[side]):.3f} over {len(acc[side])} "
                        f"run(s) (load {os.getloadavg()[0]:.2f})",
                        flush=True,
                    )
            for side, values in acc.items():
                if len(values) != runs or min(values) <= LEARNED:
                    sys.exit(f"{name}: {side} did not learn: final top-1 {values}")
            for mine in [side for side in times if side.startswith("byzshield")]:
                ours_wall = statistics.median(w for w, _ in times[mine])
                ours_cpu = statistics.median(c for _, c in times[mine])
                for side in times:
                    if side.startswith("byzshield"):
                        continue
                    wall = statistics.median(w for w, _ in times[side])
                    cpu = statistics.median(c for _, c in times[side])
                    results.append((name, side, mine, wall, ours_wall, cpu, ours_cpu))
    goal = {"simulate": 3.0, "lockstep": 5.0}
    print(
        f"\n{'comparison':20s} {'peer':34s} {'byzshield':21s} {'peer s':>7s} {'ours s':>7s} "
        f"{'wall ratio':>10s} {'CPU ratio':>9s}  goal"
    )
    for name, side, mine, wall, ours_wall, cpu, ours_cpu in results:
        target = goal[name.split(",")[0]]
        verdict = ""
        if side == "ByzFL" and mine == "byzshield":
            verdict = " ok" if wall / ours_wall >= target else " MISSED"
        print(
            f"{name:20s} {side:34s} {mine.removeprefix('byzshield').strip() or 'this tree':21s} "
            f"{wall:7.1f} {ours_wall:7.1f} {wall / ours_wall:9.2f}x {cpu / ours_cpu:8.2f}x  "
            f">= {target:.0f}x{verdict}"
        )
    print(f"(medians over {rounds} round(s); load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--byzfl-child":
        _, _, out, seeds, steps, threads, rule = sys.argv
        threads, _, freeze = threads.partition("+")
        byzfl_runs(
            [int(s) for s in seeds.split(",")],
            int(steps),
            None if threads == "default" else int(threads),
            rule,
            out,
            freeze == "freeze",
        )
    else:
        main()
