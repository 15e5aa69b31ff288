"""eps(q) = c_max(q) / f of each placement the runs used, against DETOX and the baseline
at the same K, from :func:`byzshield.design.search.worst_case_table` with a work budget
(the same result on every machine)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from byzshield.report.load import RunFolder, _natural, _number


@dataclass
class EpsCurve:
    """eps(q) = c_max(q) / f of one placement, with DETOX's and the baseline's at its K."""

    label: str
    K: int
    f: int
    rows: list  # adversary.WorstCase per q
    detox_r: int | None
    detox_eps: list[float] | None
    used: list[tuple[int, float]]  # (q, c_max / f) the runs themselves reported

    @property
    def certified(self) -> bool:
        return all(r.certified for r in self.rows)


def _placement_params(run: RunFolder) -> tuple[str, dict] | None:
    from byzshield.config import APPROACHES

    name = run.config.get("approach.name")
    if name not in APPROACHES:
        return None
    params = {k: run.config.get(f"approach.{k}") for k in APPROACHES[name].param_keys()}
    return name, params


def placement_of(label: str):
    """The placement of an approach label such as ``mols(l=5, r=3)`` (None when the label
    names no buildable design, e.g. a custom placement's file that is gone)."""
    from byzshield.config import APPROACHES, build_placement
    from byzshield.report.names import _parse

    name, params = _parse(label)
    if name not in APPROACHES:
        return None
    try:
        return build_placement(name, **params)
    except (TypeError, ValueError, OSError):
        return None


def eps_curve(
    label: str,
    placement,
    ran: Sequence[int] = (),
    used: Sequence[tuple[int, float]] = (),
    *,
    q_max: int | None = None,
    work: int = 200_000,
    say=None,
) -> EpsCurve:
    """The :class:`EpsCurve` of one placement for q = 0..q_max (default the larger of
    K // 2 and the largest q in ``ran``), computed with a work budget so the result is
    the same on every machine; ``used``: the (q, c_max / f) the runs reported."""
    from byzshield.design.search import (
        detox_eps,  # DETOX's closed form, as the placement table
        worst_case_table,
    )

    K, f = placement.num_workers, placement.num_files
    top = q_max if q_max is not None else max([K // 2, *ran])
    top = max(0, min(top, K))
    if say:
        say(f"eps: c_max(q) of {label} for q = 0..{top} (work {work})")
    rows = worst_case_table(placement, top, work=work)
    detox_r, eps_detox = detox_eps(K, placement.replication, top)
    return EpsCurve(label, K, f, rows, detox_r, eps_detox, sorted(set(used)))


def eps_curves(
    runs: Sequence[RunFolder],
    *,
    q_max: int | None = None,
    work: int = 200_000,
    say=None,
    notes: list[str],
) -> list[EpsCurve]:
    """One :class:`EpsCurve` per distinct placement of ``runs`` (:func:`eps_curve`)."""
    from byzshield.config import build_placement

    placements: dict[tuple, list[RunFolder]] = defaultdict(list)
    for run in runs:
        found = _placement_params(run)
        if found is not None:
            placements[(found[0], tuple(found[1].items()))].append(run)
    curves = []
    for (name, items), members in sorted(placements.items(), key=lambda kv: _natural(kv[0])):
        params = dict(items)
        label = f"{name}({', '.join(f'{k}={v}' for k, v in items)})"
        try:
            p = build_placement(name, **params)
        except (ValueError, OSError) as exc:
            notes.append(f"eps: could not build placement {label}: {exc}")
            continue
        ran = [r.q for r in members if isinstance(r.q, int)]
        used = [
            (r.q, r.info["selection"]["c_max"] / p.num_files)
            for r in members
            if isinstance(r.q, int) and _number((r.info.get("selection") or {}).get("c_max"))
        ]
        curves.append(eps_curve(label, p, ran, used, q_max=q_max, work=work, say=say))
    return curves
