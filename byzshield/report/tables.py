"""The report's tables: report.md, report.csv (one row per group), runs.csv (one row
per run), and pivot.md (``--pivot``, read back from report.csv)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from byzshield.report.eps import EpsCurve
from byzshield.report.groups import Group, Grouping, Summary, _canon, _value_str
from byzshield.report.load import (
    STATUSES,
    TIME_COLUMNS,
    PendingJob,
    RunFolder,
    _number,
    plural,
)
from byzshield.report.names import approach_name
from byzshield.report.where import select

SPREADS = ("ci", "std")
"""What a cell shows beside the mean: the 95 % interval over seeds (``ci``, the default)
or the sample standard deviation (``std``)."""

# --------------------------------------------------------------------------------------
# Cells


def _fmt(stat: Summary, scale: float = 1.0, digits: int = 2, spread: str | None = "ci") -> str:
    """A cell: the mean and, by ``spread``, its 95 % interval ``[low, high]`` or ``± std``
    (None: the mean alone); a single value says ``(n=1)`` instead."""
    if not stat.n:
        return "—"
    mean = f"{stat.mean * scale:.{digits}f}"
    if stat.n == 1:
        return f"{mean} (n=1)" if spread else mean
    if spread is None or stat.std is None:  # no spread asked for, or none known
        return mean
    if spread == "std":
        return f"{mean} ± {stat.std * scale:.{digits}f}"
    return f"{mean} [{stat.low * scale:.{digits}f}, {stat.high * scale:.{digits}f}]"


def spread_text(spread: str) -> str:
    """What the tables' cells and the figures' bars show, in words."""
    if spread == "std":
        return "mean ± sample standard deviation (n - 1) over seeds"
    return "mean [95 % interval] over seeds (Student's t, n - 1 degrees of freedom)"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


# --------------------------------------------------------------------------------------
# Writing


def has_backdoor(runs: Iterable[RunFolder]) -> bool:
    """Whether any run's final evaluation has a backdoor's attack success rate (the
    tables then show it)."""
    return any(_number((r.final or {}).get("backdoor_asr")) for r in runs)


def _runs_csv(runs: Sequence[RunFolder], grouping: Grouping, out: Path) -> None:
    group_of = {id(r): g for g in grouping.groups for r in g.runs}
    asr = has_backdoor(runs)
    header = [
        "path",
        "status",
        "approach",
        "name",
        "mode",
        "attack",
        "q",
        *grouping.extra_keys,
        "seed",
        "steps_done",
        "max_steps",
        "final_top1",
        *(["final_backdoor_asr"] if asr else []),
        "best_top1",
        "last_eval_step",
        "last_eval_top1",
        "train_s",
        "wall_s",
        "distorted_frac",
        "caught",
        *TIME_COLUMNS,
        "outside_guarantee",
        "left_out",
        "config_source",
        "last_modified",
    ]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for g in grouping.groups:
            for r in g.runs:
                assert group_of[id(r)] is g
                last = r.last_eval or {}
                w.writerow(
                    _csv_values(
                        [
                            str(r.path),
                            r.status,
                            g.approach,
                            g.name,
                            g.mode,
                            g.attack,
                            g.q,
                            *g.extras.values(),
                            r.seed,
                            r.steps_done,
                            r.max_steps,
                            (r.final or {}).get("top1"),
                            *([(r.final or {}).get("backdoor_asr")] if asr else []),
                            r.best_top1,
                            last.get("step"),
                            last.get("top1"),
                            r.train_s,
                            r.wall_s,
                            r.distorted_frac,
                            caught_text(r.caught),
                            *(r.time_split.get(k) for k in TIME_COLUMNS),
                            r.outside_guarantee,
                            r.left_out,
                            r.config_source,
                            _utc(r.modified),
                        ]
                    )
                )


def caught_text(caught: dict[int, int]) -> str:
    """When each worker was caught (``detect``): "worker@step" in the order caught, e.g.
    "0@0 11@3"; empty when nobody was (or detection was off)."""
    return " ".join(f"{w}@{s}" for w, s in sorted(caught.items(), key=lambda kv: (kv[1], kv[0])))


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv_values(values: Sequence) -> list:
    return [
        ""
        if v is None
        else (repr(v) if isinstance(v, float) else (str(v).lower() if isinstance(v, bool) else v))
        for v in values
    ]


def _report_csv(grouping: Grouping, stats: list[dict], out: Path) -> None:
    header = [
        "approach",
        "name",
        "mode",
        "attack",
        "q",
        *grouping.extra_keys,
        "runs",
        *(s.replace(" ", "_") for s in STATUSES),
        "seeds",
        "max_steps",
    ]
    measures = [
        "final_top1",
        "tail_top1",
        "best_top1",
        "final_top5",
        "final_test_loss",
        "train_s",
        "wall_s",
        "distorted_frac",
    ]
    if any(st["final_backdoor_asr"].n for st in stats):
        measures.insert(5, "final_backdoor_asr")
    for m in measures:
        header += [f"{m}_{part}" for part in ("mean", "std", "n", "low", "high")]
    header += [f"{k}_mean" for k in TIME_COLUMNS]
    header += ["outside_guarantee", "left_out", "status"]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for g, s in zip(grouping.groups, stats, strict=True):
            row = [g.approach, g.name, g.mode, g.attack, g.q, *g.extras.values(), len(g.runs)]
            row += [len(g.with_status(st)) for st in STATUSES]
            row += [" ".join(_value_str(r.seed) for r in g.runs), _max_steps(g)]
            for m in measures:
                row += [s[m].mean, s[m].std, s[m].n, s[m].low, s[m].high]
            row += [s[k].mean for k in TIME_COLUMNS]
            row += [any(r.outside_guarantee for r in g.runs), sum(r.left_out for r in g.runs)]
            row.append(g.status_text())
            w.writerow(_csv_values(row))


def _max_steps(g: Group) -> str:
    values = sorted({r.max_steps for r in g.runs if r.max_steps is not None})
    return "/".join(map(str, values)) if values else "?"


def _markdown(
    dirs: Sequence[Path],
    runs: Sequence[RunFolder],
    grouping: Grouping,
    stats: list[dict],
    pending: list[PendingJob],
    sweep_sizes: dict[Path, int | None],
    curves: list[EpsCurve],
    plots: list[str],
    notes: list[str],
    stale_after: float,
    last: int = 1,
    spread: str = "ci",
) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    out = io.StringIO()
    out.write("# Training report\n\n")
    out.write("Sources: " + ", ".join(f"`{d}`" for d in dirs) + "\n\n")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    out.write(f"{plural(len(runs), 'run')}: {summary}.")
    if pending:
        out.write(f" {plural(len(pending), 'sweep job')} not started.")
    out.write("\n\n")
    for sweep, size in sweep_sizes.items():
        if size is not None:
            started = size - sum(p.sweep == sweep for p in pending)
            have = plural(size, "job has", "jobs have")
            out.write(f"Sweep `{sweep}`: {started} of {have} a folder.\n\n")
    out.write(
        "Status: *complete* = final evaluation at max_steps recorded; *running* = not "
        f"complete, a file changed within {stale_after / 60:g} min; *died* = not "
        "complete, stale, some steps recorded; *failed to start* = stale, no step "
        "recorded; *queued* = a lockstep sweep's job waiting for its group; *refused* = "
        "the job's config could not run (refused.txt). "
        f"Statistics are over the complete runs of a row (n): {spread_text(spread)}; "
        "(n=1): a single run, so no spread.\n\n"
    )
    named = {g.approach: g.name for g in grouping.groups if g.name != g.approach}
    if named:
        out.write(
            "Approaches: "
            + "; ".join(f"{name} = `{label}`" for label, name in named.items())
            + " (either form names an approach in --paired and --where).\n\n"
        )
    if grouping.common:
        common = ", ".join(f"{k}={_value_str(v)}" for k, v in grouping.common.items())
        out.write(f"Common to all runs: {common}.\n\n")
    if grouping.ignored:
        out.write(f"Not distinguishing rows: {', '.join(grouping.ignored)}.\n\n")

    out.write("## Accuracy\n\n")
    header = ["approach", "mode", "attack", "q", *grouping.extra_keys]
    tail = [f"last-{last} top-1 %"] if last > 1 else []
    asr = ["backdoor ASR %"] if any(st["final_backdoor_asr"].n for st in stats) else []
    header += ["n", "final top-1 %", *tail, *asr, "best top-1 %", "steps", "train s"]
    header += ["distorted", "runs"]
    rows = []
    for g, s in zip(grouping.groups, stats, strict=True):
        q = f"{g.q}*" if any(r.outside_guarantee for r in g.runs) else g.q
        rows.append(
            [
                g.name,
                g.mode,
                g.attack,
                q,
                *g.extras.values(),
                s["final_top1"].n,
                _fmt(s["final_top1"], 100, spread=spread),
                *([_fmt(s["tail_top1"], 100, spread=spread)] if last > 1 else []),
                *([_fmt(s["final_backdoor_asr"], 100, spread=spread)] if asr else []),
                _fmt(s["best_top1"], 100, spread=spread),
                _max_steps(g),
                _fmt(s["train_s"], 1, 1, spread),
                _fmt(s["distorted_frac"], 1, 3, spread),
                g.status_text(),
            ]
        )
    out.write(_md_table(header, rows))
    out.write(
        "\nfinal: the evaluation at max_steps; "
        + (f"last-{last}: the mean of the run's last {last} evaluations; " if last > 1 else "")
        + (
            "backdoor ASR: the final share of triggered test samples of other classes "
            "classified as the backdoor's target; "
            if asr
            else ""
        )
        + "best: the highest of the run's evaluations; "
        "train s: sum of the per-step step_s; distorted: mean fraction of the f files "
        "whose vote a Byzantine value won.\n"
    )
    if any(r.outside_guarantee for r in runs):
        out.write("\n\\* q outside the placement's guarantee (run.json outside_guarantee).\n")

    out.write("\n## Time per step (ms, mean over the steps of the complete runs)\n\n")
    names = ["compute", "comm", "attack", "vote", "aggregation", "update", "other", "step"]
    header = ["approach", "mode", "attack", "q", *grouping.extra_keys, "n", *names, "wall s"]
    rows = [
        [
            g.name,
            g.mode,
            g.attack,
            g.q,
            *g.extras.values(),
            s["step_s"].n,
            *(_fmt(s[k], 1000, 1, None) for k in TIME_COLUMNS),
            _fmt(s["wall_s"], 1, 1, spread),
        ]
        for g, s in zip(grouping.groups, stats, strict=True)
    ]
    out.write(_md_table(header, rows))
    out.write(
        "\nwall s: from file times, run.json (start) to the last metrics.jsonl record; it "
        "includes evaluations and checkpoints.\n"
    )

    unfinished = [r for g in grouping.groups for r in g.runs if r.status != "complete"]
    if unfinished or pending:
        out.write("\n## Runs not complete\n\n")
        group_of = {id(r): g for g in grouping.groups for r in g.runs}
        rows = []
        for r in unfinished:
            last = r.last_eval
            ev = (
                f"{100 * last['top1']:.2f} @ {last['step']}"
                if last and _number(last.get("top1"))
                else "—"
            )
            rows.append(
                [
                    f"`{r.path}`",
                    r.describe_status(),
                    group_of[id(r)].label(),
                    _value_str(r.seed),
                    ev,
                    _ago(r.age_s),
                ]
            )
        for p in pending:
            rows.append(
                [
                    f"`{p.sweep}` job {p.num}",
                    "not started",
                    " ".join(p.overrides),
                    "",
                    "—",
                    "",
                ]
            )
        header = ["run", "status", "settings", "seed", "last top-1 % @ step", "last change"]
        out.write(_md_table(header, rows))

    if curves:
        out.write("\n## Worst-case fraction of distorted files eps(q) = c_max(q) / f\n\n")
        for c in curves:
            detox = f"DETOX r={c.detox_r}" if c.detox_r else "DETOX"
            out.write(f"{c.label}: K={c.K}, f={c.f}\n\n")
            rows = []
            for row in c.rows:
                d = c.detox_eps[row.q] if c.detox_eps else None
                rows.append(
                    [
                        row.q,
                        row.c_max,
                        f"{row.c_max / c.f:.3f}",
                        "yes" if row.certified else f"no (c_max <= {row.upper_bound})",
                        "—" if d is None else f"{d:.3f}",
                        f"{row.q / c.K:.3f}",
                    ]
                )
            header = ["q", "c_max", "eps", "certified", f"eps {detox}", "eps baseline"]
            out.write(_md_table(header, rows) + "\n")
    if plots:
        out.write("## Plots\n\n")
        out.writelines(f"![{name}]({name})\n\n" for name in plots)
    duplicated = [
        g for g in grouping.groups if len({_canon(r.seed) for r in g.complete}) < len(g.complete)
    ]
    for g in duplicated:
        notes.append(
            f"{g.label()}: several complete runs share a seed; each counts in n "
            "(repeats of one seed give the same numbers)"
        )
    if notes:
        out.write("\n## Notes\n\n")
        out.writelines(f"- {n}\n" for n in notes)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# pivot.md (--pivot), from report.csv


PIVOT_KEYS = ("approach", "mode", "attack", "q")


def pivot_table(
    csv_path: Path,
    column: str,
    where: dict[str, set[str]],
    spread: str = "ci",
    common: dict[str, str] | None = None,
) -> str:
    """A Markdown table from report.csv: final top-1 % as the mean and its 95 % interval
    (or ± std, ``spread``) with n, one column per value of ``column``, one row per
    combination of the other keys that ``where`` does not fix (``common``: the settings
    every run shares, which report.csv leaves out, for ``where`` to match)."""
    with open(csv_path, newline="") as fh:
        rows = select([{**(common or {}), **r} for r in csv.DictReader(fh)], where)
    header = list(rows[0]) if rows else []
    extras = header[header.index("q") + 1 : header.index("runs")] if "runs" in header else []
    keys = [k for k in (*PIVOT_KEYS, *extras) if k != column]

    def collide(without: str) -> bool:
        """Whether dropping ``without`` from the row keys would put two groups in one cell."""
        cells = [tuple(r[k] for k in keys if k != without) + (r[column],) for r in rows]
        return len(set(cells)) < len(cells)

    # a key --where sets is left out of the rows unless leaving it out would merge groups
    # that differ in it (--pivot mode --where q=1,3 keeps q); other settings that vary
    # (batch_size, lr, ...) are row keys, the ones that do not are left out
    for k in list(keys):
        fixed = k in where and not collide(k)
        if fixed or (k in extras and len({r[k] for r in rows}) <= 1):
            keys.remove(k)

    def shown(row: dict, key: str) -> str:
        if key == "approach":
            return row.get("name") or approach_name(row["approach"])
        return row[key]

    columns = list(dict.fromkeys(shown(r, column) for r in rows))
    columns.sort(key=lambda c: c not in ("none", "0"))  # the no-attack reference first
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        mean, std = r["final_top1_mean"], r["final_top1_std"]
        n = int(r.get("final_top1_n") or r["complete"] or 0)
        stat = Summary.of(None if mean == "" else float(mean), None if std == "" else float(std), n)
        cell = f"{_fmt(stat, 100, 1, spread)}" + (f" ({n})" if n != 1 else "")
        cells.setdefault(tuple(shown(r, k) for k in keys), {})[shown(r, column)] = cell
    fixed = ", ".join(f"{k} = {' or '.join(sorted(v))}" for k, v in where.items())
    what = spread_text(spread).replace(" over seeds", "")
    lines = [
        f"Final top-1 % ({what}, (n: complete runs)){'; ' + fixed if fixed else ''}",
        "",
        "| " + " | ".join([*keys, *columns]) + " |",
        "|" + " --- |" * (len(keys) + len(columns)),
    ]
    for key, by_col in cells.items():
        lines.append("| " + " | ".join([*key, *(by_col.get(c, "") for c in columns)]) + " |")
    return "\n".join(lines) + "\n"
