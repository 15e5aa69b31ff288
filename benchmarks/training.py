"""Benchmark: per-step time split of distributed training, ByzShield vs the baseline.

    python benchmarks/training.py              # 60 steps each, LeNet on the embedded digits
    python benchmarks/training.py --steps 200

Runs `torchrun --standalone -m byzshield.train` for MOLS (l=5, r=3: K=15, f=25, each
worker 5 files) and for the baseline with the same K=15 (one file each), same batch
(300 samples), attack rev_grad q=3, coord-median; reads each run's metrics.jsonl and
prints the mean time per step split into compute (slowest worker), communication,
vote, aggregation and update, plus the share of the server's step spent outside
receiving gradients. The first 5 steps (warm-up) are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "mols l=5 r=3": ["approach=mols", "approach.l=5", "approach.r=3"],
    "baseline K=15": ["approach=baseline", "approach.K=15"],
}
KEYS = ("compute_s", "communication_s", "vote_s", "aggregation_s", "update_s", "step_s")


def run(name: str, overrides: list[str], steps: int, folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "16",
        "-m",
        "byzshield.train",
        *overrides,
        "attack=rev_grad",
        "attack.q=3",
        "mode=coord-median",
        f"max_steps={steps}",
        "eval_freq=0",
        "checkpoint=false",
        f"train_dir={folder}",
    ]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "event" not in r][5:]
    out = {k: statistics.mean(r[k] for r in steps_rows) for k in KEYS}
    out["MB/step"] = steps_rows[0]["bytes_received"] / 1e6
    out["top1"] = [r for r in rows if r.get("event") == "eval"][-1]["top1"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ov) in enumerate(CONFIGS.items()):
            results[name] = run(name, ov, args.steps, Path(tmp) / str(i))
    head = [
        "design",
        "step ms",
        "compute",
        "comm",
        "vote",
        "aggregate",
        "update",
        "MB/step",
        "PS outside recv",
        "top-1",
    ]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for name, r in results.items():
        outside = (r["vote_s"] + r["aggregation_s"] + r["update_s"]) / r["step_s"]
        print(
            " | ".join(
                [
                    name,
                    f"{r['step_s'] * 1e3:.0f}",
                    f"{r['compute_s'] * 1e3:.0f}",
                    f"{r['communication_s'] * 1e3:.0f}",
                    f"{r['vote_s'] * 1e3:.1f}",
                    f"{r['aggregation_s'] * 1e3:.1f}",
                    f"{r['update_s'] * 1e3:.1f}",
                    f"{r['MB/step']:.1f}",
                    f"{outside:.0%}",
                    f"{r['top1']:.3f}",
                ]
            )
        )
    a, b = results["mols l=5 r=3"], results["baseline K=15"]
    print(
        f"\nmols / baseline step time: {a['step_s'] / b['step_s']:.2f}x "
        f"(the MOLS workers compute 5 files each, the baseline's 1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
