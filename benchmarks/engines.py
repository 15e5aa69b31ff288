"""Benchmark: the simulate engine against the torchrun engine, and a K >= 100 design.

    python benchmarks/engines.py                 # 60 steps per run, 2 rounds
    python benchmarks/engines.py --steps 100 --rounds 3

1. MOLS l=5 r=3 (K=15, f=25), LeNet on the embedded digits, batch 300, worst-case
   rev_grad q=3, coord-median: the same config under ``torchrun --nproc-per-node 16``
   and under ``engine=simulate``, alternated (torchrun, simulate, torchrun, ...) so that
   both see the same machine load. Per run: the median step time from metrics.jsonl
   (first 5 steps left out) and the wall time of the whole command; the ratio is
   torchrun / simulate, measured in this run.
2. MOLS l=11 r=10 (K=110, f=121), batch 1210, under simulate: steps per second and
   the process's peak resident memory next to the size of the (f, d) honest rows and of
   the (K, l, d) stack a torchrun server receives.

Every figure is printed with the machine's load average, because this machine is
shared: compare ratios measured in one run, not absolute times across runs.
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

MOLS15 = ["approach=mols", "approach.l=5", "approach.r=3", "attack=rev_grad", "adversary.q=3"]
MOLS110 = ["approach=mols", "approach.l=11", "approach.r=10", "batch_size=1210", "adversary.q=10"]
LENET_DIGITS_D = 131_080  # LeNet parameters on 8x8 digits


def _peak_rss_kib(cmd: list[str]) -> int:
    """Peak resident memory of ``cmd`` (KiB), read from its own getrusage at exit."""
    code = (
        "import resource, runpy, sys; sys.argv = sys.argv[1:]; "
        "exit_code = 0\n"
        "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    exit_code = e.code or 0\n"
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(exit_code)"
    )
    assert cmd[1] == "-m"
    proc = subprocess.run(
        [cmd[0], "-c", code, *cmd[2:]],
        check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return int(proc.stderr.rsplit("PEAK_KIB", 1)[1].split()[0])


def _run(cmd: list[str], folder: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r][5:]
    return {
        "step_s": statistics.median(r["step_s"] for r in steps),
        "wall_s": wall,
        "top1": [r for r in rows if r.get("event") == "eval"][-1]["top1"],
    }


def train_cmd(engine: str, overrides: list[str], steps: int, folder: Path) -> list[str]:
    common = [*overrides, f"max_steps={steps}", "eval_freq=0", "checkpoint=false"]
    common.append(f"train_dir={folder}")
    if engine == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "16",
            "-m",
            "byzshield.train",
            *common,
        ]
    return [sys.executable, "-m", "byzshield.train", "engine=simulate", *common]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--large-steps", type=int, default=30)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"torchrun": [], "simulate": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for engine in ("torchrun", "simulate"):
                folder = Path(tmp) / f"{engine}{k}"
                print(f"round {k + 1}: {engine} ...", file=sys.stderr, flush=True)
                results[engine].append(_run(train_cmd(engine, MOLS15, args.steps, folder), folder))
        print(f"load average at the end of part 1: {os.getloadavg()[0]:.2f}")
        print("\n| engine (MOLS K=15) | step ms (median of runs) | wall s per run | top-1 |")
        print("| --- | --- | --- | --- |")
        med = {}
        for engine, runs in results.items():
            med[engine] = statistics.median(r["step_s"] for r in runs)
            wall = statistics.median(r["wall_s"] for r in runs)
            top1 = runs[-1]["top1"]
            print(f"| {engine} | {med[engine] * 1e3:.1f} | {wall:.1f} | {top1:.4f} |")
        wall_ratio = statistics.median(
            r["wall_s"] for r in results["torchrun"]
        ) / statistics.median(r["wall_s"] for r in results["simulate"])
        print(
            f"\nsimulate is {med['torchrun'] / med['simulate']:.1f}x faster per step than torchrun "
            f"(whole command: {wall_ratio:.1f}x); same final accuracy: "
            f"{results['torchrun'][-1]['top1'] == results['simulate'][-1]['top1']}"
        )

        folder = Path(tmp) / "large"
        print("large design: simulate ...", file=sys.stderr, flush=True)
        big = _run(train_cmd("simulate", MOLS110, args.large_steps, folder), folder)
        peak = _peak_rss_kib(train_cmd("simulate", MOLS110, 5, Path(tmp) / "large-rss"))
        tiny = ["approach=baseline", "approach.K=1", "batch_size=10", "attack=none", "mode=mean"]
        base = _peak_rss_kib(train_cmd("simulate", tiny, 5, Path(tmp) / "tiny-rss"))
        f, K, load = 121, 110, 11
        honest_mb = f * LENET_DIGITS_D * 4 / 2**20
        stack_mb = K * load * LENET_DIGITS_D * 4 / 2**20
        print(f"\nload average at the end of part 2: {os.getloadavg()[0]:.2f}")
        print(
            "\n| design | steps/s | step ms | peak RSS | above a 1-worker run | (f, d) rows "
            "| (K, l, d) stack |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print(
            f"| mols l=11 r=10 (K=110, f=121), simulate | {1 / big['step_s']:.2f} | "
            f"{big['step_s'] * 1e3:.0f} | {peak / 1024:.0f} MiB | {(peak - base) / 1024:.0f} MiB "
            f"| {honest_mb:.0f} MiB | {stack_mb:.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
