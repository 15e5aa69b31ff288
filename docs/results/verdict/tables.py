"""The verdict of +experiment=verdict: does redundancy keep its advantage when honest
gradients disagree, when the attack optimises against the rule, and when the server can
catch liars? Tables and heatmaps from the runs, or from the committed runs archive:

    python docs/results/verdict/tables.py docs/results/verdict/runs.jsonl.gz   # here
    python docs/results/verdict/tables.py docs/results/verdict/runs.jsonl.gz /tmp/again
    python docs/results/verdict/tables.py runs/verdict300 docs/results/verdict/first_pass \
        --steps 300                                                    # the first pass

From run folders it first merges their complete runs into the output folder's archive
(``runs.jsonl.gz``: every run's config and evaluations; ``sweep.py`` merges each piece
of the sweep as it ends) and computes from that; then, from either source,
``tails.csv`` (one row per run: its setting, the last 5 evaluations' top-1 and their
mean) and:

- ``worst.csv``: per arm, files, rule and q, each attack's mean over the seeds of the
  run's accuracy (the mean top-1 of its last 5 evaluations), the worst attack (the
  lowest mean: ByzFL's protocol) and its per-seed accuracies;
- ``paired.csv`` and ``verdict.md``: paired differences of the worst-case accuracies,
  seed by seed (the same seed is the same initial model and the same batches in every
  arm), with their 95 % t intervals: MOLS against DETOX and against the baseline, DETOX
  against the baseline, and what detection changes for MOLS and for DETOX. A comparison
  whose two sides are, seed for seed, the same numbers as an earlier one's is counted
  once (distinct comparisons only); ``*`` marks an interval that excludes 0, ``(m)`` one
  with an end within 1 point of 0 (marginal: a shift of under a point would change
  whether it excludes 0). No correction for the number of comparisons.
- ``summary.md``: the verdict table, the comparisons counted by sign per files, and
  ``summary_short.md``, its short form over all files (the README's);
- ``worst_vs_q.png`` (each arm's worst-case accuracy, a panel per rule and files) and
  ``paired_vs_q.png`` (the paired differences against q).

Runs still training, or missing, are left out and counted; a cell needs all 5 seeds of
every attack.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAST = 5
STEPS = 600  # the sweep's runs (--steps); runs of twice as many are the plateau check's
TOLERANCE = 0.02  # a run is on its plateau when within 2 points of its 600-step twin
SEEDS = (0, 1, 2, 3, 4)
ATTACKS = ("alie", "ipm", "min_max", "min_sum", "fang", "rev_grad", "constant")
ARMS = ("baseline", "DETOX", "MOLS", "DETOX + detection", "MOLS + detection")
SKEWS = ("iid", "Dir(1)", "Dir(0.1)")
RULES = ("median of means", "multi-Krum")
COMPARISONS = (
    ("MOLS", "DETOX"),
    ("MOLS", "baseline"),
    ("DETOX", "baseline"),
    ("MOLS + detection", "MOLS"),
    ("DETOX + detection", "DETOX"),
    ("MOLS + detection", "DETOX + detection"),
)
MARGIN = 0.01  # an interval ending within 1 point of 0 is marginal


def arm(config: dict) -> str:
    name = {"baseline": "baseline", "draco_lite_attack": "DETOX", "mols": "MOLS"}[
        config["approach.name"]
    ]
    return name + (" + detection" if config.get("detect", "off") != "off" else "")


def skew(config: dict) -> str:
    if config.get("dataset.partition", "iid") == "iid":
        return "iid"
    return f"Dir({config['dataset.alpha']:g})"


def rule(config: dict) -> str:
    if config["mode.name"] == "multi-krum":
        return "multi-Krum"
    return "median of means" if config.get("mode.num_buckets") == 5 else config["mode.name"]


def accuracy(run) -> float | None:
    tops = [e["top1"] for e in run.evals if isinstance(e.get("top1"), int | float)]
    if run.status != "complete" or len(tops) < LAST:
        return None
    return statistics.fmean(tops[-LAST:])


def load(source: Path, out: Path):
    """The runs, from the archive or from run folders (their complete runs are first
    merged into ``out``'s archive, which is then what the tables are computed from: a
    run already there is kept, none is dropped)."""
    from byzshield.report import ARCHIVE, is_archive, read_runs
    from byzshield.report.pieces import merge

    if is_archive(source):
        return read_runs(source)
    return merge(read_runs(source), out / ARCHIVE)[0]


def tails(runs, out: Path) -> None:
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "arm", "files", "rule", "attack", "q", "seed", "final_top1"]
                   + [f"top1_{k}" for k in range(LAST, 0, -1)] + ["tail_mean"])  # fmt: skip
        for r in runs:
            tops = [e["top1"] for e in r.evals][-LAST:]
            c = r.config
            w.writerow([r.path, arm(c), skew(c), rule(c), c["attack.name"], c["adversary.q"],
                        c["seed"], r.final["top1"], *tops, repr(accuracy(r))])  # fmt: skip


def interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """The mean of a[i] - b[i] and its 95 % t interval (the report's own function)."""
    from byzshield.report.paired import paired_interval

    s = paired_interval(a, b)
    return s.mean, s.low, s.high


def cells(runs, steps: int = STEPS):
    """(arm, files, rule, q) -> attack -> seed -> accuracy, and the no-attack reference."""
    grid: dict = defaultdict(lambda: defaultdict(dict))
    clean: dict = defaultdict(dict)
    for r in runs:
        a = accuracy(r)
        if a is None or r.max_steps != steps:  # a plateau-check run
            continue
        c = r.config
        key = (arm(c), skew(c), rule(c), c["adversary.q"])
        if c["attack.name"] == "none":
            clean[(arm(c), skew(c), rule(c))][c["seed"]] = a
        else:
            grid[key][c["attack.name"]][c["seed"]] = a
    return grid, clean


def worst(grid) -> dict:
    """(arm, files, rule, q) -> (worst attack, its per-seed accuracies, every attack's mean)."""
    out = {}
    for key, by_attack in grid.items():
        if set(by_attack) != set(ATTACKS) or any(set(v) != set(SEEDS) for v in by_attack.values()):
            continue  # incomplete: left out
        means = {a: statistics.fmean(by_attack[a][s] for s in SEEDS) for a in ATTACKS}
        w = min(ATTACKS, key=lambda a: (means[a], ATTACKS.index(a)))
        out[key] = (w, [by_attack[w][s] for s in SEEDS], means)
    return out


def marginal(low: float, high: float) -> bool:
    """An end of the interval within 1 point of 0: a shift of under a point would change
    whether it excludes 0 (as docs/results/paper_tables.py marks the paper sweep's)."""
    return min(abs(low), abs(high)) <= MARGIN


def fmt(mean: float, low: float, high: float) -> str:
    star = " *" if low > 0 or high < 0 else ""
    mark = " (m)" if marginal(low, high) else ""
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]{star}{mark}"


def compare(worsts: dict):
    """Every paired comparison that both sides have; duplicates (the same numbers on
    both sides, seed for seed, as an earlier comparison) marked."""
    rows, seen = [], {}
    qs = sorted({k[3] for k in worsts})
    for files in SKEWS:
        for r in RULES:
            for q in qs:
                for a, b in COMPARISONS:
                    ka, kb = (a, files, r, q), (b, files, r, q)
                    if ka not in worsts or kb not in worsts:
                        continue
                    xa, xb = worsts[ka][1], worsts[kb][1]
                    mean, low, high = interval(xa, xb)
                    sig = (tuple(xa), tuple(xb))
                    rows.append({
                        "files": files, "rule": r, "q": q, "a": a, "b": b,
                        "attack_a": worsts[ka][0], "attack_b": worsts[kb][0],
                        "acc_a": statistics.fmean(xa), "acc_b": statistics.fmean(xb),
                        "diff": mean, "low": low, "high": high,
                        "distinguishable": low > 0 or high < 0,
                        "marginal": marginal(low, high),
                        "duplicate_of": seen.get(sig, ""),
                    })  # fmt: skip
                    seen.setdefault(sig, f"{a} vs {b}, {files}, {r}, q={q}")
    return rows


def plateau_md(runs, steps: int = STEPS) -> str:
    """Each plateau-check run (2 x ``steps``) against its twin of ``steps`` (same arm, files,
    rule, q, attack and seed): the mean gap per arm, files and q, and the largest. When
    the longer run continues the same schedule, its first ``steps`` steps are its twin's:
    their evaluations are compared too."""
    by_key: dict = {}
    for r in runs:
        if accuracy(r) is None:
            continue
        c = r.config
        key = (arm(c), skew(c), rule(c), c["adversary.q"], c["attack.name"], c["seed"])
        by_key.setdefault(key, {})[r.max_steps] = r
    pairs: dict = defaultdict(list)
    continued = same_start = 0
    for key, twins in by_key.items():
        if steps in twins and 2 * steps in twins:
            short, long = twins[steps], twins[2 * steps]
            pairs[key[:4]].append((key[4], accuracy(short), accuracy(long)))
            lr_step = long.config.get("lr_step")
            if short.config.get("lr_step") == lr_step:
                continued += 1
                start = [(e["step"], e["top1"]) for e in long.evals if e["step"] <= steps]
                same_start += start == [(e["step"], e["top1"]) for e in short.evals]
    if not pairs:
        return f"No plateau-check run has its {steps}-step twin yet.\n"
    total = sum(len(xs) for xs in pairs.values())
    if continued == total:
        how = (
            f"on the same schedule continued (the learning rate decayed every "
            f"{lr_step} steps throughout)"
        )
    else:
        how = "with the same final learning rate"
    lines = [
        f"Plateau check: the mean top-1 % of the last {LAST} evaluations of each run of "
        f"{steps} steps against the same run (arm, files, rule, q, attack, seed) trained "
        f"{2 * steps} steps {how}; on its plateau when "
        f"within {100 * TOLERANCE:.0f} points.",
        "",
        f"| arm | files | rule | q | attacks | runs | top-1 %, {steps} steps | "
        f"top-1 %, {2 * steps} steps "
        "| gap (mean) | largest gap | on plateau |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    worst_gap = 0.0
    for key in sorted(pairs, key=lambda k: (ARMS.index(k[0]), SKEWS.index(k[1]), k[2], k[3])):
        xs = pairs[key]
        gaps = [b - a for _, a, b in xs]
        largest = max(gaps, key=abs)
        worst_gap = max(worst_gap, abs(largest), key=abs)
        attacks = " ".join(sorted({x[0] for x in xs}))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {attacks} | {len(xs)} | "
            f"{100 * statistics.fmean(a for _, a, _ in xs):.1f} | "
            f"{100 * statistics.fmean(b for _, _, b in xs):.1f} | "
            f"{100 * statistics.fmean(gaps):+.1f} | {100 * largest:+.1f} | "
            f"{sum(abs(g) <= TOLERANCE for g in gaps)}/{len(xs)} |"
        )
    lines += ["", f"{total} pairs; the largest gap of any run is {100 * worst_gap:.1f} points."]
    if continued == total:
        lines[-1] += (
            f" In {same_start} of the {total} pairs the longer run's evaluations up to step "
            f"{steps} are its twin's, bit for bit (the same steps)."
        )
    return "\n".join(lines) + "\n"


def verdict_md(worsts: dict, rows: list[dict], clean: dict) -> str:
    qs = sorted({k[3] for k in worsts})
    lines = [
        "Worst-case top-1 % (the lowest mean over the 7 attacks; its attack in brackets) "
        "and paired differences in points (95 % interval over 5 seeds; `*` excludes 0, "
        "`(m)` has an end within 1 point of 0; no correction for the number of comparisons).",
        "",
    ]
    for files in SKEWS:
        for r in RULES:
            present = [q for q in qs if all((a, files, r, q) in worsts for a in ARMS)]
            if not present:
                continue
            ref = ", ".join(
                f"{a} {100 * statistics.fmean(clean[(a, files, r)].values()):.1f}"
                for a in ("baseline", "DETOX", "MOLS")
                if len(clean.get((a, files, r), {})) == len(SEEDS)
            )
            lines += [f"**{files}, {r}** (no attack: {ref or 'not run'})", ""]
            head = ["q", *ARMS, *(f"{a} - {b}" for a, b in COMPARISONS)]
            lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            for q in present:
                accs = [
                    f"{100 * statistics.fmean(worsts[(a, files, r, q)][1]):.1f} "
                    f"({worsts[(a, files, r, q)][0]})"
                    for a in ARMS
                ]
                diffs = []
                for a, b in COMPARISONS:
                    row = next(
                        x for x in rows
                        if (x["files"], x["rule"], x["q"], x["a"], x["b"]) == (files, r, q, a, b)
                    )  # fmt: skip
                    text = fmt(row["diff"], row["low"], row["high"])
                    diffs.append(text + (" (dup)" if row["duplicate_of"] else ""))
                lines.append("| " + " | ".join([str(q), *accs, *diffs]) + " |")
            lines.append("")
    return "\n".join(lines)


def summary_md(rows: list[dict], by_files: bool = True) -> str:
    """The verdict table: per comparison (and files, ``by_files``), the distinct
    comparisons, how many favour each side with an interval clear of 0, and the largest
    difference each way, with its interval, rule (files) and q. ``by_files=False`` is the
    README's short form."""
    head = ["comparison (A - B)", *(["files"] if by_files else []), "distinct cells",
            "A ahead (*)", "B ahead (*)", "marginal (m)", "largest for A",
            "largest for B"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def best(xs, sign):
        if not xs:
            return "—"
        x = max(xs, key=lambda x: sign * x["diff"])
        where = f"{'MoM' if x['rule'] == 'median of means' else 'multi-Krum'}, "
        where += "" if by_files else f"{x['files']}, "
        return f"{fmt(x['diff'], x['low'], x['high'])} ({where}q={x['q']})"

    for a, b in COMPARISONS:
        for files in SKEWS if by_files else [None]:
            mine = [
                x for x in rows
                if (x["a"], x["b"]) == (a, b) and files in (None, x["files"])
                and not x["duplicate_of"]
            ]  # fmt: skip
            if not mine:
                continue
            up = [x for x in mine if x["distinguishable"] and x["diff"] > 0]
            down = [x for x in mine if x["distinguishable"] and x["diff"] < 0]
            lines.append(
                f"| {a} - {b} | "
                + (f"{files} | " if by_files else "")
                + f"{len(mine)} | {len(up)} | {len(down)} | "
                f"{sum(x['marginal'] for x in mine)} | {best(up, 1)} | {best(down, -1)} |"
            )
    dup = sum(bool(x["duplicate_of"]) for x in rows)
    lines.append("")
    lines.append(
        f"{len(rows)} comparisons, {len(rows) - dup} distinct (a comparison whose two sides "
        "are, seed for seed, the numbers of an earlier one is counted once); each at 95 % "
        "with no correction for their number."
    )
    return "\n".join(lines) + "\n"


def heatmaps(worsts: dict, rows: list[dict], out: Path, steps: int = STEPS) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    qs = sorted({k[3] for k in worsts})
    fig, axes = plt.subplots(
        len(RULES), len(SKEWS), figsize=(4.2 * len(SKEWS), 3.6 * len(RULES)), squeeze=False,
        gridspec_kw={"hspace": 0.45},
    )  # fmt: skip
    for i, r in enumerate(RULES):
        for j, files in enumerate(SKEWS):
            ax = axes[i][j]
            grid = [
                [100 * statistics.fmean(worsts[(a, files, r, q)][1])
                 if (a, files, r, q) in worsts else math.nan for q in qs]
                for a in ARMS
            ]  # fmt: skip
            image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            for y, line in enumerate(grid):
                for x, v in enumerate(line):
                    if math.isnan(v):  # a cell whose runs are not all in yet
                        ax.text(x, y, "not run yet", ha="center", va="center", fontsize=7,
                                color="grey")  # fmt: skip
                    else:
                        ax.text(x, y, f"{v:.0f}", ha="center", va="center", fontsize=8,
                                color="white" if v < 55 else "black")  # fmt: skip
            ax.set_xticks(range(len(qs)), [str(q) for q in qs])
            ax.set_yticks(range(len(ARMS)), ARMS if j == 0 else [""] * len(ARMS))
            ax.set_xlabel("Byzantine workers q")
            ax.set_title(f"{r}, files {files}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="worst-case top-1 %")
    fig.suptitle(f"Each arm's worst attack (MNIST-1D, K = 15, 5 seeds, {steps} steps)")
    fig.savefig(out / "worst_vs_q.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(
        len(RULES), len(SKEWS), figsize=(4.2 * len(SKEWS), 3.6 * len(RULES)),
        squeeze=False, sharey=True, gridspec_kw={"hspace": 0.45},
    )  # fmt: skip
    shown = COMPARISONS[:2] + COMPARISONS[3:5]
    colours = ["#1f77b4", "#9467bd", "#08306b", "#b35806"]
    for i, r in enumerate(RULES):
        for j, files in enumerate(SKEWS):
            ax = axes[i][j]
            ax.axhline(0, color="black", linewidth=0.8)
            for k, ((a, b), colour) in enumerate(zip(shown, colours, strict=True)):
                pts = [
                    x for x in rows if (x["files"], x["rule"], x["a"], x["b"]) == (files, r, a, b)
                ]
                if not pts:
                    continue
                xs = [x["q"] + 0.08 * (k - 1.5) for x in pts]
                ys = [100 * x["diff"] for x in pts]
                err = [[100 * (x["diff"] - x["low"]) for x in pts],
                       [100 * (x["high"] - x["diff"]) for x in pts]]  # fmt: skip
                ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=2,
                            color=colour, label=f"{a} minus {b}")  # fmt: skip
            ax.set_xticks(qs)
            ax.set_xlim(min(qs) - 0.5, max(qs) + 0.5)  # the offset points stay inside
            ax.set_xlabel("Byzantine workers q")
            if j == 0:
                ax.set_ylabel(f"{r}\npaired difference, points")
            ax.set_title(f"files {files}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"Worst-case accuracy differences with 95 % paired intervals ({steps} steps)")
    fig.savefig(out / "paired_vs_q.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["worst_vs_q.png", "paired_vs_q.png"]


def write(source: Path, out: Path, figures: bool = True, steps: int = STEPS) -> list[str]:
    """Everything from ``source`` (run folders or the archive) into ``out``."""
    runs = load(source, out)
    written = []
    if not source.name.endswith(".jsonl.gz"):
        written.append("runs.jsonl.gz")
    tails([r for r in runs if accuracy(r) is not None], out / "tails.csv")
    written.append("tails.csv")
    grid, clean = cells(runs, steps)
    worsts = worst(grid)
    with open(out / "worst.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arm", "files", "rule", "q", "worst_attack", "worst_mean",
                    *(f"seed_{s}" for s in SEEDS), *(f"mean_{a}" for a in ATTACKS)])  # fmt: skip
        for key in sorted(worsts, key=lambda k: (ARMS.index(k[0]), SKEWS.index(k[1]),
                                                 RULES.index(k[2]), k[3])):  # fmt: skip
            attack, seeds, means = worsts[key]
            w.writerow([*key, attack, repr(statistics.fmean(seeds)), *map(repr, seeds),
                        *(repr(means[a]) for a in ATTACKS)])  # fmt: skip
    rows = compare(worsts)
    with open(out / "paired.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["files"])
        w.writeheader()
        w.writerows({k: repr(v) if isinstance(v, float) else v for k, v in x.items()}
                    for x in rows)  # fmt: skip
    (out / "verdict.md").write_text(verdict_md(worsts, rows, clean))
    (out / "summary.md").write_text(summary_md(rows))
    (out / "summary_short.md").write_text(summary_md(rows, by_files=False))
    (out / "plateau.md").write_text(plateau_md(runs, steps))
    written += [
        "worst.csv",
        "paired.csv",
        "verdict.md",
        "summary.md",
        "summary_short.md",
        "plateau.md",
    ]
    if figures and worsts:
        written += heatmaps(worsts, rows, out, steps)
    missing = sum(1 for v in grid.values() for a in v.values() for s in SEEDS if s not in a)
    print(f"{len(runs)} runs; {len(worsts)} complete cells; {len(rows)} comparisons, "
          f"{sum(not x['duplicate_of'] for x in rows)} distinct; wrote {', '.join(written)}"
          + (f"; {missing} runs of started cells missing" if missing else ""))  # fmt: skip
    return written


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="runs/verdict, or a runs.jsonl.gz archive")
    parser.add_argument("out", type=Path, nargs="?", default=HERE, help="default: here")
    parser.add_argument(
        "--steps", type=int, default=STEPS,
        help=f"the sweep's run length (default {STEPS}; twice it: the plateau check)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.source, args.out, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
