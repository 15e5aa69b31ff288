"""The report's PNG figures, with matplotlib imported only when one is drawn: accuracy
against step, final accuracy against q, eps(q) of the placements, and with ``--paired``
the drop against c / sqrt(f) and the paired differences against q.

Every figure has one colour per approach (:func:`~byzshield.report.names.approach_colors`,
the same mapping in all of a report's figures) and the approaches' display names; one
legend below the panels, titles wrapped to their panel, integer ticks for q and step,
and the spread drawn (bands, bars) named in the legend. Layout is matplotlib's
constrained layout, so nothing is cut at the image's edges.

The figures other than accuracy against step are drawn from plain points
(:mod:`byzshield.report.points`) that come either from the run folders or from a
report's own CSVs (:mod:`byzshield.report.redraw`)."""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from byzshield.report.eps import EpsCurve
from byzshield.report.groups import Group, Grouping, Summary, _canon, summarize
from byzshield.report.load import RunFolder, _natural, _number
from byzshield.report.names import family
from byzshield.report.pairs import PairedCell
from byzshield.report.points import (
    DiffPoint,
    DropPoint,
    Look,
    QPoint,
    diff_points,
    drop_points,
    q_points,
)

PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install 'byzshield[report]')"
"""The note (and stderr line) of a report written without matplotlib."""

FIGURES = ("step", "q", "eps", "drop", "paired")
"""The report's kinds of figure: accuracy against step, final accuracy against q, eps(q)
of the placements, and (with --paired) drop against c / sqrt(f) and A - B against q."""

PANEL_W, PANEL_H = 4.4, 3.3  # inches per panel
DPI = 100


# --------------------------------------------------------------------------------------
# Drawing helpers


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _figure(nrows: int, ncols: int, *, sharey: bool = True):
    plt = pyplot()
    if plt is None:
        raise ImportError("matplotlib is not installed (pip install 'byzshield[report]')")
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(PANEL_W * ncols, PANEL_H * nrows + 0.6),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
        dpi=DPI,
    )
    return fig, axes


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points."""
    chars = max(16, int(width_in * 72 / (0.62 * fontsize)))
    return textwrap.fill(text, chars, break_on_hyphens=False)


def _title(ax, text: str, fontsize: float = 9) -> None:
    ax.set_title(_wrap(text, PANEL_W - 0.3, fontsize), fontsize=fontsize)


def _integer_axis(ax, values: Sequence[float]) -> None:
    """Integer ticks on x (q, step), with room for at least three of them."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if values and max(values) - min(values) < 2:
        ax.set_xlim(min(values) - 1, max(values) + 1)


def _spread_words(spread: str) -> str:
    return "95 % interval over seeds" if spread == "ci" else "± std over seeds"


def _spread(stat: Summary, spread: str, scale: float = 100.0) -> tuple[float, float]:
    """(below, above) the mean that a bar or band covers: the interval, or ± std."""
    if stat.n < 2:
        return 0.0, 0.0
    if spread == "std":
        return stat.std * scale, stat.std * scale
    return (stat.mean - stat.low) * scale, (stat.high - stat.mean) * scale


def _legend(fig, axes, extra: Sequence = ()) -> None:
    """One legend below the panels with every label once (``extra``: more (handle,
    label) pairs, e.g. what a band means), in as many columns as fit the figure's width
    (the figure widens when even one column does not)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    if not handles:
        return
    width = fig.get_figwidth() * fig.dpi
    for ncol in range(min(4, len(labels)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
        fig.canvas.draw()
        needed = legend.get_window_extent().width
        if needed <= 0.98 * width:
            return
        if ncol > 1:
            legend.remove()
    fig.set_figwidth((needed + 20) / fig.dpi)


def save_figure(fig, path: Path | str) -> None:
    """Write ``fig`` as a PNG (the same bytes for the same inputs: no version stamp) and
    close it."""
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)


def _band_handle(spread: str):
    from matplotlib.patches import Patch

    return Patch(facecolor="0.5", alpha=0.25, label=f"shaded: {_spread_words(spread)}")


def _bars_handle(ax, spread: str, what: str = "bars"):
    handle = ax.errorbar([], [], yerr=[], color="0.4", capsize=3, ls="none", marker="")
    return handle, f"{what}: {_spread_words(spread)}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_") or "all"


def _words(parts: Iterable[tuple]) -> list[str]:
    return [f"{k}={v}" for k, v in parts]


# --------------------------------------------------------------------------------------
# The figures


def step_figure(title: str, groups: Sequence[Group], look: Look, spread: str = "ci"):
    """Test top-1 against step: a panel per attack, a line per approach (mean over the
    complete runs, or over the incomplete ones, dashed, when none is complete), shaded by
    the spread over seeds."""
    from matplotlib.lines import Line2D

    attacks = list(dict.fromkeys(g.attack for g in groups))
    fig, axes = _figure(1, len(attacks))
    banded = incomplete = False
    for ax, attack in zip(axes[0], attacks, strict=True):
        all_steps: list[int] = []
        for g in (x for x in groups if x.attack == attack):
            done = g.complete
            steps, stats = _curve(done or [r for r in g.runs if r.evals])
            if not steps:
                continue
            all_steps += steps
            color = look.color(g.approach)
            name = look.name(g.approach)
            label = f"{name} (n={len(done)})" if done else f"{name} (incomplete)"
            incomplete |= not done
            means = [100 * s.mean for s in stats]
            style = "-" if done else "--"
            ax.plot(steps, means, style, marker="o", ms=3, color=color, label=label)
            if len(done) > 1:
                spans = [_spread(s, spread) for s in stats]
                ax.fill_between(
                    steps,
                    [m - lo for m, (lo, _) in zip(means, spans, strict=True)],
                    [m + hi for m, (_, hi) in zip(means, spans, strict=True)],
                    color=color,
                    alpha=0.2,
                    lw=0,
                )
                banded = True
        _title(ax, f"attack {attack}")
        ax.set_xlabel("step")
        _integer_axis(ax, all_steps)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 %")
    fig.suptitle(_wrap(title, PANEL_W * len(attacks) - 0.3, 10), fontsize=10)
    extra = [(_band_handle(spread), f"shaded: {_spread_words(spread)}")] if banded else []
    if incomplete:
        extra.append((Line2D([], [], ls="--", color="0.4"), "dashed: no complete run yet"))
    _legend(fig, axes[0], extra)
    return fig


def _curve(runs: Sequence[RunFolder]) -> tuple[list[int], list[Summary]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for e in r.evals:
            if _number(e.get("top1")):
                by_step[e["step"]].append(e["top1"])
    steps = sorted(by_step)
    return steps, [summarize(by_step[s]) for s in steps]


def q_figure(points: Sequence[QPoint], look: Look, spread: str = "ci"):
    """Final top-1 against q: a panel per (mode, extras) and attack, a line per approach
    with bars of the spread over seeds; runs without an attack (attack none or q = 0) are
    each panel's dotted reference line. None without a point to draw."""
    from matplotlib.lines import Line2D

    attacked = any(p.attack != "none" and p.q != 0 for p in points)
    lines: dict[tuple, dict[str, list[QPoint]]] = defaultdict(lambda: defaultdict(list))
    refs: dict[tuple, dict[str, float]] = defaultdict(dict)
    for p in points:
        if attacked and (p.attack == "none" or p.q == 0):
            refs[(p.mode, p.extras)][p.approach] = 100 * p.stat.mean
        else:
            lines[(p.mode, p.extras, p.attack)][p.approach].append(p)
    if not lines:
        return None
    panels = sorted(lines, key=lambda k: [_natural(k[0]), [_natural(v) for _, v in k[1]], k[2]])
    rows = list(dict.fromkeys(k[:2] for k in panels))
    cols = list(dict.fromkeys(k[2] for k in panels))
    if len(cols) == 1 and len(rows) > 3:  # one attack: the rows in a grid, 3 across
        grid = [(r, cols[0]) for r in rows]
        ncol = 3
    else:
        grid = [(r, c) for r in rows for c in cols]
        ncol = len(cols)
    nrow = -(-len(grid) // ncol)
    fig, axes = _figure(nrow, ncol)
    referenced = False
    for k, ax in enumerate(a for row in axes for a in row):
        if k >= len(grid):
            ax.set_visible(False)
            continue
        (mode, extras), attack = grid[k]
        qs: list[int] = []
        for approach, pts in lines.get((mode, extras, attack), {}).items():
            pts = sorted(pts, key=lambda p: p.q)
            qs += [p.q for p in pts]
            spans = [_spread(p.stat, spread) for p in pts]
            ax.errorbar(
                [p.q for p in pts],
                [100 * p.stat.mean for p in pts],
                yerr=[[s[0] for s in spans], [s[1] for s in spans]],
                marker="o",
                ms=4,
                capsize=3,
                color=look.color(approach),
                label=look.name(approach),
            )
        for approach, ref in refs.get((mode, extras), {}).items():
            ax.axhline(ref, color=look.color(approach), ls=":", lw=1)
            referenced = True
        _title(ax, " ".join([mode, *_words(extras), f"attack {attack}"]))
        ax.set_xlabel("q (Byzantine workers)")
        _integer_axis(ax, qs)
        ax.grid(alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel("final test top-1 %")
    extra = [_bars_handle(axes[0][0], spread)]
    if referenced:
        extra.append((Line2D([], [], color="k", ls=":", lw=1), "dotted: no attack (q = 0)"))
    _legend(fig, axes.ravel(), extra)
    return fig


def eps_figure(curves: Sequence[EpsCurve], look: Look | None = None):
    """A matplotlib figure, one panel per placement: eps(q) = c_max(q) / f, its upper
    bound where not certified, DETOX's (under its worst Byzantine set) and the baseline's
    eps at the same K, and the c_max the runs reported (if any); each approach in its
    colour and by its name in every panel."""
    comparisons = {c.label: _comparisons(c) for c in curves}
    if look is None:
        look = Look([*(c.label for c in curves), *(x for v in comparisons.values() for x in v)])
    fig, axes = _figure(1, len(curves), sharey=False)
    for ax, c in zip(axes[0], curves, strict=True):
        qs = [r.q for r in c.rows]
        color, name = look.color(c.label), look.name(c.label)
        ax.plot(qs, [r.c_max / c.f for r in c.rows], "-o", ms=3, color=color, label=name)
        if not c.certified:
            bound = [r.upper_bound / c.f for r in c.rows]
            ax.plot(qs, bound, ":", color=color, label=f"{name}: upper bound (not certified)")
        detox, baseline = comparisons[c.label]
        if detox:
            ax.plot(qs, c.detox_eps, "-s", ms=3, color=look.color(detox), label=look.name(detox))
        if baseline:
            ax.plot(
                qs,
                [q / c.K for q in qs],
                "--",
                color=look.color(baseline),
                label=look.name(baseline),
            )
        if c.used:
            ax.plot(
                [u[0] for u in c.used],
                [u[1] for u in c.used],
                "x",
                color="k",
                label="c_max(q) / f of the runs (run.json)",
            )
        _title(ax, f"{name}, f={c.f}")
        ax.set_xlabel("q (Byzantine workers)")
        _integer_axis(ax, qs)
        ax.set_ylabel("eps(q) = c_max(q) / f")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return fig


def _comparisons(c: EpsCurve) -> tuple[str | None, str | None]:
    """The labels of the DETOX (worst set) and baseline designs at the curve's K, where
    they are not the curve's own design."""
    own = family(c.label)
    detox = None
    if c.detox_eps and own not in ("draco_lite", "draco_lite_attack", "detox", "maj_vote"):
        detox = f"draco_lite_attack(K={c.K}, r={c.detox_r})"
    baseline = None if own == "baseline" else f"baseline(K={c.K})"
    return detox, baseline


def drop_figure(points: Sequence[DropPoint], look: Look):
    """Measured drop against c / sqrt(f) (c: the mean number of distorted files per step,
    f: files) per scheme: the sqrt(f) model of ALIE's damage predicts one curve for all
    schemes within a panel. A panel per (mode, extras); None without a point."""
    if not points:
        return None
    panels: dict[tuple, dict[str, list[DropPoint]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        panels[(p.mode, p.extras)][p.approach].append(p)
    keys = sorted(panels, key=lambda k: [_natural(k[0]), [_natural(v) for _, v in k[1]]])
    ncol = min(3, len(keys))
    nrow = -(-len(keys) // ncol)
    fig, axes = _figure(nrow, ncol)
    for k, ax in enumerate(a for row in axes for a in row):
        if k >= len(keys):
            ax.set_visible(False)
            continue
        mode, extras = keys[k]
        for approach, pts in panels[keys[k]].items():
            pts = sorted(pts, key=lambda p: p.x)
            below = [0.0 if p.low is None else 100 * (p.mean - p.low) for p in pts]
            above = [0.0 if p.high is None else 100 * (p.high - p.mean) for p in pts]
            ax.errorbar(
                [p.x for p in pts],
                [100 * p.mean for p in pts],
                yerr=[below, above],
                marker="o",
                ms=4,
                capsize=3,
                color=look.color(approach),
                label=look.name(approach),
            )
        _title(ax, " ".join([mode, *_words(extras)]))
        ax.set_xlabel("c / √f  (c: distorted files per step)")
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel("drop from no-attack top-1 (points)")
    _legend(fig, axes.ravel(), [_bars_handle(axes[0][0], "ci", "bars (paired)")])
    return fig


def diff_figure(points: Sequence[DiffPoint], look: Look):
    """A - B against q for each --paired comparison: a panel per cell setting apart from
    q (attack, extras), a line per comparison in A's colour (a dashed line for A's second
    mode, ...), bars of the paired 95 % interval; above 0, A is ahead. None without a
    point."""
    if not points:
        return None
    panels: dict[tuple, dict[str, list[DiffPoint]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        panels[p.panel][p.pair].append(p)
    keys = sorted(panels, key=lambda k: [_natural(v) for _, v in k])
    ncol = min(3, len(keys))
    nrow = -(-len(keys) // ncol)
    fig, axes = _figure(nrow, ncol)
    styles = ("-", "--", "-.", ":")
    modes: dict[str, list[str]] = defaultdict(list)  # approach -> its modes in order
    for p in points:
        if p.a_mode not in modes[p.a]:
            modes[p.a].append(p.a_mode)
    for k, ax in enumerate(a for row in axes for a in row):
        if k >= len(keys):
            ax.set_visible(False)
            continue
        qs: list[int] = []
        for pts in panels[keys[k]].values():
            pts = sorted(pts, key=lambda p: p.q)
            first = pts[0]
            qs += [p.q for p in pts]
            below = [0.0 if p.low is None else 100 * (p.mean - p.low) for p in pts]
            above = [0.0 if p.high is None else 100 * (p.high - p.mean) for p in pts]
            style = styles[modes[first.a].index(first.a_mode) % len(styles)]
            ax.errorbar(
                [p.q for p in pts],
                [100 * p.mean for p in pts],
                yerr=[below, above],
                ls=style,
                marker="o",
                ms=4,
                capsize=3,
                color=look.color(first.a),
                label=f"{look.name(first.a)} / {first.a_mode} − {look.name(first.b)} / "
                f"{first.b_mode}",
            )
        ax.axhline(0, color="k", lw=0.8)
        _title(ax, " ".join(f"{k_}={v}" if k_ != "attack" else f"attack {v}" for k_, v in keys[k]))
        ax.set_xlabel("q (Byzantine workers)")
        _integer_axis(ax, qs)
        ax.grid(alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel("A − B, top-1 points (> 0: A ahead)")
    _legend(fig, axes.ravel(), [_bars_handle(axes[0][0], "ci", "bars (paired)")])
    return fig


# --------------------------------------------------------------------------------------
# A report's figures


def _plots(
    grouping: Grouping,
    curves: list[EpsCurve],
    out: Path,
    notes: list[str],
    figures: Sequence[str] = FIGURES,
    *,
    spread: str = "ci",
    paired: Sequence[str] = (),
    tables: Sequence[Sequence[PairedCell]] = (),
) -> list[str]:
    """Draw the report's figures into ``out``; the names written."""
    if pyplot() is None:
        notes.append(PLOTS_SKIPPED)
        return []
    labels = [g.approach for g in grouping.groups]
    labels += [x for c in curves for x in (c.label, *_comparisons(c)) if x]
    look = Look(labels)
    written: list[str] = []

    def save(fig, name: str) -> None:
        if fig is not None:
            save_figure(fig, out / name)
            written.append(name)

    # accuracy against step: one figure per (mode, q, extras), a panel per attack
    slices: dict[tuple, list[Group]] = defaultdict(list)
    for g in grouping.groups if "step" in figures else ():
        slices[(g.mode, _canon(g.q), tuple(g.extras.items()))].append(g)
    used_names: set[str] = set()
    for (mode, _, extras), groups in slices.items():
        title = " ".join([mode, f"q={groups[0].q}", *_words(extras)])
        name = f"accuracy_vs_step_{_slug(title)}.png"
        k = 2
        while name in used_names:
            name, k = f"accuracy_vs_step_{_slug(title)}_{k}.png", k + 1
        used_names.add(name)
        save(step_figure(title, groups, look, spread), name)
    if "q" in figures:
        save(q_figure(q_points(grouping), look, spread), "accuracy_vs_q.png")
    if curves and "eps" in figures:
        save(eps_figure(curves, look), "eps_vs_q.png")
    if tables and "drop" in figures:
        save(drop_figure(drop_points(tables), look), "drop_vs_bias.png")
    if tables and "paired" in figures:
        save(diff_figure(diff_points(paired, tables), look), "paired_vs_q.png")
    return written
