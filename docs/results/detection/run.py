"""Certified detection, measured: adversary x placement x relabelling on MNIST-1D at
K = 15, each with detect=off and detect=exclude over 5 paired seeds.

    OMP_NUM_THREADS=1 python docs/results/detection/run.py            # train, then the tables
    python docs/results/detection/run.py --tables-only                # re-read the runs

Resumable: the runs live in ``runs/detection`` (``--root``); rerunning trains only what
is unfinished (the lockstep engine resumes each run from its checkpoint and leaves
finished ones alone) and rewrites ``results.csv`` and ``results.md`` here. About 25
CPU-minutes for the whole grid on one core of a shared 2-core machine (``threads=1``).

The grid (every run MNIST-1D, the 1-D CNN, batch 150, lr 0.1 decayed by 0.96 every 25
steps, momentum 0.9, the rule told f = c_max(q), q = 3 Byzantine workers of each
placement's worst case, ``outside_guarantee=true``):

- placements: MOLS l=5 r=3 with the median of means over 5 buckets, DETOX K=15 r=3 with
  the median (its worst-case strategy, groups filled first), and the baseline K=15
  with the median (r = 1: no evidence, so detect=exclude changes no bit of it);
- adversaries (:data:`ADVERSARIES`): the worker-side attacks that lie on every file
  they hold (reversed gradient, constant, label flip, the backdoor), the omniscient
  ALIE, IPM and Min-Max lying only on the files they win (``adversary.lie_on=won``),
  and ALIE that also evades detection (``adversary.evade=true``; with detect=off there
  is nothing to evade, so its off column is ALIE's own runs);
- ``placement.relabel`` none and step.

To add an attack, add a line to :data:`ADVERSARIES` and rerun: only its runs train.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ADVERSARIES: dict[str, tuple[str, ...]] = {
    "rev_grad": ("attack=rev_grad",),
    "constant": ("attack=constant",),
    "label_flip": ("attack=label_flip",),
    "alie (won)": ("attack=alie", "adversary.lie_on=won"),
    "ipm (won)": ("attack=ipm", "adversary.lie_on=won"),
    "evade (alie, won)": ("attack=alie", "adversary.lie_on=won", "adversary.evade=true"),
    "backdoor": ("attack=backdoor",),
    "min_max (won)": ("attack=min_max", "adversary.lie_on=won"),
}
"""Adversary name -> its overrides. A name's runs are ``<root>/<slug>/...``."""

PLACEMENTS: dict[str, tuple[str, ...]] = {
    "MOLS": ("approach=mols", "approach.l=5", "approach.r=3", "mode.num_buckets=5"),
    "DETOX": ("approach=draco_lite_attack", "approach.K=15", "approach.r=3"),
    "baseline": ("approach=baseline", "approach.K=15"),
}

COMMON = (
    "dataset=mnist1d",
    "network=cnn1d",
    "batch_size=150",
    "lr=0.1",
    "lr_step=25",
    "gamma=0.96",
    "momentum=0.9",
    "mode=coord-median",
    "adversary.q=3",
    "outside_guarantee=true",
    "threads=1",
    "log_every=100000",
)
SEEDS = range(5)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").replace("__", "_")


def jobs(root: Path, steps: int) -> list[tuple[list[str], Path]]:
    """Every run of the grid: (overrides, folder)."""
    out = []
    for adversary, attack in ADVERSARIES.items():
        evades = "adversary.evade=true" in attack
        for placement, design in PLACEMENTS.items():
            relabels = ("none",) if placement == "baseline" else ("none", "step")
            for relabel in relabels:
                for detect in ("off", "exclude"):
                    if evades and detect == "off":
                        continue  # nothing to evade: ALIE (won)'s own runs
                    for seed in SEEDS:
                        ovs = [*COMMON, *design, *attack, f"max_steps={steps}"]
                        ovs += [f"eval_freq={steps // 3}", f"seed={seed}"]
                        ovs += [f"placement.relabel={relabel}", f"detect={detect}"]
                        folder = root / slug(adversary) / placement / relabel / detect / str(seed)
                        out.append((ovs, folder))
    return out


def train(root: Path, steps: int) -> None:
    from byzshield.engines.lockstep import lockstep

    todo = jobs(root, steps)
    print(f"{len(todo)} runs under {root} (finished ones are skipped)", flush=True)
    for placement in PLACEMENTS:  # one lockstep group per placement
        group = [(o, f) for o, f in todo if f.parts[-4] == placement]
        lockstep(group, threads=1, quiet=False)


def load(root: Path) -> dict[str, object]:
    """Every run under ``root`` (run folders, read by the report's reader; their archive
    is then written here) or in the runs archive ``root`` (``runs.jsonl.gz``, what this
    script commits), by its folder relative to the grid's root:
    ``<adversary>/<placement>/<relabel>/<detect>/<seed>``."""
    from byzshield.report import ARCHIVE, is_archive, read_runs, write_archive

    runs = read_runs(root)
    if not is_archive(root):
        write_archive(runs, HERE / ARCHIVE)
    return {"/".join(Path(r.path).parts[-5:]): r for r in runs if r.status == "complete"}


def read(runs: dict, key: str) -> dict | None:
    """A finished run's numbers: final top-1, the selection's workers, the mean
    distorted files per step, and the step each worker was first certain."""
    run = runs.get(key)
    if run is None:
        return None
    return {
        "top1": run.final["top1"],
        "byzantine": set(run.info["selection"]["workers"]),
        "distorted": run.distorted_frac * run.info["f"],
        "caught": run.caught,
    }


def paired(a: list[float], b: list[float]) -> str:
    from byzshield.report.paired import paired_interval

    s = paired_interval(a, b)
    if s.low is None:
        return f"{100 * s.mean:+.1f}"
    star = " *" if s.distinguishable else ""
    return f"{100 * s.mean:+.1f} [{100 * s.low:+.1f}, {100 * s.high:+.1f}]{star}"


def median_or(values: list[int], n: int) -> str:
    """The median over seeds, with how many seeds got there (of n)."""
    if not values:
        return "never"
    med = statistics.median(values)
    text = f"{med:g}"
    return text if len(values) == n else f"{text} ({len(values)}/{n} seeds)"


def tables(root: Path, steps: int) -> int:
    rows, missing = [], 0
    everything = load(root)
    for adversary, attack in ADVERSARIES.items():
        evades = "adversary.evade=true" in attack
        for placement in PLACEMENTS:
            relabels = ("none",) if placement == "baseline" else ("none", "step")
            for relabel in relabels:
                runs = {}
                for detect in ("off", "exclude"):
                    source = "alie_won" if evades and detect == "off" else slug(adversary)
                    found = [read(everything, f"{source}/{placement}/{relabel}/{detect}/{s}")
                             for s in SEEDS]  # fmt: skip
                    missing += sum(r is None for r in found)
                    runs[detect] = [r for r in found if r is not None]
                off, on = runs["off"], runs["exclude"]
                if len(off) != len(SEEDS) or len(on) != len(SEEDS):
                    continue
                q = len(on[0]["byzantine"])
                first = [min(r["caught"].values()) for r in on if r["caught"]]
                every = [
                    max(r["caught"][w] for w in r["byzantine"])
                    for r in on
                    if r["byzantine"] <= set(r["caught"])
                ]
                none = "no evidence (r = 1)" if placement == "baseline" else None
                caught = statistics.fmean(len(r["caught"]) for r in on)
                false = sum(len(set(r["caught"]) - r["byzantine"]) for r in on)
                rows.append(
                    {
                        "adversary": adversary,
                        "placement": placement,
                        "relabel": relabel,
                        "first_catch": none or median_or(first, len(on)),
                        "all_caught": none or median_or(every, len(on)),
                        "caught_per_run": f"{caught:.1f}/{q}",
                        "false_accusations": false,
                        "distorted_off": f"{statistics.fmean(r['distorted'] for r in off):.2f}",
                        "distorted_exclude": f"{statistics.fmean(r['distorted'] for r in on):.2f}",
                        "top1_off": f"{100 * statistics.fmean(r['top1'] for r in off):.1f}",
                        "top1_exclude": f"{100 * statistics.fmean(r['top1'] for r in on):.1f}",
                        "exclude_minus_off": paired(
                            [r["top1"] for r in on], [r["top1"] for r in off]
                        ),
                    }
                )
    with open(HERE / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["adversary"])
        writer.writeheader()
        writer.writerows(rows)
    header = [
        "adversary",
        "placement",
        "relabel",
        "steps to first catch",
        "steps to all q caught",
        "caught per run",
        "false accusations",
        "distorted / step, off",
        "distorted / step, exclude",
        "top-1 off",
        "top-1 exclude",
        "exclude - off [95 %]",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    (HERE / "results.md").write_text(
        f"<!-- written by docs/results/detection/run.py ({steps} steps, seeds "
        f"{SEEDS.start}..{SEEDS.stop - 1}) -->\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))
    if missing:
        print(f"{missing} runs are not finished yet; their rows are left out", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/detection"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.tables_only:
        train(args.root, args.steps)
    return tables(args.root, args.steps)


if __name__ == "__main__":
    sys.exit(main())
