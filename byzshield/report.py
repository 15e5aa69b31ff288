"""Summarise training runs and Hydra sweeps: a Markdown table, CSVs and PNG plots.

    python -m byzshield.report multirun/2026-11-25/17-33-10          # a sweep
    python -m byzshield.report runs/a runs/b --out results            # several folders
    python -m byzshield.report SWEEP --stale-after 30 --ignore threads,log_every
    python -m byzshield.report SWEEP --no-plots                       # tables only
    python -m byzshield.report --help

Every folder under each DIR holding ``metrics.jsonl``, ``run.json`` or ``.hydra/`` is a
run (a Hydra multirun's jobs are the sub-folders ``0/``, ``1/``, ... of the sweep). Each
run gets one status, and every run is shown, whatever its status:

* **complete**: ``metrics.jsonl`` has the final evaluation (``step == max_steps``);
* **running**: not complete, and a file in the folder changed within the last
  ``--stale-after`` minutes (default 10; the trainer appends a line every step);
* **died**: not complete, stale, with at least one step recorded ("died at step N/M");
* **failed to start**: not complete, stale, and no step recorded;
* **refused**: a multirun job whose config could not run (``refused.txt`` says why);
* **queued**: a job of an ``engine=lockstep`` multirun that has its folder but no step
  yet while another job of the sweep is running (lockstep trains the sweep's groups one
  after another).

In a sweep folder (``multirun.yaml``), jobs of the sweep that have no folder yet are
listed as **not started** (Hydra stops a sweep at the first job that exits).

Runs are grouped by every setting that differs between them apart from ``seed`` and
``train_dir`` (``--ignore`` adds keys): approach (with its parameters), mode and attack
(with the parameters that differ between runs of the same name), q, and any other key
that varies (dataset, network, lr, ...), so a row never mixes runs that differ in more
than the seed. A row's statistics are over its complete runs only: mean ± sample
standard deviation (n - 1) and n. Train time is the sum of the per-step ``step_s``
(training steps only); wall time is from file modification times (``run.json`` is
written at the start, ``metrics.jsonl`` at the last record), so it includes evaluations
and checkpoints, and means nothing for folders copied without their times. The time
split is the mean per step of each ``*_s`` column.

Outputs, in ``--out`` (default ``report/`` inside the first DIR): ``report.md``,
``report.csv`` (one row per group), ``runs.csv`` (one row per run), and with matplotlib
(``pip install 'byzshield[report]'``) ``accuracy_vs_step_<mode>_q<q>.png`` (one panel
per attack, one line per approach), ``accuracy_vs_q.png`` (final accuracy against q:
where each defence breaks) and ``eps_vs_q.png`` (eps(q) = c_max(q) / f of each
placement found, against DETOX and the baseline at the same K, from
:func:`byzshield.adversary.worst_case_table` with a work budget).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

__all__ = [
    "STATUSES",
    "Group",
    "RunFolder",
    "discover",
    "group_runs",
    "main",
    "pending_jobs",
    "read_run",
    "write_report",
]

STATUSES = ("complete", "running", "queued", "died", "failed to start", "refused")
"""A run's status, in the order the report lists them."""

TIME_COLUMNS = (
    "compute_s",
    "communication_s",
    "attack_s",
    "vote_s",
    "aggregation_s",
    "update_s",
    "other_s",
    "step_s",
)
"""The per-step time columns of metrics.jsonl the time split averages."""

DEFAULT_IGNORE = ("seed", "train_dir")
"""Config keys that never separate two runs into different rows."""

SKIP_DIRS = {"checkpoints", "tensorboard", ".hydra", ".submitit", "report", "__pycache__"}
"""Folders never searched for runs (a run's own parts, and reports)."""

GROUPS = ("approach", "mode", "attack")
PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install 'byzshield[report]')"
"""Config groups shown as their own columns."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReportError(Exception):
    """Bad input: printed as one line by the command line."""


# --------------------------------------------------------------------------------------
# Reading one run


@dataclass
class RunFolder:
    """What the report knows about one run folder.

    ``config`` is the flattened composed config (``{"approach.name": "mols", ...}``)
    from ``.hydra/config.yaml``, or what ``run.json`` tells when there is no Hydra
    folder (``config_source`` says which). ``evals`` are the evaluation records of the
    last run written to the folder (``{"step", "top1", "top5", "test_loss"}``).
    """

    path: Path
    config: dict = field(default_factory=dict)
    config_source: str = "none"
    info: dict = field(default_factory=dict)
    status: str = "failed to start"
    steps_done: int = 0
    max_steps: int | None = None
    evals: list[dict] = field(default_factory=list)
    final: dict | None = None
    train_s: float | None = None
    wall_s: float | None = None
    distorted_frac: float | None = None
    time_split: dict = field(default_factory=dict)
    modified: float = 0.0
    age_s: float = 0.0
    reason: str = ""  # why a refused job was refused
    warnings: list[str] = field(default_factory=list)

    @property
    def seed(self):
        return self.config.get("seed", self.info.get("seed"))

    @property
    def q(self):
        q = self.config.get("attack.q")
        if q is None:
            q = (self.info.get("selection") or {}).get("q")
        return q

    @property
    def best_top1(self) -> float | None:
        values = [e["top1"] for e in self.evals if _number(e.get("top1"))]
        return max(values) if values else None

    @property
    def last_eval(self) -> dict | None:
        return self.evals[-1] if self.evals else None

    @property
    def outside_guarantee(self) -> bool:
        return bool(self.info.get("outside_guarantee"))

    def progress(self) -> str:
        """ "12/30" steps done out of max_steps ("12/?" when max_steps is unknown)."""
        return f"{self.steps_done}/{self.max_steps if self.max_steps is not None else '?'}"

    def describe_status(self) -> str:
        """The status with how far the run got, e.g. "died at step 12/30"."""
        if self.status == "died":
            return f"died at step {self.progress()}"
        if self.status == "running":
            return f"running ({self.progress()})" if self.steps_done else "running (starting)"
        if self.status == "refused" and self.reason:
            return f"refused: {self.reason}"
        return self.status


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flatten(tree, prefix: str = "") -> dict:
    """{"a.b": value} for a nested mapping; lists stay values."""
    out: dict = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(_flatten(v, key + "."))
            else:
                out[key] = v
    return out


_PLACEMENT = re.compile(r"^(?P<name>[A-Za-z_]\w*)\((?P<params>[^)]*)\)")


def _config_from_info(info: dict) -> dict:
    """The config keys run.json determines, for a run without ``.hydra/config.yaml``."""
    out: dict = {}
    m = _PLACEMENT.match(str(info.get("placement", "")))
    if m:
        out["approach.name"] = m["name"]
        for part in filter(None, (s.strip() for s in m["params"].split(","))):
            k, _, v = part.partition("=")
            out[f"approach.{k.strip()}"] = int(v) if v.strip().lstrip("-").isdigit() else v
    if "mode" in info:
        out["mode.name"] = info["mode"]
    attack = info.get("attack")
    if isinstance(attack, dict):
        for k, v in attack.items():
            if not k.endswith("_used"):  # what the run derived, not what was asked
                out[f"attack.{k}"] = v
    selection = info.get("selection")
    if isinstance(selection, dict):
        out["attack.q"] = selection.get("q")
        out["attack.selection"] = selection.get("kind")
    for k in ("seed", "max_steps", "engine", "device"):
        if k in info:
            out[k] = info[k]
    return out


def _newest_mtime(folder: Path) -> float:
    """The newest modification time of the folder, its files and its checkpoints."""
    newest = 0.0
    for sub in (folder, folder / "checkpoints", folder / "tensorboard", folder / ".hydra"):
        try:
            newest = max(newest, sub.stat().st_mtime)
            with os.scandir(sub) as it:
                for entry in it:
                    with contextlib.suppress(OSError):  # a file removed meanwhile
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            pass
    return newest


class _Metrics:
    """Streams metrics.jsonl: per-step sums of the last run written to the file, and
    its evaluations, without keeping every step in memory."""

    def __init__(self) -> None:
        self.segments = 0
        self._reset()

    def _reset(self) -> None:
        self.segments += 1
        self.last_step: int | None = None
        self.num_steps = 0
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.evals: list[dict] = []

    def add(self, record: dict) -> None:
        step = record["step"]
        if record.get("event") == "eval":
            self.evals.append({k: record.get(k) for k in ("step", "top1", "top5", "test_loss")})
            return
        if self.last_step is not None and step <= self.last_step:
            self._reset()  # the folder was reused: a new run starts over at step 0
        self.last_step = step
        self.num_steps += 1
        for k in (*TIME_COLUMNS, "distorted"):
            v = record.get(k)
            if _number(v):
                self.sums[k] += v
                self.counts[k] += 1

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else None


def _read_metrics(path: Path, warnings: list[str]) -> _Metrics:
    metrics = _Metrics()
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(number)
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                bad.append(number)
                continue
            metrics.add(record)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.append(
            f"{path}: skipped {len(bad)} unreadable line{'s' if len(bad) > 1 else ''} "
            f"(line {shown})"
        )
    if metrics.segments > 1:
        warnings.append(
            f"{path}: holds {metrics.segments} runs appended to one folder; reporting the last"
        )
    return metrics


def _load_yaml(path: Path, warnings: list[str]):
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_Loader)  # the C or Python *safe* loader
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        warnings.append(f"{path}: unreadable ({type(exc).__name__}); ignored")
        return None


def read_run(folder: Path, *, now: float | None = None, stale_after: float = 600.0) -> RunFolder:
    """Read one run folder; ``stale_after`` seconds without a change means it is not
    running any more (see the module docstring for the status rule)."""
    folder = Path(folder)
    run = RunFolder(folder)
    now = time.time() if now is None else now
    info_path = folder / "run.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            run.info = info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            run.warnings.append(f"{info_path}: not valid JSON; ignored")
    config = _load_yaml(folder / ".hydra" / "config.yaml", run.warnings)
    if isinstance(config, dict):
        run.config, run.config_source = _flatten(config), ".hydra/config.yaml"
    elif run.info:
        run.config, run.config_source = _config_from_info(run.info), "run.json"
    max_steps = run.info.get("max_steps")
    if not isinstance(max_steps, int) and run.config.get("epochs") is None:
        max_steps = run.config.get("max_steps")  # epochs, when set, win over max_steps
    run.max_steps = max_steps if isinstance(max_steps, int) else None

    metrics_path = folder / "metrics.jsonl"
    if metrics_path.is_file():
        try:
            m = _read_metrics(metrics_path, run.warnings)
        except OSError as exc:
            run.warnings.append(f"{metrics_path}: unreadable ({exc.strerror}); ignored")
            m = _Metrics()
        run.evals = m.evals
        run.steps_done = (m.last_step + 1) if m.last_step is not None else 0
        if m.num_steps:
            run.train_s = m.sums["step_s"] if m.counts.get("step_s") else None
            run.time_split = {k: m.mean(k) for k in TIME_COLUMNS}
            f = run.info.get("f")
            d = m.mean("distorted")
            run.distorted_frac = d / f if d is not None and isinstance(f, int) and f else None
        finals = [e for e in m.evals if run.max_steps is not None and e["step"] == run.max_steps]
        run.final = finals[-1] if finals else None
        if info_path.is_file():
            wall = metrics_path.stat().st_mtime - info_path.stat().st_mtime
            run.wall_s = wall if wall >= 0 else None
    run.modified = _newest_mtime(folder)
    run.age_s = max(0.0, now - run.modified)
    refused = folder / "refused.txt"
    if run.final is not None:
        run.status = "complete"
        run.steps_done = max(run.steps_done, run.max_steps or 0)
    elif refused.is_file() and not run.steps_done:
        run.status = "refused"
        run.reason = refused.read_text(errors="replace").strip().splitlines()[0][:300]
    elif run.age_s <= stale_after:
        run.status = "running"
    elif run.steps_done:
        run.status = "died"
    else:
        run.status = "failed to start"
    return run


def _mark_queued(runs: list[RunFolder]) -> None:
    """A lockstep multirun makes every job's folder before it trains the first group:
    its jobs with no step yet are queued, not failed, while a job beside them runs."""
    running = {r.path.parent for r in runs if r.status == "running"}
    for run in runs:
        if (
            run.status == "failed to start"
            and run.path.parent in running
            and run.config.get("engine") == "lockstep"
        ):
            run.status = "queued"


# --------------------------------------------------------------------------------------
# Finding runs and sweeps


def _is_run(folder: Path, names: set[str]) -> bool:
    return "metrics.jsonl" in names or "run.json" in names or (folder / ".hydra").is_dir()


def discover(dirs: Sequence[Path | str]) -> tuple[list[Path], list[Path]]:
    """(run folders, sweep folders) under ``dirs``, each sorted and listed once.

    A run folder holds metrics.jsonl, run.json or .hydra/; a sweep folder holds
    multirun.yaml. Raises :class:`ReportError` for a missing folder or one with no runs.
    """
    runs: dict[Path, None] = {}
    sweeps: dict[Path, None] = {}
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise ReportError(f"no such folder: {root}")
        if not root.is_dir():
            raise ReportError(f"not a folder: {root} (give run or sweep folders)")
        found = 0
        for current, subdirs, files in os.walk(root):
            here = Path(current)
            subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS and s[0] != ".")
            names = set(files)
            if "multirun.yaml" in names:
                sweeps.setdefault(here.resolve(), None)
            if _is_run(here, names):
                runs.setdefault(here, None)
                found += 1
        if not found:
            raise ReportError(
                f"no runs under {root} (a run folder holds metrics.jsonl, run.json or .hydra/)"
            )
    unique: dict[Path, Path] = {}
    for path in runs:
        unique.setdefault(path.resolve(), path)
    return sorted(unique.values(), key=_natural), sorted(sweeps, key=_natural)


def _natural(value) -> list:
    """Sort key: numbers inside strings compare as numbers ("2" < "10")."""
    return [
        (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(value)) if t
    ]


@dataclass
class PendingJob:
    """A job of a Hydra sweep that has no folder (not started)."""

    sweep: Path
    num: int
    overrides: list[str]


def pending_jobs(sweep: Path, runs: Iterable[RunFolder]) -> tuple[int | None, list[PendingJob]]:
    """(number of jobs the sweep launches, those with no folder) from multirun.yaml.

    None when the sweep cannot be expanded here (a sweeper other than Hydra's basic one,
    or glob/range sweeps that need the config)."""
    warnings: list[str] = []
    cfg = _load_yaml(sweep / "multirun.yaml", warnings)
    try:
        hydra_cfg = cfg["hydra"]
        task = list(hydra_cfg["overrides"]["task"])
        params = hydra_cfg.get("sweeper", {}).get("params") or {}
        subdir = hydra_cfg.get("sweep", {}).get("subdir")
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(
            [*(f"{k}={v}" for k, v in params.items()), *task]
        )
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # a sweep we cannot expand (other sweeper, glob): say nothing
        return None, []
    by_key: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            by_key[key].add(value)
    swept = {k for k, vs in by_key.items() if len(vs) > 1}  # what tells the jobs apart
    started: set[int] = set()
    mine = [r for r in runs if r.path.resolve().parent == sweep]
    for r in mine:
        if subdir == "${hydra.job.num}" and r.path.name.isdigit():
            started.add(int(r.path.name))
        else:
            h = _load_yaml(r.path / ".hydra" / "hydra.yaml", warnings) or {}
            num = (h.get("hydra", {}).get("job", {}) or {}).get("num")
            if isinstance(num, int):
                started.add(num)
    pending = [
        PendingJob(sweep, n, [o for o in job if o.split("=", 1)[0] in swept])
        for n, job in enumerate(jobs)
        if n not in started
    ]
    return len(jobs), pending


# --------------------------------------------------------------------------------------
# Grouping


def _value_str(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return f"[{','.join(value)}]"  # pre=[nnm]
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs that differ in the seed only (and in ignored keys)."""

    key: tuple
    approach: str
    mode: str
    attack: str
    q: object
    extras: dict
    runs: list[RunFolder] = field(default_factory=list)

    def with_status(self, status: str) -> list[RunFolder]:
        return [r for r in self.runs if r.status == status]

    @property
    def complete(self) -> list[RunFolder]:
        return self.with_status("complete")

    def label(self, *, q: bool = True) -> str:
        parts = [self.approach, self.mode, self.attack]
        if q:
            parts.append(f"q={self.q}")
        parts += [f"{k}={v}" for k, v in self.extras.items()]
        return " ".join(parts)

    def status_text(self) -> str:
        """e.g. "2 complete, 1 died at step 7/30"."""
        out = []
        for status in STATUSES:
            runs = self.with_status(status)
            if not runs:
                continue
            if status in ("running", "died"):
                details = ", ".join(r.progress() for r in runs)
                word = "running" if status == "running" else "died at"
                out.append(f"{len(runs)} {word} {details}")
            else:
                out.append(f"{len(runs)} {status}")
        return ", ".join(out)


@dataclass
class Grouping:
    """Groups in report order, the keys that vary, and what all runs share."""

    groups: list[Group]
    extra_keys: list[str]
    common: dict
    ignored: tuple[str, ...]


def _group_label(cfg: dict, group: str, varying: set[str], *, all_params: bool) -> str:
    name = cfg.get(f"{group}.name")
    prefix = f"{group}."
    params = [
        (k[len(prefix) :], v)
        for k, v in cfg.items()
        if k.startswith(prefix) and k != f"{group}.name" and k != "attack.q"
        if all_params or k in varying
        if not (k == f"{group}.pre" and v == [])  # no pre-aggregation: nothing to say
    ]
    base = "?" if name is None else str(name)
    if not params:
        return base
    return f"{base}({', '.join(f'{k}={_value_str(v)}' for k, v in params)})"


def _column_name(key: str) -> str:
    return key[: -len(".name")] if key.endswith(".name") else key


def group_runs(runs: Sequence[RunFolder], ignore: Iterable[str] = DEFAULT_IGNORE) -> Grouping:
    """Group ``runs`` by every config key apart from ``ignore``.

    Approach labels show all the approach's parameters; mode and attack labels show the
    parameters that differ between runs of the same mode or attack; other keys that vary
    between runs become extra columns."""
    ignored = tuple(dict.fromkeys(ignore))

    def kept(k: str) -> bool:
        return not any(k == i or k.startswith(i + ".") for i in ignored)

    configs = [{k: v for k, v in r.config.items() if kept(k)} for r in runs]
    all_keys = sorted({k for c in configs for k in c})
    values: dict[str, set[str]] = {
        k: {_canon(c[k]) if k in c else "<missing>" for c in configs} for k in all_keys
    }
    # mode/attack parameters that differ between runs of the same name
    varying_in_group: set[str] = set()
    for group in ("mode", "attack"):
        by_name: dict[str, list[dict]] = defaultdict(list)
        for c in configs:
            by_name[_canon(c.get(f"{group}.name"))].append(c)
        for members in by_name.values():
            keys = {k for c in members for k in c if k.startswith(group + ".")}
            for k in keys:
                if len({_canon(c[k]) if k in c else "<missing>" for c in members}) > 1:
                    varying_in_group.add(k)
    extra_keys = [
        k
        for k in all_keys
        if not k.startswith(tuple(g + "." for g in GROUPS))
        and k != "max_steps"  # always shown, as "steps"
        and len(values[k]) > 1
    ]
    common = {
        k: configs[0][k]
        for k in all_keys
        if len(values[k]) == 1 and "<missing>" not in values[k] and not k.startswith("approach.")
    }
    groups: dict[tuple, Group] = {}
    for run, c in zip(runs, configs, strict=True):
        key = tuple(sorted((k, _canon(v)) for k, v in c.items()))
        if key not in groups:
            groups[key] = Group(
                key,
                _group_label(c, "approach", set(), all_params=True),
                _group_label(c, "mode", varying_in_group, all_params=False),
                _group_label(c, "attack", varying_in_group, all_params=False),
                c.get("attack.q", run.q),
                {_column_name(k): _value_str(c[k]) if k in c else "?" for k in extra_keys},
            )
        groups[key].runs.append(run)
    ordered = sorted(
        groups.values(),
        key=lambda g: (
            _natural(g.approach),
            _natural(g.mode),
            _natural(g.attack),
            _natural(g.q),
            [_natural(v) for v in g.extras.values()],
        ),
    )
    for g in ordered:
        g.runs.sort(key=lambda r: (_natural(r.seed), _natural(r.path)))
    return Grouping(ordered, [_column_name(k) for k in extra_keys], common, ignored)


# --------------------------------------------------------------------------------------
# Statistics


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with n - 1, n) of the finite values; the std
    is None for fewer than two values."""
    vals = [float(v) for v in values if _number(v)]
    if not vals:
        return None, None, 0
    mean = math.fsum(vals) / len(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std, len(vals)


def _group_stats(g: Group, last: int = 1) -> dict:
    from byzshield.paired import tail_accuracy

    done = g.complete
    out: dict = {}
    for name, values in (
        ("final_top1", [r.final.get("top1") for r in done]),
        ("tail_top1", [tail_accuracy(r.evals, last) for r in done]),
        ("best_top1", [r.best_top1 for r in done]),
        ("final_top5", [r.final.get("top5") for r in done]),
        ("final_test_loss", [r.final.get("test_loss") for r in done]),
        ("train_s", [r.train_s for r in done]),
        ("wall_s", [r.wall_s for r in done]),
        ("distorted_frac", [r.distorted_frac for r in done]),
    ):
        out[name] = mean_std(values)
    for k in TIME_COLUMNS:
        out[k] = mean_std(r.time_split.get(k) for r in done)
    return out


def _fmt(stat: tuple, scale: float = 1.0, digits: int = 2) -> str:
    mean, std, n = stat
    if not n:
        return "—"
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


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
# eps(q): the placements found, against DETOX and the baseline


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
    from byzshield.placement import APPROACHES

    name = run.config.get("approach.name")
    if name not in APPROACHES:
        return None
    keys = APPROACHES[name][1]
    params = {k: run.config.get(f"approach.{k}") for k in keys}
    return name, params


def eps_curves(
    runs: Sequence[RunFolder],
    *,
    q_max: int | None = None,
    work: int = 200_000,
    say=None,
    notes: list[str],
) -> list[EpsCurve]:
    """One :class:`EpsCurve` per distinct placement of ``runs`` (q = 0..q_max, default
    the larger of K // 2 and the largest q that ran), computed with a work budget so the
    result is the same on every machine."""
    from byzshield.adversary import (
        detox_eps,  # DETOX's closed form, as the placement table
        worst_case_table,
    )
    from byzshield.placement import build_placement

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
        K, f = p.num_workers, p.num_files
        ran = [r.q for r in members if isinstance(r.q, int)]
        top = q_max if q_max is not None else max([K // 2, *ran])
        top = max(0, min(top, K))
        if say:
            say(f"eps: c_max(q) of {label} for q = 0..{top} (work {work})")
        rows = worst_case_table(p, top, work=work)
        detox_r, eps_detox = detox_eps(K, p.replication, top)
        used = sorted(
            {
                (r.q, r.info["selection"]["c_max"] / f)
                for r in members
                if isinstance(r.q, int) and _number((r.info.get("selection") or {}).get("c_max"))
            }
        )
        curves.append(EpsCurve(label, K, f, rows, detox_r, eps_detox, used))
    return curves


# --------------------------------------------------------------------------------------
# Writing


def _runs_csv(runs: Sequence[RunFolder], grouping: Grouping, out: Path) -> None:
    group_of = {id(r): g for g in grouping.groups for r in g.runs}
    header = [
        "path",
        "status",
        "approach",
        "mode",
        "attack",
        "q",
        *grouping.extra_keys,
        "seed",
        "steps_done",
        "max_steps",
        "final_top1",
        "best_top1",
        "last_eval_step",
        "last_eval_top1",
        "train_s",
        "wall_s",
        "distorted_frac",
        *TIME_COLUMNS,
        "outside_guarantee",
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
                            g.mode,
                            g.attack,
                            g.q,
                            *g.extras.values(),
                            r.seed,
                            r.steps_done,
                            r.max_steps,
                            (r.final or {}).get("top1"),
                            r.best_top1,
                            last.get("step"),
                            last.get("top1"),
                            r.train_s,
                            r.wall_s,
                            r.distorted_frac,
                            *(r.time_split.get(k) for k in TIME_COLUMNS),
                            r.outside_guarantee,
                            r.config_source,
                            _utc(r.modified),
                        ]
                    )
                )


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
    for m in measures:
        header += [f"{m}_mean", f"{m}_std"]
    header += [f"{k}_mean" for k in TIME_COLUMNS]
    header += ["outside_guarantee", "status"]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for g, s in zip(grouping.groups, stats, strict=True):
            row = [g.approach, g.mode, g.attack, g.q, *g.extras.values(), len(g.runs)]
            row += [len(g.with_status(st)) for st in STATUSES]
            row += [" ".join(_value_str(r.seed) for r in g.runs), _max_steps(g)]
            for m in measures:
                row += [s[m][0], s[m][1]]
            row += [s[k][0] for k in TIME_COLUMNS]
            row += [any(r.outside_guarantee for r in g.runs), g.status_text()]
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
) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    out = io.StringIO()
    out.write("# Training report\n\n")
    out.write("Sources: " + ", ".join(f"`{d}`" for d in dirs) + "\n\n")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    out.write(f"{len(runs)} run{'s' if len(runs) != 1 else ''}: {summary}.")
    if pending:
        out.write(f" {len(pending)} sweep job{'s' if len(pending) > 1 else ''} not started.")
    out.write("\n\n")
    for sweep, size in sweep_sizes.items():
        if size is not None:
            started = size - sum(p.sweep == sweep for p in pending)
            out.write(f"Sweep `{sweep}`: {started} of {size} jobs have a folder.\n\n")
    out.write(
        "Status: *complete* = final evaluation at max_steps recorded; *running* = not "
        f"complete, a file changed within {stale_after / 60:g} min; *died* = not "
        "complete, stale, some steps recorded; *failed to start* = stale, no step "
        "recorded; *queued* = a lockstep sweep's job waiting for its group; *refused* = "
        "the job's config could not run (refused.txt). "
        "Statistics are over the complete runs of a row (n): mean ± sample "
        "std (n - 1).\n\n"
    )
    if grouping.common:
        common = ", ".join(f"{k}={_value_str(v)}" for k, v in grouping.common.items())
        out.write(f"Common to all runs: {common}.\n\n")
    if grouping.ignored:
        out.write(f"Not distinguishing rows: {', '.join(grouping.ignored)}.\n\n")

    out.write("## Accuracy\n\n")
    header = ["approach", "mode", "attack", "q", *grouping.extra_keys]
    tail = [f"last-{last} top-1 %"] if last > 1 else []
    header += ["n", "final top-1 %", *tail, "best top-1 %", "steps", "train s", "distorted"]
    header.append("runs")
    rows = []
    for g, s in zip(grouping.groups, stats, strict=True):
        q = f"{g.q}*" if any(r.outside_guarantee for r in g.runs) else g.q
        rows.append(
            [
                g.approach,
                g.mode,
                g.attack,
                q,
                *g.extras.values(),
                s["final_top1"][2],
                _fmt(s["final_top1"], 100),
                *([_fmt(s["tail_top1"], 100)] if last > 1 else []),
                _fmt(s["best_top1"], 100),
                _max_steps(g),
                _fmt(s["train_s"], 1, 1),
                _fmt(s["distorted_frac"], 1, 3),
                g.status_text(),
            ]
        )
    out.write(_md_table(header, rows))
    out.write(
        "\nfinal: the evaluation at max_steps; "
        + (f"last-{last}: the mean of the run's last {last} evaluations; " if last > 1 else "")
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
            g.approach,
            g.mode,
            g.attack,
            g.q,
            *g.extras.values(),
            s["step_s"][2],
            *(_fmt((s[k][0], None, s[k][2]), 1000, 1) for k in TIME_COLUMNS),
            _fmt(s["wall_s"], 1, 1),
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
        out.write("## Notes\n\n")
        out.writelines(f"- {n}\n" for n in notes)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# Plots


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


# --------------------------------------------------------------------------------------
# The command


# --------------------------------------------------------------------------------------
# Paired comparisons (--paired): A - B per cell, over the seeds both have


@dataclass
class PairedCell:
    """One cell of a --paired comparison: the matched groups of both sides, their
    no-attack references, and the per-seed statistics (see :mod:`byzshield.paired`)."""

    key: tuple
    a: Group
    b: Group
    seeds: list
    acc_a: list[float]
    acc_b: list[float]
    diff: object  # PairedInterval of acc_a - acc_b
    drop_a: object = None  # PairedInterval of ref_a - acc_a (vs 0)
    drop_b: object = None
    drop_diff: object = None  # PairedInterval of drop_a - drop_b


def _by_seed(g: Group | None, last: int) -> dict:
    from byzshield.paired import tail_accuracy

    if g is None:
        return {}
    out = {}
    for r in g.complete:
        acc = tail_accuracy(r.evals, last)
        if acc is not None:
            out[_canon(r.seed)] = acc
    return out


def paired_cells(grouping: Grouping, spec: str, *, last: int = 1) -> list[PairedCell]:
    """The cells of ``spec`` ("A vs B", see :func:`byzshield.paired.parse_pair`): groups
    of both sides that agree on everything but the approach (and the mode, when a side
    names one), each with its q = 0 reference of the same approach, mode and extras."""
    from byzshield.paired import paired_interval, parse_pair

    try:
        side_a, side_b = parse_pair(spec)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    with_mode = side_a.mode is not None or side_b.mode is not None

    def key(g: Group) -> tuple:
        extras = tuple(g.extras.items())
        return (
            (g.attack, _canon(g.q), extras)
            if with_mode
            else (g.mode, g.attack, _canon(g.q), extras)
        )

    def side(sd) -> dict[tuple, Group]:
        chosen: dict[tuple, Group] = {}
        for g in grouping.groups:
            if g.approach != sd.approach or (sd.mode is not None and g.mode != sd.mode):
                continue
            k = key(g)
            if k in chosen:
                raise ReportError(
                    f"--paired: {sd.describe()} has several groups for one cell (modes "
                    f"{chosen[k].mode} and {g.mode}); name the mode as 'APPROACH / MODE'"
                )
            chosen[k] = g
        if not chosen:
            labels = sorted({f"{g.approach} / {g.mode}" for g in grouping.groups})
            raise ReportError(
                f"--paired: no runs of {sd.describe()}; the report has {'; '.join(labels)}"
            )
        return chosen

    groups_a, groups_b = side(side_a), side(side_b)

    def reference(g: Group) -> Group | None:
        for other in grouping.groups:
            if (
                other.approach == g.approach
                and other.mode == g.mode
                and other.extras == g.extras
                and _number(other.q)
                and other.q == 0
            ):
                return other
        return None

    cells = []
    for k in [k for k in groups_a if k in groups_b]:
        ga, gb = groups_a[k], groups_b[k]
        acc_a, acc_b = _by_seed(ga, last), _by_seed(gb, last)
        seeds = sorted(set(acc_a) & set(acc_b), key=_natural)
        if not seeds:
            continue
        a = [acc_a[s] for s in seeds]
        b = [acc_b[s] for s in seeds]
        cell = PairedCell(k, ga, gb, seeds, a, b, paired_interval(a, b))
        if _number(ga.q) and ga.q != 0:
            ref_a, ref_b = _by_seed(reference(ga), last), _by_seed(reference(gb), last)
            both = [s for s in seeds if s in ref_a and s in ref_b]
            if both:
                da = [ref_a[s] - acc_a[s] for s in both]
                db = [ref_b[s] - acc_b[s] for s in both]
                zero = [0.0] * len(both)
                cell.drop_a = paired_interval(da, zero)
                cell.drop_b = paired_interval(db, zero)
                cell.drop_diff = paired_interval(da, db)
        cells.append(cell)
    cells.sort(key=lambda c: [_natural(x) for x in c.key])
    return cells


def _interval_text(stat, scale: float = 100.0) -> str:
    if stat is None:
        return "—"
    if stat.low is None:
        return f"{stat.mean * scale:+.1f}"
    mark = " *" if stat.distinguishable else ""
    return f"{stat.mean * scale:+.1f} [{stat.low * scale:+.1f}, {stat.high * scale:+.1f}]{mark}"


def _paired_markdown(specs: Sequence[str], tables: list[list[PairedCell]], last: int) -> str:
    what = "the final evaluation" if last == 1 else f"the mean of the last {last} evaluations"
    lines = [
        "# Paired comparisons",
        "",
        f"Accuracy: top-1 % of {what}. Per cell, over the seeds both sides ran (paired): "
        "the mean difference A - B and its 95 % interval (Student's t, n - 1 degrees of "
        "freedom); `*` marks an interval that excludes 0. Drop: a scheme's loss from its "
        "own no-attack (q = 0) reference of the same rule and settings, same seeds; "
        "drop A - drop B > 0 means A loses more to the attack. About 1 cell in 20 with no "
        "true difference is marked by chance.",
        "",
    ]
    for spec, cells in zip(specs, tables, strict=True):
        lines += [f"## {spec}", ""]
        if not cells:
            lines += ["No cell has complete runs of both sides with a common seed.", ""]
            continue
        extra_names = [k for k, _ in cells[0].key[-1]]
        head = (["mode"] if len(cells[0].key) == 4 else []) + ["attack", "q", *extra_names]
        header = [*head, "n", "A %", "B %", "A - B", "drop A", "drop B", "drop A - drop B"]
        header += ["c/√f A", "c/√f B"]
        rows = []
        agree = decided = 0
        for c in cells:
            fixed = list(c.key[:-1])
            fixed[-1] = c.a.q  # q as shown
            values = [*fixed, *(v for _, v in c.key[-1])]
            bias_a, bias_b = _bias(c.a), _bias(c.b)
            rows.append(
                [
                    *values,
                    c.diff.n,
                    f"{100 * math.fsum(c.acc_a) / len(c.acc_a):.1f}",
                    f"{100 * math.fsum(c.acc_b) / len(c.acc_b):.1f}",
                    _interval_text(c.diff),
                    _interval_text(c.drop_a),
                    _interval_text(c.drop_b),
                    _interval_text(c.drop_diff),
                    "—" if bias_a is None else f"{bias_a:.2f}",
                    "—" if bias_b is None else f"{bias_b:.2f}",
                ]
            )
            d = c.drop_diff
            known = None not in (bias_a, bias_b) and bias_a != bias_b
            if known and d is not None and d.distinguishable:
                decided += 1
                agree += (d.mean > 0) == (bias_a > bias_b)
        marked = sum(c.diff.distinguishable for c in cells)
        lines += [
            f"A = {cells[0].a.approach} / {cells[0].a.mode}, B = {cells[0].b.approach} / "
            f"{cells[0].b.mode}; {len(cells)} cells, {marked} with A - B distinguishable "
            f"from 0. Where the drops differ distinguishably and c/√f differs, the side "
            f"with the larger c/√f loses more in {agree} of {decided} cells.",
            "",
            _md_table(header, rows),
        ]
    lines += [
        "c/√f: the mean number of files a Byzantine copy won per step (c, measured), over "
        "the square root of the number of files f. At a fixed batch a file of b/f samples "
        "has a gradient spread of about σ·√(f/b), ALIE shifts each file it wins by z times "
        "that spread, so a mean-like rule moves by about (c/f)·z·σ·√(f/b) = z·σ·c/√(f·b): "
        "the model predicts the larger drop for the larger c/√f.",
        "",
    ]
    return "\n".join(lines)


def _bias(g: Group) -> float | None:
    """c / sqrt(f) of a group: its runs' mean distorted files per step over sqrt(files)."""
    fracs = [r.distorted_frac for r in g.complete if _number(r.distorted_frac)]
    f = _files(g)
    if not fracs or not f:
        return None
    return math.fsum(fracs) / len(fracs) * f / math.sqrt(f)


def _paired_csv(specs: Sequence[str], tables: list[list[PairedCell]], out: Path) -> None:
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["pair", "a", "b", "mode_a", "mode_b", "attack", "q", "extras", "n", "seeds",
             "acc_a", "acc_b"]
            + [f"{name}_{part}" for name in ("diff", "drop_a", "drop_b", "drop_diff")
               for part in ("mean", "low", "high", "distinguishable")]
        )  # fmt: skip
        for spec, cells in zip(specs, tables, strict=True):
            for c in cells:
                row = [
                    spec, c.a.approach, c.b.approach, c.a.mode, c.b.mode, c.a.attack, c.a.q,
                    json.dumps(dict(c.key[-1]), sort_keys=True), c.diff.n,
                    " ".join(map(str, c.seeds)),
                    math.fsum(c.acc_a) / len(c.acc_a), math.fsum(c.acc_b) / len(c.acc_b),
                ]  # fmt: skip
                for stat in (c.diff, c.drop_a, c.drop_b, c.drop_diff):
                    if stat is None:
                        row += ["", "", "", ""]
                        continue
                    low = "" if stat.low is None else stat.low
                    high = "" if stat.high is None else stat.high
                    row += [stat.mean, low, high, stat.distinguishable]
                w.writerow(row)


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


def _files(g: Group) -> int | None:
    for r in g.runs:
        f = r.info.get("f")
        if isinstance(f, int) and f > 0:
            return f
    return None


@dataclass
class Report:
    """What :func:`write_report` produced."""

    out: Path
    files: list[str]
    runs: list[RunFolder]
    grouping: Grouping
    pending: list[PendingJob]
    warnings: list[str]


def write_report(
    dirs: Sequence[Path | str],
    out: Path | str | None = None,
    *,
    stale_after: float = 600.0,
    ignore: Iterable[str] = (),
    plots: bool = True,
    eps: bool = True,
    eps_q_max: int | None = None,
    eps_work: int = 200_000,
    progress_every: int = 100,
    say=None,
    now: float | None = None,
    paired: Sequence[str] = (),
    last_evals: int = 1,
    figures: Sequence[str] = FIGURES,
) -> Report:
    """Read every run under ``dirs`` and write the report into ``out`` (see the module
    docstring); ``say`` receives progress lines. Raises :class:`ReportError` on bad input."""
    say = say or (lambda message: None)
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ReportError("give at least one run or sweep folder")
    paths, sweeps = discover(dirs)
    out = Path(out) if out is not None else dirs[0] / "report"
    large = len(paths) > progress_every
    if large:
        say(f"report: reading {len(paths)} runs")
    start = time.monotonic()
    now = time.time() if now is None else now
    runs = []
    warnings: list[str] = []
    for k, path in enumerate(paths, 1):
        run = read_run(path, now=now, stale_after=stale_after)
        runs.append(run)
        for w in run.warnings:
            say(f"warning: {w}")
            warnings.append(w)
        if large and (k % progress_every == 0 or k == len(paths)):
            say(f"report: read {k}/{len(paths)} runs ({time.monotonic() - start:.0f} s)")
    _mark_queued(runs)
    grouping = group_runs(runs, (*DEFAULT_IGNORE, *ignore))
    stats = [_group_stats(g, last_evals) for g in grouping.groups]
    pending: list[PendingJob] = []
    sweep_sizes: dict[Path, int | None] = {}
    for sweep in sweeps:
        size, missing = pending_jobs(sweep, runs)
        sweep_sizes[sweep] = size
        pending += missing
    notes = list(warnings)
    curves = eps_curves(runs, q_max=eps_q_max, work=eps_work, say=say, notes=notes) if eps else []
    out.mkdir(parents=True, exist_ok=True)
    names = ["report.md", "report.csv", "runs.csv"]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ReportError(f"--figures takes {', '.join(FIGURES)}; got {', '.join(unknown)}")
    drawn = _plots(grouping, curves, out, notes, figures) if plots else []
    if PLOTS_SKIPPED in notes:
        say(PLOTS_SKIPPED)
    _report_csv(grouping, stats, out / "report.csv")
    _runs_csv(runs, grouping, out / "runs.csv")
    text = _markdown(
        dirs, runs, grouping, stats, pending, sweep_sizes, curves, drawn, notes, stale_after,
        last_evals,
    )  # fmt: skip
    (out / "report.md").write_text(text, encoding="utf-8")
    if paired:
        tables = [paired_cells(grouping, spec, last=last_evals) for spec in paired]
        (out / "paired.md").write_text(_paired_markdown(paired, tables, last_evals))
        _paired_csv(paired, tables, out / "paired.csv")
        names += ["paired.md", "paired.csv"]
        drop = plots and "drop" in figures
        if drop and _save_figure(
            out, "drop_vs_bias.png", _drop_figure, tables, grouping, last_evals
        ):
            drawn.append("drop_vs_bias.png")
    return Report(out, names + drawn, runs, grouping, pending, warnings)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m byzshield.report",
        description=(
            "Summarise run folders and Hydra sweeps: report.md (tables), report.csv (one "
            "row per group of runs differing only in the seed), runs.csv (one row per "
            "run) and PNG plots (accuracy vs step, final accuracy vs q, eps(q) vs q)."
        ),
        epilog=(
            "Status of a run: complete (final evaluation at max_steps), running (not "
            "complete, a file changed within --stale-after minutes), died (stale, some "
            "steps recorded), failed to start (stale, no step), queued (a lockstep "
            "sweep's job waiting while another runs), refused. Jobs of a sweep with no "
            "folder are listed as not started."
        ),
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR", help="run or sweep folders (searched recursively)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: report/ inside the first DIR)")
    p.add_argument(
        "--stale-after",
        type=float,
        default=10.0,
        metavar="MIN",
        help="a run without its final evaluation is running if a file in its folder "
        "changed within MIN minutes, else died (default: 10)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="config keys that do not separate rows (e.g. --ignore threads,log_every; "
        "repeatable); seed and train_dir never do",
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument(
        "--figures",
        default=",".join(FIGURES),
        metavar="KIND[,KIND]",
        help="which figures: step (accuracy against step, one per rule, q and setting), q "
        "(final accuracy against q), eps (eps(q) of the placements), drop (with --paired: "
        "drop against c / sqrt(f)); default: all",
    )
    p.add_argument(
        "--no-eps", action="store_true", help="skip the eps(q) table and plot (no c_max search)"
    )
    p.add_argument(
        "--eps-q-max",
        type=int,
        metavar="Q",
        help="largest q of the eps(q) curves (default: max(K // 2, largest q run))",
    )
    p.add_argument(
        "--eps-work",
        type=int,
        default=200_000,
        metavar="N",
        help="work budget of each placement's worst-case search (default: 200000, as "
        "training's attack.search_work); rows it cannot finish say not certified",
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="on sweeps of more than N runs, print progress every N runs read (default: 100)",
    )
    p.add_argument(
        "--pivot",
        metavar="COLUMN",
        choices=PIVOT_KEYS,
        help="also write pivot.md: final top-1 (mean +- std over seeds) with one column per "
        "value of COLUMN (approach, mode, attack or q) and a row per value of the others",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=V[,V]",
        help="with --pivot: keep the groups whose KEY (approach, mode, attack, q) is one of "
        "the values, e.g. --where q=0,3 (repeatable)",
    )
    p.add_argument(
        "--paired",
        action="append",
        default=[],
        metavar="'A vs B'",
        help="also write paired.md, paired.csv and drop_vs_bias.png: per cell, A - B over "
        "the seeds both ran with a 95%% interval, and each side's drop from its own q = 0 "
        "reference; A and B are approach labels as in report.md, optionally with ' / MODE' "
        "(e.g. --paired 'mols(l=5, r=3) vs draco_lite_attack(K=15, r=3)'; repeatable)",
    )
    p.add_argument(
        "--last-evals",
        type=int,
        default=1,
        metavar="N",
        help="a run's accuracy for --paired (and a last-N column in report.md) is its "
        "mean top-1 over its last N evaluations (default: 1, the final one)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or warnings on stderr")
    return p


PIVOT_KEYS = ("approach", "mode", "attack", "q")


def pivot_table(csv_path: Path, column: str, where: dict[str, set[str]]) -> str:
    """A Markdown table from report.csv: final top-1 % as mean +- std (n seeds), one
    column per value of ``column``, one row per combination of the other keys that
    ``where`` does not fix."""
    with open(csv_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if all(r[k] in v for k, v in where.items())]
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
    columns = list(dict.fromkeys(r[column] for r in rows))
    columns.sort(key=lambda c: c not in ("none", "0"))  # the no-attack reference first
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        mean, std, n = r["final_top1_mean"], r["final_top1_std"], r["complete"]
        cell = "" if mean == "" else f"{100 * float(mean):.1f}"
        if std != "":
            cell += f" ± {100 * float(std):.1f}"
        cells.setdefault(tuple(r[k] for k in keys), {})[r[column]] = f"{cell} ({n})"
    fixed = ", ".join(f"{k} = {' or '.join(sorted(v))}" for k, v in where.items())
    lines = [
        f"Final top-1 % (mean ± std over seeds, (complete runs)){'; ' + fixed if fixed else ''}",
        "",
        "| " + " | ".join([*keys, *columns]) + " |",
        "|" + " --- |" * (len(keys) + len(columns)),
    ]
    for key, by_col in cells.items():
        lines.append("| " + " | ".join([*key, *(by_col.get(c, "") for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.stale_after < 0 or args.progress_every < 1 or args.eps_work < 1 or args.last_evals < 1:
        print(
            "error: --stale-after must be >= 0, --progress-every, --eps-work and --last-evals >= 1",
            file=sys.stderr,
        )
        return 2
    if args.eps_q_max is not None and args.eps_q_max < 0:
        print("error: --eps-q-max must be >= 0", file=sys.stderr)
        return 2
    where: dict[str, set[str]] = {}
    for item in args.where:
        key, _, values = item.partition("=")
        if key not in PIVOT_KEYS or not values or not args.pivot:
            print(
                f"error: --where takes KEY=VALUE[,VALUE] with KEY one of "
                f"{', '.join(PIVOT_KEYS)}, after --pivot; got {item!r}",
                file=sys.stderr,
            )
            return 2
        where[key] = set(values.split(","))

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        report = write_report(
            args.dirs,
            args.out,
            stale_after=args.stale_after * 60,
            ignore=[k for arg in args.ignore for k in arg.split(",") if k],
            plots=not args.no_plots,
            eps=not args.no_eps,
            eps_q_max=args.eps_q_max,
            eps_work=args.eps_work,
            progress_every=args.progress_every,
            say=say,
            paired=args.paired,
            last_evals=args.last_evals,
            figures=[k for k in args.figures.split(",") if k],
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pivot:
        table = pivot_table(report.out / "report.csv", args.pivot, where)
        (report.out / "pivot.md").write_text(table)
        report.files.append("pivot.md")
    counts = {s: sum(r.status == s for r in report.runs) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if report.pending:
        summary += f"; {len(report.pending)} sweep jobs not started"
    n, k = len(report.runs), len(report.grouping.groups)
    print(
        f"{n} run{'s' if n != 1 else ''} in {k} group{'s' if k != 1 else ''} ({summary}); "
        f"wrote {', '.join(report.files)} to {report.out}"
    )
    return 0


def cli() -> None:
    """The ``byzshield-report`` console script: ``python -m byzshield.report``."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
