"""Soak test: a few thousand steps of the default model; does the server leak or slow down?

    python benchmarks/soak.py                        # simulate engine, 3000 steps
    python benchmarks/soak.py --engine torchrun --steps 2000

Runs the default config (MOLS l=5 r=3, LeNet on digits, worst-case rev_grad q=3) with
checkpoints and evaluations every 500 steps, samples the parameter server's resident
memory (VmRSS) and its peak (VmHWM) from /proc every 2 s, and reads each step's time
from metrics.jsonl. It prints the memory at the start and at the end of training, the
growth in between, the median step time of the first and the last tenth of the run and
a least-squares slope of step time against step.
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


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # KiB
    except OSError:
        pass
    return out


def _server_pid(root: int, folder: Path) -> int | None:
    """The parameter server: the process whose environment says RANK=0 (torchrun), or
    the launched process itself (simulate)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(folder).encode() in cmd and b"torch.distributed.run" not in cmd and b"RANK=0" in env:
            return int(pid)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("simulate", "torchrun"), default="simulate")
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "soak"
        common = [f"max_steps={args.steps}", "eval_freq=500", f"train_dir={folder}"]
        if args.engine == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += ["--nproc-per-node", "16", "-m", "byzshield.train", *common]
        else:
            cmd = [sys.executable, "-m", "byzshield.train", "engine=simulate", *common]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[int, dict]] = []  # (steps done, /proc status)
        metrics = folder / "metrics.jsonl"
        pid = None
        print(f"soak: {args.engine}, {args.steps} steps ...", file=sys.stderr, flush=True)
        while proc.poll() is None:
            time.sleep(2)
            if not metrics.exists():
                continue
            pid = pid if pid and _status(pid) else _server_pid(proc.pid, folder)
            done = sum(1 for line in metrics.read_text().splitlines() if '"event"' not in line)
            status = _status(pid)
            if status:
                samples.append((done, status))
        if proc.returncode != 0:
            print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
            return 1
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    times = [r["step_s"] * 1e3 for r in steps]
    tenth = max(1, len(times) // 10)
    n = len(times)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(times)
    slope = sum((i - mean_x) * (t - mean_y) for i, t in enumerate(times)) / sum(
        (i - mean_x) ** 2 for i in range(n)
    )
    early = [s for d, s in samples if d <= max(50, args.steps // 20)] or samples[:1]
    first, last = early[-1], samples[-1][1]
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    print(f"\n| {args.engine}, {n} steps | start | end | growth |")
    print("| --- | --- | --- | --- |")
    rss0, rss1 = first["VmRSS"] / 1024, last["VmRSS"] / 1024
    hwm0, hwm1 = first["VmHWM"] / 1024, last["VmHWM"] / 1024
    print(f"| server RSS (MiB) | {rss0:.1f} | {rss1:.1f} | {rss1 - rss0:+.1f} |")
    print(f"| server peak RSS (MiB) | {hwm0:.1f} | {hwm1:.1f} | {hwm1 - hwm0:+.1f} |")
    print(
        f"| step ms (median) | {statistics.median(times[:tenth]):.1f} (first tenth) | "
        f"{statistics.median(times[-tenth:]):.1f} (last tenth) | "
        f"{slope * 1000:+.2f} ms per 1000 steps (least squares) |"
    )
    print(f"\nmemory samples: {len(samples)} (every 2 s, from step {samples[0][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
