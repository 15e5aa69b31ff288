"""How the report shows an approach, in its tables and in every figure: one display name
per approach label (:func:`approach_names`: ``mols(l=5, r=3)`` -> ``MOLS K=15``) and one
colour per approach (:func:`approach_colors`), a fixed hue per family so that blue means
MOLS in every figure of every report."""

from __future__ import annotations

from collections.abc import Iterable

from byzshield.report.load import _PLACEMENT, _natural

_FAMILIES = {  # config name -> (display name, K from the parameters, hue)
    "mols": ("MOLS", lambda p: p.get("l", 0) * p.get("r", 0), "#1f77b4"),  # blue
    "rama_one": ("Ramanujan 1", lambda p: p.get("m", 0) * p.get("s", 0), "#17becf"),  # cyan
    "rama_two": ("Ramanujan 2", lambda p: p.get("s", 0) ** 2, "#9467bd"),  # purple
    "draco_lite_attack": ("DETOX (worst)", lambda p: p.get("K"), "#ff7f0e"),  # orange
    "draco_lite": ("DETOX (random)", lambda p: p.get("K"), "#8c564b"),  # brown
    "detox": ("DETOX", lambda p: p.get("K"), "#d62728"),  # red
    "maj_vote": ("DRACO vote", lambda p: p.get("K"), "#e377c2"),  # pink
    "baseline": ("baseline", lambda p: p.get("K"), "#7f7f7f"),  # grey
}
_OTHER_HUES = ("#2ca02c", "#bcbd22", "#000080", "#800000")  # green, olive, navy, maroon


def _parse(label: str) -> tuple[str, dict]:
    """(config name, parameters) of an approach label such as ``mols(l=5, r=3)``."""
    m = _PLACEMENT.match(label)
    if not m:
        return label, {}
    params = {}
    for part in filter(None, (x.strip() for x in m["params"].split(","))):
        k, _, v = part.partition("=")
        params[k.strip()] = int(v) if v.strip().isdigit() else v.strip()
    return m["name"], params


def family(label: str) -> str:
    """The config name of an approach label: ``mols(l=5, r=3)`` -> ``mols``."""
    return _parse(label)[0]


def approach_name(label: str) -> str:
    """The display name of one approach label: ``mols(l=5, r=3)`` -> ``MOLS K=15``,
    ``draco_lite_attack(K=15, r=3)`` -> ``DETOX (worst) K=15 r=3``,
    ``rama_two(m=10, s=5)`` -> ``Ramanujan 2 K=25 m=10`` (m = s is the square design);
    labels of other approaches are unchanged. Within a report use
    :func:`approach_names`, which keeps names of different labels apart."""
    name, params = _parse(label)
    if name not in _FAMILIES:
        return label
    title, k_of, _ = _FAMILIES[name]
    try:
        K = k_of(params)
    except TypeError:
        K = None
    text = f"{title} K={K}" if K else title
    if name in ("draco_lite_attack", "draco_lite", "detox", "maj_vote") and "r" in params:
        text += f" r={params['r']}"
    if name == "rama_two" and params.get("m") not in (None, params.get("s")):
        text += f" m={params['m']}"  # K = s^2 leaves the number of files m * s open
    return text


def approach_names(labels: Iterable[str]) -> dict[str, str]:
    """{label: display name} for the approach labels of one report (the tables' and the
    figures' names): :func:`approach_name`, or the label itself where two labels would
    share a name."""
    unique = list(dict.fromkeys(labels))
    names = {label: approach_name(label) for label in unique}
    taken: dict[str, int] = {}
    for name in names.values():
        taken[name] = taken.get(name, 0) + 1
    return {label: (name if taken[name] == 1 else label) for label, name in names.items()}


def _mix(color: str, white: float) -> str:
    """``color`` mixed with ``white`` (0: unchanged, 1: white), as #rrggbb."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * white):02x}" for c in rgb)


def approach_colors(labels: Iterable[str]) -> dict[str, str]:
    """{label: colour}, one colour per approach, the same in every figure of a report:
    each family has a fixed hue (MOLS blue, Ramanujan 1 cyan, Ramanujan 2 purple, DETOX
    with its worst Byzantine set orange, DETOX with random sets brown, DETOX's placement
    red, DRACO's vote pink, the baseline grey), and several designs of one family (say
    DETOX at K = 15 and K = 25) get shades of it, darkest first in order of the label.
    Approaches of other families take the remaining hues in order."""
    by_family: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        by_family.setdefault(family(label), []).append(label)
    colors: dict[str, str] = {}
    others = iter(_OTHER_HUES * (1 + len(by_family)))
    for name in sorted(by_family, key=lambda n: (n not in _FAMILIES, _natural(n))):
        members = sorted(by_family[name], key=_natural)
        hue = _FAMILIES[name][2] if name in _FAMILIES else next(others)
        for k, label in enumerate(members):
            colors[label] = _mix(hue, 0.55 * k / (len(members) - 1) if len(members) > 1 else 0)
    return colors
