"""Each rule's worst attack (``--worst-over attack``): per rule, placement, q and any other
setting that varies (the data partition and its alpha among them), the lowest mean
accuracy over the attacks swept and the attack that achieved it, as worst.md, worst.csv
and heatmaps (rule x q, and rule x data heterogeneity when it varies).

This is the protocol of ByzFL's benchmark heatmaps (``byzfl.benchmark.evaluate_results``):
for every attack the mean over seeds, then the minimum over the attacks. ByzFL takes
each attack's best evaluation of the mean curve; here it is the final accuracy (or the
mean of the last N evaluations with ``--last-evals N``), the report's measure everywhere
else. Rows without an attack
(``attack=none`` or q = 0) are not attacks: they are each cell's no-attack reference.

    python -m byzshield.report SWEEP --worst-over attack
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from byzshield.report.groups import Group, Grouping, Summary, _canon, group_stats
from byzshield.report.load import ReportError, _natural
from byzshield.report.tables import _csv_values, _fmt, _md_table, spread_text

__all__ = ["WORST_OVER", "HETEROGENEITY", "Worst", "worst_cells", "worst_figures", "write_worst"]

WORST_OVER = ("attack",)
"""What ``--worst-over`` takes the minimum over."""

HETEROGENEITY = ("dataset.partition", "dataset.alpha", "dataset.classes_per_file")
"""The settings that say how different the honest files are (the partition helper's
``dataset.*`` keys): together one axis of the heterogeneity heatmaps."""


@dataclass
class Worst:
    """One cell: a rule (mode), placement (approach label and display name), q, the other
    settings that vary (``extras``), its worst attack and that attack's statistics; the
    attacks compared and the no-attack reference (None without one)."""

    mode: str
    approach: str
    name: str
    q: object
    extras: dict
    attack: str | None
    stat: Summary
    attacks: list[str]
    reference: Summary | None

    @property
    def mean(self) -> float | None:
        return self.stat.mean


def _attacked(g: Group) -> bool:
    return g.attack != "none" and g.q not in (0, "0")


def worst_cells(grouping: Grouping, last: int = 1) -> list[Worst]:
    """The worst attack of every (rule, placement, q, extras) with an attacked group, in
    the report's order; its measure is the mean over seeds of the final top-1 (of the
    last ``last`` evaluations)."""
    cells: dict[tuple, list[tuple[Group, Summary]]] = defaultdict(list)
    refs: dict[tuple, Summary] = {}
    order: list[tuple] = []
    for g in grouping.groups:
        stat = group_stats(g, last)["tail_top1"]
        base = (g.mode, g.approach, _canon(tuple(g.extras.items())))
        if not _attacked(g):
            if stat.n and base not in refs:
                refs[base] = stat
            continue
        key = (*base, _canon(g.q))
        if key not in cells:
            order.append(key)
        cells[key].append((g, stat))
    out = []
    for key in order:
        entries = cells[key]
        g0 = entries[0][0]
        scored = [(g, s) for g, s in entries if s.n and s.mean is not None]
        worst = min(scored, key=lambda e: e[1].mean) if scored else None
        out.append(
            Worst(
                mode=g0.mode,
                approach=g0.approach,
                name=g0.name,
                q=g0.q,
                extras=dict(g0.extras),
                attack=None if worst is None else worst[0].attack,
                stat=Summary(None, None, 0) if worst is None else worst[1],
                attacks=[g.attack for g, _ in entries],
                reference=refs.get(key[:3]),
            )
        )
    return out


def _worst_csv(cells: Sequence[Worst], extra_keys: Sequence[str], out: Path) -> None:
    header = ["mode", "approach", "name", "q", *extra_keys, "worst_attack"]
    header += ["worst_top1_mean", "worst_top1_std", "worst_top1_n", "worst_top1_low"]
    header += ["worst_top1_high", "attacks", "no_attack_top1_mean", "no_attack_top1_n"]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for c in cells:
            s, ref = c.stat, c.reference
            row = [c.mode, c.approach, c.name, c.q, *(c.extras.get(k) for k in extra_keys)]
            row += [c.attack, s.mean, s.std, s.n, s.low, s.high, " ".join(c.attacks)]
            row += [None if ref is None else ref.mean, None if ref is None else ref.n]
            w.writerow(_csv_values(row))


def _worst_markdown(
    cells: Sequence[Worst], extra_keys: Sequence[str], figures: Sequence[str], last: int, spread
) -> str:
    measure = "final top-1" if last == 1 else f"mean top-1 of the last {last} evaluations"
    lines = [
        "# Each rule's worst attack\n",
        f"Per rule, placement, q and setting: the lowest {measure} (%) over the attacks "
        f"swept, {spread_text(spread)}, and the attack that achieved it (ByzFL's protocol: "
        "the mean over seeds for each attack, then the minimum over the attacks). "
        "no attack: the same rule and placement without Byzantine workers (attack=none "
        "or q = 0), when the sweep has it.\n",
    ]
    header = ["rule", "placement", "q", *extra_keys, "worst attack", f"{measure} %"]
    header += ["of attacks", "no attack %"]
    rows = []
    for c in cells:
        rows.append(
            [
                c.mode,
                c.name,
                c.q,
                *(c.extras.get(k, "") for k in extra_keys),
                c.attack or "—",
                _fmt(c.stat, 100, spread=spread),
                len(c.attacks),
                "—" if c.reference is None else _fmt(c.reference, 100, spread=None),
            ]
        )
    lines.append(_md_table(header, rows))
    if figures:
        lines.append("")
        lines += [f"![{name}]({name})\n" for name in figures]
    return "\n".join(lines)


def write_worst(
    grouping: Grouping,
    out: Path,
    *,
    over: str,
    last: int = 1,
    spread: str = "ci",
    plots: bool = True,
    notes: list[str] | None = None,
) -> list[str]:
    """worst.md, worst.csv and (``plots``, with matplotlib) the heatmaps in ``out``;
    returns the names written."""
    if over not in WORST_OVER:
        raise ReportError(f"--worst-over takes {', '.join(WORST_OVER)}; got {over!r}")
    cells = worst_cells(grouping, last)
    if not cells:
        raise ReportError(
            "--worst-over attack needs runs under attack (attack other than none, q > 0); "
            "none were found"
        )
    figures: list[str] = []
    if plots:
        from byzshield.report.plots import pyplot, save_figure

        if pyplot() is not None:
            for name, fig in worst_figures(cells):
                save_figure(fig, out / name)
                figures.append(name)
    _worst_csv(cells, grouping.extra_keys, out / "worst.csv")
    text = _worst_markdown(cells, grouping.extra_keys, figures, last, spread)
    (out / "worst.md").write_text(text, encoding="utf-8")
    return ["worst.md", "worst.csv", *figures]


# --------------------------------------------------------------------------------------
# Heatmaps


def _heterogeneity(extras: dict) -> tuple[str, tuple] | None:
    """The data-heterogeneity label of a cell in words, and its sort key (iid first, then
    Dirichlet from the largest alpha down, then k classes per file from the most down);
    None when no heterogeneity setting varies."""
    keys = [k for k in HETEROGENEITY if k in extras]
    if not keys:
        return None
    partition = extras.get("dataset.partition")
    alpha = extras.get("dataset.alpha")
    classes = extras.get("dataset.classes_per_file")
    if partition == "iid":
        return "iid", (0, 0.0)
    if partition == "classes":
        return f"{classes} classes per file", (2, -_number(classes))
    if partition in (None, "dirichlet") and alpha is not None:
        return f"Dirichlet alpha {alpha}", (1, -_number(alpha))
    return ", ".join(f"{k.split('.')[-1]} {extras[k]}" for k in keys), (3, 0.0)


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _others(extras: dict) -> tuple:
    return tuple((k, v) for k, v in extras.items() if k not in HETEROGENEITY)


def _panel_title(name: str, others: tuple, *more: str) -> str:
    return ", ".join([name, *more, *(f"{k} {v}" for k, v in others)])


def worst_figures(cells: Sequence[Worst]) -> list[tuple[str, object]]:
    """(file name, figure) of each heatmap: ``worst_rule_vs_q.png`` (rules x q, a panel per
    placement and setting) and, when the data heterogeneity varies,
    ``worst_rule_vs_heterogeneity.png`` (rules x heterogeneity, a panel per placement, q
    and other setting). One colour scale (0-100 %) for every panel; each cell shows the
    worst attack's mean top-1 % and its name."""
    het = {id(c): _heterogeneity(c.extras) for c in cells}
    rules = sorted({c.mode for c in cells}, key=_natural)
    figures = []
    by_q: dict[tuple, list[Worst]] = defaultdict(list)
    for c in cells:
        h = het[id(c)]
        by_q[(c.name, h[0] if h else None, _others(c.extras))].append(c)
    order = {key: (het[id(members[0])] or ("", ()))[1] for key, members in by_q.items()}
    panels = []
    for (name, label, others), members in sorted(
        by_q.items(), key=lambda kv: (_natural(kv[0][0]), order[kv[0]], _natural(kv[0][2]))
    ):
        qs = sorted({_canon(c.q): c.q for c in members}.values(), key=_natural)
        grid = {(c.mode, _canon(c.q)): c for c in members}
        title = _panel_title(name, others, *([label] if label else []))
        panels.append((title, [str(q) for q in qs], [_canon(q) for q in qs], grid))
    figures.append(("worst_rule_vs_q.png", _heatmaps(panels, rules, "Byzantine workers q")))
    if len({h[0] for h in het.values() if h}) > 1:
        by_h: dict[tuple, list[Worst]] = defaultdict(list)
        for c in cells:
            by_h[(c.name, _canon(c.q), _others(c.extras))].append(c)
        panels = []
        for (name, _, others), members in by_h.items():
            columns = sorted(
                {het[id(c)] for c in members if het[id(c)]}, key=lambda h: (h[1], h[0])
            )
            grid = {(c.mode, het[id(c)][0]): c for c in members if het[id(c)]}
            title = _panel_title(name, others, f"q = {members[0].q}")
            labels = [h[0] for h in columns]
            panels.append((title, labels, labels, grid))
        figures.append(
            (
                "worst_rule_vs_heterogeneity.png",
                _heatmaps(panels, rules, "data heterogeneity across files"),
            )
        )
    return figures


def _heatmaps(panels, rules: list[str], xlabel: str):
    """One figure: a heatmap panel per (title, column labels, column keys, {(rule, key):
    cell}), three across, rows the rules, one colour bar."""
    import numpy as np

    from byzshield.report.plots import DPI, _wrap, pyplot

    plt = pyplot()
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    widest = max(len(p[1]) for p in panels)
    cell_w, cell_h = 1.15, 0.62
    label_w = 0.4 + 0.06 * max(len(rule) for rule in rules)  # the rule names at 7 pt
    cells_w = max(1.6, cell_w * widest)
    panel_w = label_w + cells_w
    panel_h = max(2.6, 1.3 + cell_h * len(rules))
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(panel_w * ncol + 1.0, panel_h * nrow + 0.9),
        squeeze=False,
        layout="constrained",
        dpi=DPI,
    )
    cmap = plt.get_cmap("viridis")
    image = None
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        title, labels, keys, grid = panels[k]
        values = np.full((len(rules), len(keys)), np.nan)
        for i, rule in enumerate(rules):
            for j, key in enumerate(keys):
                c = grid.get((rule, key))
                if c is not None and c.mean is not None:
                    values[i, j] = 100 * c.mean
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for i, rule in enumerate(rules):
            for j, key in enumerate(keys):
                c = grid.get((rule, key))
                if c is None:
                    continue
                if c.mean is None:
                    text, dark = "no complete run", False
                else:
                    attack = (c.attack or "").replace("(", "\n(")
                    text, dark = f"{100 * c.mean:.1f}\n{attack}", c.mean > 0.6
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="black" if dark else "white",
                )
        width = cells_w / max(1, len(labels))  # inches per column
        ax.set_xticks(range(len(labels)), [_wrap(x, 0.85 * width, 7) for x in labels], fontsize=7)
        ax.set_yticks(range(len(rules)), rules, fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("rule", fontsize=8)
        ax.set_title(_wrap(title, cells_w + 0.4, 8.5), fontsize=8.5)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    bar.set_label("worst attack's mean top-1 %", fontsize=8)
    return fig
