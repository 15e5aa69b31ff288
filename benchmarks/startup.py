"""Benchmark: a whole simulate run against its own steps, and where the rest goes.

    python benchmarks/startup.py              # 5 alternating repetitions, 200 steps
    python benchmarks/startup.py --quick      # 2 repetitions (about a minute)
    python benchmarks/startup.py --steps 100 --reps 3
    python benchmarks/startup.py --baseline /tmp/old  # and another checkout, alternating

The job is the one of ``benchmarks/peers.py``: MNIST-1D, the 1-D CNN, MOLS K=15,
q=3 worst-case ALIE, trimmed mean, lr 0.1, 200 steps (evaluation and a checkpoint every
50 steps, ``metrics.jsonl`` and TensorBoard events when installed: the command's
defaults). Each repetition runs, in turn and each in a fresh process:

1. ``python -c "import torch"``: the floor any torch program pays;
2. ``python -m byzshield.train JOB``: the command as a user runs it, whole-process CPU
   (user + system, every thread, interpreter exit included) from ``getrusage``;
3. the same command with phase timers (this file's ``--child``): the CPU of each phase
   (``time.process_time``, every thread), exclusive of the phases nested in it.

Goal (issue 31): CPU(2) <= 1.3 x (CPU of the steps in 3 + CPU(1)). The split: import
torch, the other imports (byzshield, Hydra), composing the config, building the run
(data, placement, worst-case search, model, engine), the first step, the other steps,
evaluation, writing (metrics.jsonl, TensorBoard, checkpoints, run.json) and the rest
(Hydra's job set-up, interpreter start and exit). Medians over the repetitions; the
machine is shared, so every figure is printed with its load average.
"""

from __future__ import annotations

import json
import os
import sys
import time

JOB = [
    "dataset=mnist1d",
    "network=cnn1d",
    "attack=alie",
    "mode=trimmed-mean",
    "lr=0.1",
]
"""The job of issue 31 on top of the defaults (MOLS l=5 r=3, q=3 worst case)."""

PHASES = (
    "import torch",
    "other imports",
    "config",
    "build run",
    "first step",
    "steps",
    "evaluation",
    "writing",
    "rest",
)


# ------------------------------------------------------------------- the timed child


class _Clock:
    """Exclusive CPU seconds per phase: a nested phase's time is not its caller's."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.stack: list[list] = []  # [phase, start, nested]

    def wrap(self, owner, attr: str, phase) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            name = phase() if callable(phase) else phase
            self.stack.append([name, time.process_time(), 0.0])
            try:
                return inner(*args, **kwargs)
            finally:
                name, start, nested = self.stack.pop()
                spent = time.process_time() - start
                self.total[name] = self.total.get(name, 0.0) + spent - nested
                if self.stack:
                    self.stack[-1][2] += spent

        setattr(owner, attr, timed)


def _child(out: str, argv: list[str]) -> None:
    """Run ``python -m byzshield.train ARGV`` with phase timers; write the split."""
    import torch  # noqa: F401

    t_torch = time.process_time()  # with the interpreter's start, as `python -c`
    import byzshield.train as train

    t_imports = time.process_time()
    from byzshield.cli import startup
    from byzshield.engines import simulate
    from byzshield.training import loop, records

    clock = _Clock()
    steps = {"n": 0}

    def step_phase() -> str:
        steps["n"] += 1
        return "first step" if steps["n"] == 1 else "steps"

    clock.wrap(startup, "check_train_overrides", "config")
    clock.wrap(train, "build_run", "build run")
    clock.wrap(train, "prepare", "build run")
    clock.wrap(simulate.Run, "build_model", "build run")
    clock.wrap(simulate.SimulateEngine, "__init__", "build run")
    clock.wrap(loop.Trainer, "__init__", "build run")
    clock.wrap(loop.Trainer, "step", step_phase)
    clock.wrap(loop, "evaluate_model", "evaluation")
    clock.wrap(loop, "save_checkpoint", "writing")
    clock.wrap(simulate, "announce", "writing")
    clock.wrap(records.MetricsLog, "write", "writing")
    clock.wrap(records.MetricsLog, "close", "writing")
    sys.argv = ["byzshield.train", *argv]
    code = 0
    try:
        train.cli()
    except SystemExit as exc:
        code = exc.code or 0
    split = {"import torch": t_torch, "other imports": t_imports - t_torch}
    split.update(clock.total)
    with open(out, "w") as fh:
        json.dump(split, fh)
    sys.exit(code)


# -------------------------------------------------------------------------- the parent


def _cpu(cmd: list[str], env: dict, cwd: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``cmd`` run to its end in ``cwd`` (not the checkout:
    ``python -m`` puts its working directory first on sys.path); it must succeed."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    import argparse
    import statistics
    import tempfile
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    p.add_argument("--quick", action="store_true", help="2 repetitions")
    p.add_argument("--threads", help="the run's threads= (default: the command's)")
    p.add_argument("--baseline", help="a byzshield checkout to measure alongside (PYTHONPATH)")
    p.add_argument("--json", help="also write the medians here")
    args = p.parse_args()
    reps = 2 if args.quick else args.reps
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    trees = {"this tree": env}
    if args.baseline:
        trees["baseline"] = dict(env, PYTHONPATH=str(Path(args.baseline).resolve()))
    job = [*JOB, f"max_steps={args.steps}", "log_every=100000"]
    if args.threads:
        job.append(f"threads={args.threads}")
    print(
        f"{args.steps}-step simulate run ({' '.join(JOB)}), {reps} alternating repetitions; "
        f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs",
        flush=True,
    )
    floor: list[float] = []
    whole: dict[str, list[float]] = {t: [] for t in trees}
    walls: dict[str, list[float]] = {t: [] for t in trees}
    splits: dict[str, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(reps):
            floor.append(_cpu([sys.executable, "-c", "import torch"], env, tmp)[0])
            for k, (tree, tree_env) in enumerate(trees.items()):
                train = [sys.executable, "-m", "byzshield.train", *job]
                cpu, wall = _cpu([*train, f"train_dir={tmp}/plain{r}-{k}"], tree_env, tmp)
                whole[tree].append(cpu)
                walls[tree].append(wall)
                out = f"{tmp}/split{r}-{k}.json"
                cmd = [sys.executable, os.path.abspath(__file__), "--child", out, *job]
                timed_cpu, _ = _cpu([*cmd, f"train_dir={tmp}/timed{r}-{k}"], tree_env, tmp)
                split = json.loads(Path(out).read_text())
                split["rest"] = timed_cpu - sum(
                    split.get(k, 0.0) for k in PHASES if k != "rest"
                )  # Hydra's job set-up, interpreter start and exit
                splits[tree].append(split)
                steps = split.get("first step", 0.0) + split.get("steps", 0.0)
                print(
                    f"  rep {r + 1}, {tree}: import torch {floor[-1]:.2f} CPU-s, whole run "
                    f"{cpu:.2f} CPU-s ({wall:.1f} s wall), its steps {steps:.2f}: ratio "
                    f"{cpu / (steps + floor[-1]):.2f} (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    torch_floor = statistics.median(floor)
    summary = {}
    for tree in trees:
        med = {k: statistics.median(s.get(k, 0.0) for s in splits[tree]) for k in PHASES}
        steps = statistics.median(s.get("first step", 0) + s.get("steps", 0) for s in splits[tree])
        ratio = statistics.median(
            w / (s.get("first step", 0) + s.get("steps", 0) + f)
            for w, s, f in zip(whole[tree], splits[tree], floor, strict=True)
        )
        summary[tree] = {
            "split": med,
            "steps": steps,
            "whole": statistics.median(whole[tree]),
            "wall": statistics.median(walls[tree]),
            "ratio": ratio,
        }
    names = list(trees)
    print(f"\nsplit of the timed run (median CPU-s over {reps}):")
    print(f"  {'phase':14s} " + " ".join(f"{t:>10s}" for t in names))
    for k in [*PHASES, "total"]:
        cells = [
            sum(summary[t]["split"].values()) if k == "total" else summary[t]["split"][k]
            for t in names
        ]
        print(f"  {k:14s} " + " ".join(f"{c:10.2f}" for c in cells))
    print(f"\npython -c 'import torch': {torch_floor:.2f} CPU-s")
    for tree in names:
        got = summary[tree]
        verdict = "ok" if got["ratio"] <= 1.3 else "MISSED"
        print(
            f"{tree}: the whole run {got['whole']:.2f} CPU-s ({got['wall']:.1f} s wall), its "
            f"steps {got['steps']:.2f} CPU-s ({got['steps'] / args.steps * 1e3:.1f} ms a step); "
            f"whole / (steps + import torch) = {got['ratio']:.2f} (median of the repetitions' "
            f"ratios; goal <= 1.3: {verdict})"
        )
    print(f"(load average {os.getloadavg()[0]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch_floor, **summary}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3:])
    else:
        main()
