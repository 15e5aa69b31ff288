"""The report's PNG figures, with matplotlib imported only when one is drawn: accuracy
against step, final accuracy against q, eps(q) of the placements and (``--paired``)
drop against c / sqrt(f); and the approaches' display names and colours."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from byzshield.report.eps import EpsCurve
from byzshield.report.groups import Group, Grouping, _canon, mean_std
from byzshield.report.load import _PLACEMENT, RunFolder, _natural, _number
from byzshield.report.pairs import PairedCell, _bias

PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install 'byzshield[report]')"
"""The note (and stderr line) of a report written without matplotlib."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_") or "all"


def _mean_curve(runs: Sequence[RunFolder]) -> tuple[list[int], list[float], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for e in r.evals:
            if _number(e.get("top1")):
                by_step[e["step"]].append(e["top1"])
    steps = sorted(by_step)
    means, stds = [], []
    for s in steps:
        m, sd, _ = mean_std(by_step[s])
        means.append(m)
        stds.append(sd or 0.0)
    return steps, means, stds


_FAMILIES = {  # config name -> (display name, K from the parameters)
    "mols": ("MOLS", lambda p: p.get("l", 0) * p.get("r", 0)),
    "rama_one": ("Ramanujan 1", lambda p: p.get("m", 0) * p.get("s", 0)),
    "rama_two": ("Ramanujan 2", lambda p: p.get("s", 0) ** 2),
    "draco_lite_attack": ("DETOX (worst)", lambda p: p.get("K")),
    "draco_lite": ("DETOX (random)", lambda p: p.get("K")),
    "maj_vote": ("DRACO vote", lambda p: p.get("K")),
    "baseline": ("baseline", lambda p: p.get("K")),
}


def approach_name(label: str) -> str:
    """A plot's name for an approach label: ``mols(l=5, r=3)`` -> ``MOLS K=15``,
    ``draco_lite_attack(K=15, r=3)`` -> ``DETOX (worst) K=15 r=3``; others unchanged."""
    m = _PLACEMENT.match(label)
    name = m["name"] if m else label
    if name not in _FAMILIES:
        return label
    params = {}
    for part in filter(None, (x.strip() for x in (m["params"] if m else "").split(","))):
        k, _, v = part.partition("=")
        params[k.strip()] = int(v) if v.strip().isdigit() else v.strip()
    title, k_of = _FAMILIES[name]
    try:
        K = k_of(params)
    except TypeError:
        K = None
    text = f"{title} K={K}" if K else title
    if name.startswith(("draco_lite", "maj_vote")) and "r" in params:
        text += f" r={params['r']}"
    return text


def approach_colors(labels) -> dict[str, str]:
    """One colour per approach label, the same in every figure of a report: families in a
    fixed order (MOLS, Ramanujan, DETOX, baseline), then by K."""
    order = list(_FAMILIES)

    def rank(label: str):
        m = _PLACEMENT.match(label)
        name = m["name"] if m else label
        return (order.index(name) if name in order else len(order), _natural(label))

    unique = sorted(dict.fromkeys(labels), key=rank)
    return {label: f"C{k % 10}" for k, label in enumerate(unique)}


def _shared_legend(fig, axes, *, ncol: int = 4) -> None:
    """One legend for the whole figure (below it) instead of one per panel."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=8)


FIGURES = ("step", "q", "eps", "drop")
"""The report's kinds of figure: accuracy against step, final accuracy against q, eps(q)
of the placements, and (with --paired) drop against c / sqrt(f)."""


def _plots(
    grouping: Grouping,
    curves: list[EpsCurve],
    out: Path,
    notes: list[str],
    figures: Sequence[str] = FIGURES,
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        notes.append(PLOTS_SKIPPED)
        return []
    written: list[str] = []
    meta = {"Software": None}  # no version stamp: same inputs, same bytes
    colors = approach_colors(g.approach for g in grouping.groups)

    def save(fig, name: str) -> None:
        if not fig.legends:
            fig.tight_layout()
        fig.savefig(out / name, dpi=100, metadata=meta)
        plt.close(fig)
        written.append(name)

    # accuracy against step: one figure per (mode, q, extras), a panel per attack
    slices: dict[tuple, list[Group]] = defaultdict(list)
    for g in grouping.groups if "step" in figures else ():
        slices[(g.mode, _canon(g.q), tuple(g.extras.items()))].append(g)
    used_names: set[str] = set()
    for (mode, _, extras), groups in slices.items():
        q = groups[0].q
        title = " ".join([mode, f"q={q}", *(f"{k}={v}" for k, v in extras)])
        attacks = list(dict.fromkeys(g.attack for g in groups))
        fig, axes = plt.subplots(
            1, len(attacks), figsize=(4.2 * len(attacks), 3.9), squeeze=False, sharey=True
        )
        for ax, attack in zip(axes[0], attacks, strict=True):
            for g in (x for x in groups if x.attack == attack):
                done = g.complete
                runs = done or [r for r in g.runs if r.evals]
                steps, means, stds = _mean_curve(runs)
                if not steps:
                    continue
                color = colors[g.approach]
                name = approach_name(g.approach)
                label = f"{name} (n={len(done)})" if done else f"{name} (incomplete)"
                ax.plot(
                    steps,
                    [100 * m for m in means],
                    "-" if done else "--",
                    marker="o",
                    ms=3,
                    color=color,
                    label=label,
                )
                if len(done) > 1:
                    ax.fill_between(
                        steps,
                        [100 * (m - s) for m, s in zip(means, stds, strict=True)],
                        [100 * (m + s) for m, s in zip(means, stds, strict=True)],
                        color=color,
                        alpha=0.2,
                    )
            ax.set_title(f"attack {attack}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test top-1 %")
        fig.suptitle(title, fontsize=10)
        _shared_legend(fig, axes[0])
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        name = f"accuracy_vs_step_{_slug(title)}.png"
        k = 2
        while name in used_names:
            name, k = f"accuracy_vs_step_{_slug(title)}_{k}.png", k + 1
        used_names.add(name)
        save(fig, name)

    # final accuracy against q: a panel per (mode, extras) x attack, a line per approach
    # Runs without an attack (attack none or q = 0) are each panel's reference line.
    points: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    refs: dict[tuple, dict[str, float]] = defaultdict(dict)
    attacked = any(g.attack != "none" and g.q != 0 for g in grouping.groups)
    for g in grouping.groups if "q" in figures else ():
        mean, std, n = mean_std(r.final.get("top1") for r in g.complete)
        if n and _number(g.q):
            if attacked and (g.attack == "none" or g.q == 0):
                refs[(g.mode, tuple(g.extras.items()))][g.approach] = 100 * mean
                continue
            panel = (g.mode, tuple(g.extras.items()), g.attack)
            points[panel][g.approach].append((g.q, 100 * mean, 100 * (std or 0.0)))
    if points:
        rows = list(dict.fromkeys(p[:2] for p in points))
        cols = list(dict.fromkeys(p[2] for p in points))
        fig, axes = plt.subplots(
            len(rows),
            len(cols),
            figsize=(4.2 * len(cols), 3.2 * len(rows) + 0.9),
            squeeze=False,
            sharey=True,
        )
        for i, (mode, extras) in enumerate(rows):
            for j, attack in enumerate(cols):
                ax = axes[i][j]
                lines = points.get((mode, extras, attack), {})
                for approach, pts in lines.items():
                    pts.sort()
                    ax.errorbar(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        yerr=[p[2] for p in pts],
                        marker="o",
                        ms=4,
                        capsize=3,
                        color=colors[approach],
                        label=approach_name(approach),
                    )
                for approach, ref in refs.get((mode, extras), {}).items():
                    ax.axhline(ref, color=colors[approach], ls=":", lw=1)
                if refs.get((mode, extras)):
                    ax.plot([], [], "k:", lw=1, label="no attack (dotted)")
                title = " ".join([mode, *(f"{a}={b}" for a, b in extras), f"attack {attack}"])
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("q (Byzantine workers)")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.grid(alpha=0.3)
            axes[i][0].set_ylabel("final test top-1 %")
        _shared_legend(fig, [ax for row in axes for ax in row], ncol=5)
        fig.tight_layout(rect=(0, 0.9 / (3.2 * len(rows) + 0.9), 1, 1))
        save(fig, "accuracy_vs_q.png")

    if curves and "eps" in figures:
        save(eps_figure(curves), "eps_vs_q.png")
    return written


def eps_figure(curves: Sequence[EpsCurve]):
    """A matplotlib figure, one panel per placement: eps(q) = c_max(q) / f, its upper
    bound where not certified, DETOX's and the baseline's eps at the same K, and the
    c_max the runs reported (if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.8), squeeze=False)
    for ax, c in zip(axes[0], curves, strict=True):  # the same colour means the same in each
        qs = [r.q for r in c.rows]
        ax.plot(qs, [r.c_max / c.f for r in c.rows], "-o", ms=3, color="C0", label="this placement")
        if not c.certified:
            ax.plot(
                qs,
                [r.upper_bound / c.f for r in c.rows],
                ":",
                color="C0",
                label="upper bound (not certified)",
            )
        if c.detox_eps and not c.label.startswith(("draco_lite", "maj_vote")):
            ax.plot(qs, c.detox_eps, "-s", ms=3, color="C1", label="DETOX, same K")
        if not c.label.startswith("baseline"):
            ax.plot(qs, [q / c.K for q in qs], "--", color="C7", label="baseline, same K")
        if c.used:
            ax.plot(
                [u[0] for u in c.used],
                [u[1] for u in c.used],
                "x",
                color="k",
                label="runs (run.json)",
            )
        own_detox = c.label.startswith(("draco_lite", "maj_vote"))
        detox = f", DETOX r={c.detox_r}" if c.detox_r and not own_detox else ""
        ax.set_title(f"{approach_name(c.label)}, f={c.f}{detox}", fontsize=9)
        ax.set_xlabel("q (Byzantine workers)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("eps(q) = c_max(q) / f")
        ax.grid(alpha=0.3)
    _shared_legend(fig, axes[0])
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def _drop_figure(tables: list[list[PairedCell]], grouping: Grouping, last: int):
    """Measured drop against c / sqrt(f) (c: the mean number of distorted files per step,
    f: files) per scheme: the sqrt(f) model of ALIE's damage predicts one curve for all
    schemes within a panel. A panel per (mode, extras); None without any drop."""
    import matplotlib.pyplot as plt

    points: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for cells in tables:
        for c in cells:
            for g, drop in ((c.a, c.drop_a), (c.b, c.drop_b)):
                if drop is None or id(g) in seen:
                    continue
                seen.add(id(g))
                x = _bias(g)
                if x is None:
                    continue
                half = 0.0 if drop.low is None else drop.high - drop.mean
                points[(g.mode, tuple(g.extras.items()))][g.approach].append(
                    (x, 100 * drop.mean, 100 * half)
                )
    if not points:
        return None
    panels = list(points)
    colors = approach_colors(g.approach for g in grouping.groups)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, sharey=True
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        for approach, pts in points[panel].items():
            pts.sort()
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                ms=4,
                capsize=3,
                ls="-",
                color=colors[approach],
                label=approach_name(approach),
            )
        mode, extras = panel
        ax.set_title(" ".join([mode, *(f"{k}={v}" for k, v in extras)]), fontsize=8)
        ax.set_xlabel("c / sqrt(f)  (c: distorted files per step)")
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("drop from no-attack top-1 (points)")
    _shared_legend(fig, axes[0])
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def _save_figure(out: Path, name: str, build, *args) -> bool:
    """Build a figure with matplotlib (when installed) and write it as ``name``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = build(*args)
    if fig is None:
        return False
    fig.savefig(out / name, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True
