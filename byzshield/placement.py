"""``python -m byzshield.placement [overrides]``: a placement's worst-case table.

python -m byzshield.placement approach=mols approach.l=7 approach.r=5 q_max=13
python -m byzshield.placement approach=rama_two format=json
python -m byzshield.placement approach=draco_lite approach.K=15 approach.r=3
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from byzshield.config.overrides import UsageError, approach_params, compose, group_options

__all__ = ["main", "placement_main"]

PLACEMENT_HELP = """\
usage: python -m byzshield.placement [KEY=VALUE ...]

Prints, for q = 0..q_max Byzantine workers, the most files an omniscient adversary
can distort (c_max), eps = c_max / f, DETOX's and the baseline's eps for the same K,
the upper bound, whether c_max is certified optimal, and the time taken.

Config (Hydra overrides, composed from conf/placement.yaml and conf/approach/):
  approach=NAME        {approaches}
  approach.l, approach.r   mols: order l (prime power), r <= l-1 squares
  approach.m, approach.s   rama_one (m < s) / rama_two (m >= s, s | m), s prime
  approach.K, approach.r   baseline (K), draco_lite / draco_lite_attack / maj_vote
  approach.path        custom: JSON file [[files of worker 0], ...]
  q_max=INT            largest q to tabulate (default K // 2)
  format=table|json    json: one object {{K, f, r, load, rows: [...]}}
  show_assignment=true also print which files each worker holds
  time_budget=SECONDS  search budget (default 60); past it rows say certified: false

Several placements side by side (the paper's distortion tables):
  python -m byzshield.placement +experiment=distortion
  designs=[{{approach: NAME, ...}}, ...]   e.g. [{{approach: mols, l: 5, r: 3}}]: one eps
                       column per design, DETOX's and the baseline's at each K;
                       NAME: {designs}
  out=DIR              also write distortion.md, distortion.csv and distortion.png
                       (matplotlib) there
"""


class _Progress:
    """Progress on stderr for searches that take longer than a second."""

    def __init__(self, label: str):
        self.label = label
        self.start = time.monotonic()
        self.shown = False
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < 1.0 or (
            now - self.last < (0.2 if self.tty else 5.0) and done < total
        ):
            return
        self.last = now
        self.shown = True
        end = "\r" if self.tty and done < total else "\n"
        print(
            f"{self.label}: {done}/{total} ({now - self.start:.0f} s)",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.shown and self.tty:
            print(file=sys.stderr)


def _check_options(cfg, K: int) -> tuple[int, float]:
    q_max = cfg.q_max if cfg.q_max is not None else K // 2
    if isinstance(q_max, bool) or not isinstance(q_max, int) or not 0 <= q_max <= K:
        raise UsageError(f"q_max must be an integer in 0..K={K}, got {q_max!r}")
    budget = cfg.time_budget
    if (
        isinstance(budget, bool)
        or not isinstance(budget, int | float)
        or not math.isfinite(budget)
        or budget <= 0
    ):
        raise UsageError(f"time_budget must be a finite number of seconds > 0, got {budget!r}")
    if not isinstance(cfg.show_assignment, bool):
        raise UsageError(f"show_assignment must be true or false, got {cfg.show_assignment!r}")
    return q_max, float(budget)


def _build_designs(cfg) -> list:
    """The placements of ``designs``, each a mapping {approach: NAME, <its params>}."""
    from byzshield.config import APPROACHES, build_placement

    if not isinstance(cfg.designs, Sequence) or isinstance(cfg.designs, str):
        raise UsageError(f"designs must be a list of {{approach: NAME, ...}}, got {cfg.designs!r}")
    built = []
    for i, entry in enumerate(cfg.designs):
        params = dict(entry) if isinstance(entry, Mapping) else None
        name = params.pop("approach", None) if params is not None else None
        if name not in APPROACHES:
            raise UsageError(
                f"designs[{i}] needs approach: one of {' | '.join(APPROACHES)}, got {entry!r}"
            )
        try:
            placement = build_placement(name, **params)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"designs[{i}] ({name}): {exc}") from None
        label = f"{name}({', '.join(f'{k}={v}' for k, v in params.items())})"
        built.append((label, placement))
    if not built:
        raise UsageError("designs is empty: give at least one {approach: NAME, ...}")
    return built


def _distortion(cfg) -> int:
    """``designs=[...]``: c_max(q) / f of several placements with DETOX's and the
    baseline's at each K, as a Markdown table on stdout (and files under ``out``)."""
    from byzshield.cli.launcher import check_out_dir
    from byzshield.design.search import detox_eps, worst_case_table
    from byzshield.report import EpsCurve

    if cfg.out is not None:  # before the searches, which can take minutes
        try:
            check_out_dir(str(cfg.out), "out")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    curves = []
    for label, placement in _build_designs(cfg):
        K, f = placement.num_workers, placement.num_files
        q_max, budget = _check_options(cfg, K)
        progress = _Progress(f"searching {label}")
        rows = worst_case_table(placement, q_max, time_budget=budget, progress=progress)
        progress.close()
        detox_r, eps_detox = detox_eps(K, placement.replication, q_max)
        curves.append(EpsCurve(label, K, f, rows, detox_r, eps_detox, []))

    columns: dict[str, dict[int, str]] = {}  # header -> {q: cell}
    records = []
    for c in curves:
        columns[f"{c.label} K={c.K} f={c.f}"] = {
            r.q: f"{r.c_max / c.f:.3f}"
            + ("" if r.certified else f" (<= {r.upper_bound / c.f:.3f})")
            for r in c.rows
        }
        if c.detox_eps is not None:
            columns.setdefault(
                f"DETOX K={c.K} r={c.detox_r}",
                {r.q: f"{c.detox_eps[r.q]:.3f}" for r in c.rows},
            )
        columns.setdefault(f"baseline K={c.K}", {r.q: f"{r.q / c.K:.3f}" for r in c.rows})
        for r in c.rows:
            records.append(
                [
                    c.label,
                    c.K,
                    c.f,
                    r.q,
                    r.c_max,
                    f"{r.c_max / c.f:.6g}",
                    "" if c.detox_eps is None else f"{c.detox_eps[r.q]:.6g}",
                    f"{r.q / c.K:.6g}",
                    r.certified,
                    r.upper_bound,
                ]
            )
    qs = sorted({q for cells in columns.values() for q in cells})
    lines = [
        "| q | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
        *(
            f"| {q} | " + " | ".join(cells.get(q, "") for cells in columns.values()) + " |"
            for q in qs
        ),
    ]
    table = "\n".join(lines)
    print("eps(q) = c_max(q) / f: the largest fraction of files q Byzantine workers can distort")
    print(table)
    if cfg.out is None:
        return 0
    import csv

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    note = (
        "eps(q) = c_max(q) / f, the largest fraction of files that q Byzantine workers can "
        "distort (a file is distorted when they hold a strict majority of its copies); "
        "DETOX and the baseline at the same K for comparison. A cell (<= x) was not "
        "certified within time_budget: the best set found, and the proven bound.\n\n"
    )
    (out / "distortion.md").write_text("# Worst-case distortion\n\n" + note + table + "\n")
    with open(out / "distortion.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "design",
                "K",
                "f",
                "q",
                "c_max",
                "eps",
                "eps_detox",
                "eps_baseline",
                "certified",
                "upper_bound",
            ]
        )
        writer.writerows(records)
    written = ["distortion.md", "distortion.csv"]
    try:
        from byzshield.report import eps_figure, save_figure

        fig = eps_figure(curves)
    except ImportError:
        print("note: no plot: matplotlib is not installed (pip install 'byzshield[report]')")
    else:
        save_figure(fig, out / "distortion.png")  # laid out by the figure itself
        written.append("distortion.png")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def placement_main(argv: Sequence[str]) -> int:
    """``python -m byzshield.placement``; returns the exit status."""
    from byzshield.config import APPROACHES, build_placement
    from byzshield.design.search import detox_eps, worst_case_table

    if any(a in ("-h", "--help", "help") for a in argv):
        approaches = " | ".join(group_options("approach"))  # what approach=NAME composes
        print(PLACEMENT_HELP.format(approaches=approaches, designs=" | ".join(APPROACHES)))
        return 0
    try:
        cfg = compose("placement", argv)
        if cfg.designs:
            return _distortion(cfg)
        name, params = approach_params(cfg)
        placement = build_placement(name, **params)
        K = placement.num_workers
        q_max, budget = _check_options(cfg, K)
        if cfg.format not in ("table", "json"):
            raise UsageError(f"format must be table or json, got {cfg.format!r}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    progress = _Progress("searching")
    rows = worst_case_table(placement, q_max, time_budget=budget, progress=progress)
    progress.close()
    detox_r, eps_detox = detox_eps(K, placement.replication, q_max)
    f = placement.num_files

    if cfg.format == "json":
        out = {
            "approach": name,
            "params": params,
            "K": K,
            "f": f,
            "r": placement.replication,
            "load": placement.load,
            "rows": [
                {
                    "q": row.q,
                    "c_max": row.c_max,
                    "eps": row.c_max / f,
                    "eps_detox": None if eps_detox is None else eps_detox[row.q],
                    "eps_baseline": row.q / K,
                    "certified": row.certified,
                    "byzantine": list(row.byzantine),
                    "bound": row.upper_bound,
                    "naive_bound": row.naive_bound,
                    "spectral_bound": row.spectral_bound,
                    "seconds": round(row.seconds, 6),
                }
                for row in rows
            ],
        }
        if cfg.show_assignment:
            out["worker_files"] = [list(fs) for fs in placement.worker_files]
        print(json.dumps(out, indent=2))
        return 0

    print(placement.describe())
    detox_name = "eps_detox" if detox_r is None else f"eps_detox(r={detox_r})"
    head = (
        f"{'q':>3} {'c_max':>5} {'eps':>6} {detox_name:>15} {'eps_base':>8} "
        f"{'bound':>5} {'certified':>9} {'seconds':>8}  byzantine (0-based)"
    )
    print(head)
    for row in rows:
        d = "-" if eps_detox is None else f"{eps_detox[row.q]:.3f}"
        print(
            f"{row.q:>3} {row.c_max:>5} {row.c_max / f:>6.3f} {d:>15} {row.q / K:>8.3f} "
            f"{row.upper_bound:>5} {'yes' if row.certified else 'NO':>9} {row.seconds:>8.4f}  "
            f"{list(row.byzantine)}"
        )
    if not all(row.certified for row in rows):
        print("rows with certified NO: best set found within time_budget; c_max <= bound")
    if cfg.show_assignment:
        print("worker -> files")
        for w, fs in enumerate(placement.worker_files):
            print(f"{w:>4}: {list(fs)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m byzshield.placement`` and ``byzshield-placement``."""
    from byzshield.cli.launcher import quiet_when_stdout_closes

    args = sys.argv[1:] if argv is None else list(argv)
    return quiet_when_stdout_closes(lambda: placement_main(args))


if __name__ == "__main__":
    sys.exit(main())
