"""Benchmark: the step of ByzShield (MOLS, vote=full and vote=digest) against DETOX and
the baseline under torchrun, split into its parts, with the bytes into the server.

    python benchmarks/training.py                    # both tables (~15 min on 2 cores)
    python benchmarks/training.py --only lenet --steps 40 --rounds 2
    python benchmarks/training.py --only resnet18 --resnet-steps 3
    python benchmarks/training.py --shards           # the sharded server (~6 min)

Every configuration has K = 15 workers, the same batch and attack (rev_grad, q = 3,
coord-median): MOLS l=5 r=3 (f = 25 files, 5 per worker), DETOX (draco_lite K=15 r=3:
5 groups of 3, one file per worker) and the baseline (K=15, one file per worker). The
configurations run one after another, ``--rounds`` times in alternating order, so that a
change of machine load hits all of them; each figure is the median over the steps of
all rounds (the first steps of every run left out as warm-up), read from the runs'
metrics.jsonl. Ratios are against DETOX with vote=full, measured in the same run.

Columns: step time; its split (compute: the slowest worker's own measurement;
communication: sending the parameters and receiving replies and pulled copies; attack,
vote, aggregation, update, other: the server's work); MB received by the server per
step; step time / DETOX's; the server's share of the step outside receiving (attack +
vote + aggregation + update + other). "vote after last copy" is the part of the vote
left once the last payload has landed: the full vote over torchrun votes each file as
its copies arrive; for the digest vote it is the whole vote with its pull rounds.

Table 1: LeNet on the embedded digits (batch 300). Table 2: ResNet-18 (11.2M parameters)
on random 32x32x3 images in CIFAR-10's shape (benchmarks/_synthetic_train.py; batch 75),
a handful of steps, where the traffic into the server dominates.

``--shards``: a parameter server sharded S = 1, 2, 4 ways (``ps_shards``; torchrun with
K + S processes, servers on ranks 0..S-1) for MOLS l=5 r=3 with LeNet and ResNet-18,
coord-median and multi-krum: the bytes into each server per step from the workers
against total / S (total: the S = 1 run's, measured in the same invocation), the bytes
the servers send each other (vote classes, partial sums) as a share of the gradient
bytes, the gradient slices servers 1..S-1 send server 0, the step and aggregation times
on this machine, and the time the busiest server needs to receive its bytes on its own
10 Gb/s link.
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

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "MOLS l=5 r=3, vote=full": ["approach=mols", "approach.l=5", "approach.r=3", "vote=full"],
    "MOLS l=5 r=3, vote=digest": ["approach=mols", "approach.l=5", "approach.r=3", "vote=digest"],
    "DETOX K=15 r=3, vote=full": [
        "approach=draco_lite",
        "approach.K=15",
        "approach.r=3",
        "vote=full",
    ],
    "DETOX K=15 r=3, vote=digest": [
        "approach=draco_lite",
        "approach.K=15",
        "approach.r=3",
        "vote=digest",
    ],
    "baseline K=15": ["approach=baseline", "approach.K=15", "vote=full"],
}
REFERENCE = "DETOX K=15 r=3, vote=full"
PARTS = ("compute_s", "communication_s", "attack_s", "vote_s", "aggregation_s", "update_s")
PARTS += ("other_s",)
SERVER = ("attack_s", "vote_s", "aggregation_s", "update_s", "other_s")
MODELS = {
    "lenet": {
        "title": "LeNet on the embedded digits, batch 300",
        "overrides": ["network=lenet", "dataset=digits", "batch_size=300"],
        "script": None,
    },
    "resnet18": {
        "title": "ResNet-18 on random 32x32x3 images (CIFAR-10's shape), batch 75",
        "overrides": ["network=resnet18", "dataset=cifar10", "batch_size=75", "bn_batches=1"],
        "script": HERE / "_synthetic_train.py",
    },
}


def run_once(
    model: str,
    overrides: list[str],
    steps: int,
    folder: Path,
    *,
    nproc: int = 16,
    mode: str = "coord-median",
) -> list[dict]:
    """One torchrun job of ``steps`` steps; its per-step metrics records."""
    spec = MODELS[model]
    entry = [str(spec["script"])] if spec["script"] else ["-m", "byzshield.train"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        *entry,
        *spec["overrides"],
        *overrides,
        "attack=rev_grad",
        "adversary.q=3",
        "adversary.selection=worst_case",
        f"mode={mode}",
        f"max_steps={steps}",
        "eval_freq=0",
        "checkpoint=false",
        "eval_batch_size=100",
        f"train_dir={folder}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(overrides)}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]


def measure(model: str, steps: int, rounds: int, warmup: int, tmp: Path) -> dict[str, dict]:
    """Median of every column per configuration, over all rounds' steps after warm-up."""
    names = list(CONFIGS)
    records: dict[str, list[dict]] = {n: [] for n in names}
    for k in range(rounds):
        order = names if k % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.monotonic()
            rows = run_once(model, CONFIGS[name], steps, tmp / f"{model}-{k}-{names.index(name)}")
            records[name] += rows[warmup:]
            print(
                f"  {model} round {k + 1}/{rounds}: {name} ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    out = {}
    for name, rows in records.items():
        med = {k: statistics.median(r[k] for r in rows) for k in (*PARTS, "step_s", "vote_tail_s")}
        med["server_s"] = statistics.median(sum(r[k] for k in SERVER) for r in rows)
        med["MB"] = statistics.median(r["bytes_received"] for r in rows) / 1e6
        med["steps"] = len(rows)
        out[name] = med
    return out


def table(results: dict[str, dict]) -> str:
    ref = results[REFERENCE]
    head = ["configuration", "step ms", "compute", "comm", "attack", "vote", "aggregate"]
    head += ["update", "other", "vote after last copy", "MB/step", "step / DETOX"]
    head += ["MB / DETOX", "PS outside recv"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, r in results.items():
        cells = [
            name,
            f"{r['step_s'] * 1e3:.0f}",
            *(f"{r[k] * 1e3:.1f}" for k in PARTS),
            f"{r['vote_tail_s'] * 1e3:.1f}",
            f"{r['MB']:.1f}",
            f"{r['step_s'] / ref['step_s']:.2f}x",
            f"{r['MB'] / ref['MB']:.2f}x",
            f"{r['server_s'] / r['step_s']:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SHARD_CONFIGS = ("coord-median", "multi-krum")
LINK_BYTES_PER_S = 10e9 / 8  # a 10 Gb/s link per server


def shard_table(model: str, steps: int, warmup: int, tmp: Path) -> str:
    """The sharded server's table: S = 1, 2, 4 for each rule, against S = 1 of the same
    rule in the same run (bytes are per step and the same every step)."""
    head = ["mode", "S", "MB into each server", "max / (total / S)", "control KB"]
    head += ["control / gradient bytes", "slices to server 0 MB", "step ms", "aggregate ms"]
    head += ["10 Gb/s receive ms (busiest server)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for mode in SHARD_CONFIGS:
        total = None
        for S in (1, 2, 4):
            t0 = time.monotonic()
            overrides = [*CONFIGS["MOLS l=5 r=3, vote=full"], f"ps_shards={S}"]
            folder = tmp / f"{model}-{mode}-{S}"
            rows = run_once(model, overrides, steps, folder, nproc=15 + S, mode=mode)[warmup:]
            print(f"  {model} {mode} S={S} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            first = rows[0]
            per = first.get("bytes_per_server", [first["bytes_received"]])
            total = total or first["bytes_received"]  # S = 1: every gradient, whole
            control = statistics.median(r.get("control_bytes", 0) for r in rows)
            slices = statistics.median(r.get("slice_bytes", 0) for r in rows)
            busiest = max(b + (slices if s == 0 else 0) + control for s, b in enumerate(per))
            cells = [
                mode,
                str(S),
                " / ".join(f"{b / 1e6:.1f}" for b in per),
                f"{max(per) / (total / S):.3f}",
                f"{control / 1e3:.1f}",
                f"{control / total:.3%}",
                f"{slices / 1e6:.2f}",
                f"{statistics.median(r['step_s'] for r in rows) * 1e3:.0f}",
                f"{statistics.median(r['aggregation_s'] for r in rows) * 1e3:.1f}",
                f"{busiest / LINK_BYTES_PER_S * 1e3:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(MODELS), help="one table only")
    ap.add_argument("--steps", type=int, default=40, help="LeNet steps per run (default 40)")
    ap.add_argument(
        "--resnet-steps", type=int, default=4, help="ResNet-18 steps per run (default 4)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--shards", action="store_true", help="the sharded-server table instead")
    args = ap.parse_args()
    if args.steps < 6 or args.resnet_steps < 2 or args.rounds < 1:
        ap.error("--steps must be >= 6, --resnet-steps >= 2, --rounds >= 1")
    plan = {"lenet": (args.steps, 5), "resnet18": (args.resnet_steps, 1)}
    models = [args.only] if args.only else list(MODELS)
    if args.shards:
        with tempfile.TemporaryDirectory() as tmp:
            for model in models:
                steps, warmup = (args.steps, 5) if model == "lenet" else (args.resnet_steps, 1)
                print(f"{MODELS[model]['title']}: ps_shards 1, 2, 4", file=sys.stderr)
                print(
                    f"\n{MODELS[model]['title']}, MOLS l=5 r=3 (K = 15, f = 25), rev_grad "
                    f"q = 3, torchrun on this machine, medians over {steps - warmup} steps\n"
                )
                print(shard_table(model, steps, warmup, Path(tmp)), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            steps, warmup = plan[model]
            print(
                f"{MODELS[model]['title']}: {steps} steps x {args.rounds} rounds per configuration",
                file=sys.stderr,
                flush=True,
            )
            results = measure(model, steps, args.rounds, warmup, Path(tmp))
            print(
                f"\n{MODELS[model]['title']} (medians over "
                f"{min(r['steps'] for r in results.values())} steps per configuration, "
                f"K = 15, rev_grad q = 3, coord-median, torchrun on this machine)\n"
            )
            print(table(results))
            a, b = results["MOLS l=5 r=3, vote=full"], results["MOLS l=5 r=3, vote=digest"]
            print(
                f"\nMOLS vote=digest vs vote=full: {a['MB'] / b['MB']:.2f}x fewer bytes, "
                f"step {b['step_s'] / a['step_s']:.2f}x the time; MOLS compute "
                f"{a['compute_s'] / results[REFERENCE]['compute_s']:.2f}x DETOX's",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
