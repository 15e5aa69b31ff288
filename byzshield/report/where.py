"""``--where KEY=V[,V]``: which groups pivot.md shows, matched on what one types (the
config name ``approach=mols``, the label ``approach=mols(l=5, r=3)``, the display name
``approach=MOLS K=15``, ``adversary.q=3``, a group's parameter ``approach.l=5``, any
setting ``batch_size=150``), and refused in one line when a key or value matches nothing
(:func:`check_where`, before the report's long parts)."""

from __future__ import annotations

from collections.abc import Sequence

from byzshield.report.groups import Grouping, _value_str
from byzshield.report.load import ReportError
from byzshield.report.names import _parse, approach_name, family

_ALIASES = {"approach.name": "approach", "mode.name": "mode", "attack.name": "attack"}
_ALIASES["adversary.q"] = "q"


def split_values(text: str) -> list[str]:
    """``a,b`` -> ``[a, b]``, leaving commas inside brackets alone:
    ``mols(l=5, r=3),baseline(K=15)`` -> ``[mols(l=5, r=3), baseline(K=15)]``."""
    values, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            values.append(text[start:k].strip())
            start = k + 1
    values.append(text[start:].strip())
    return [v for v in values if v]


def parse_where(items: Sequence[str]) -> dict[str, set[str]]:
    """``["approach=mols,baseline", "adversary.q=3"]`` -> ``{"approach": {...}, "q": {"3"}}``:
    KEY=V[,V], a repeated key adding values; config spellings of the columns
    (approach.name, mode.name, attack.name, adversary.q) become the column's name.
    Raises :class:`ReportError` naming the item and what is allowed."""
    where: dict[str, set[str]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        values = split_values(text)
        if not eq or not key or not values:
            raise ReportError(
                f"--where takes KEY=VALUE[,VALUE] (KEY: approach, mode, attack, q or another "
                f"config key such as adversary.q or batch_size); got {item!r}"
            )
        where.setdefault(key, set()).update(values)
    return where


def _same(a: str, b: str) -> bool:
    """Equal as text, or as numbers (``0.10`` and ``0.1``)."""
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _label_param(label: str, key: str) -> str | None:
    """Parameter ``key`` of a label ``name(key=value, ...)`` (None when it has none)."""
    value = _parse(label)[1].get(key)
    return None if value is None else str(value)


def _spellings(row: dict, key: str) -> list[str] | None:
    """The values of ``key`` a --where value may name for this row: for approach its
    label, display name and config name; for mode and attack the label and config name;
    for ``GROUP.PARAM`` (approach.l, mode.num_buckets) the parameter; otherwise the
    column. None when the row cannot tell (an unknown key)."""
    if key == "approach":
        label = row["approach"]
        return [label, row.get("name") or approach_name(label), family(label)]
    if key in ("mode", "attack"):
        return [row[key], family(row[key])]
    group, dot, param = key.partition(".")
    if dot and group in ("approach", "mode", "attack"):
        value = _label_param(row[group], param)
        if value is None:
            value = row.get(key)  # the same in every run: not in the label
        return [] if value is None else [value]  # [] : this group has no such parameter
    for name in (key, f"{key}.name", key.removesuffix(".name")):  # dataset = dataset.name
        if name in row:
            return [row[name]]
    return None


def select(rows: Sequence[dict], where: dict[str, set[str]]) -> list[dict]:
    """The rows (report.csv rows, or the report's groups as such rows) matching every
    KEY of ``where`` with one of its values; a key a row cannot tell does not filter."""

    def keep(row: dict) -> bool:
        for key, values in where.items():
            spellings = _spellings(row, key)
            if spellings is not None and not any(_same(v, s) for v in values for s in spellings):
                return False
        return True

    return [r for r in rows if keep(r)]


def group_rows(grouping: Grouping) -> list[dict]:
    """The groups as report.csv-like rows of text (with the settings every run shares),
    for --where."""
    common = {k: _value_str(v) for k, v in grouping.common.items()}
    return [
        {
            **common,
            "approach": g.approach,
            "name": g.name,
            "mode": g.mode,
            "attack": g.attack,
            "q": _value_str(g.q),
            **g.extras,
        }
        for g in grouping.groups
    ]


def _alternatives(spellings: list[str]) -> str:
    """``label (or name, config name)``: how a --where value may name one row's value."""
    first, *others = dict.fromkeys(spellings)
    return f"{first} (or {', '.join(others)})" if others else first


def check_where(rows: Sequence[dict], where: dict[str, set[str]]) -> None:
    """Raise :class:`ReportError`, in one line, for a --where key the report does not
    have, a value no group has (listing those that exist), or keys that together match
    no group."""
    for key, values in where.items():
        known = [s for s in (_spellings(r, key) for r in rows) if s]
        if not known:
            keys = sorted({k for r in rows for k in r} - {"name"} | {"adversary.q"})
            raise ReportError(
                f"--where {key}: no such key in these runs; keys: {', '.join(keys)}, or a "
                "group's parameter such as approach.l or mode.num_buckets"
            )
        if not select(rows, {key: values}):
            have = list(dict.fromkeys(_alternatives(s) for s in known))
            raise ReportError(
                f"--where {key}={','.join(sorted(values))} matches no group; {key} is one "
                f"of: {'; '.join(have)}"
            )
    if not select(rows, where):
        given = " ".join(f"{k}={','.join(sorted(v))}" for k, v in where.items())
        raise ReportError(f"--where {given}: no group has all of these (each matches some)")
