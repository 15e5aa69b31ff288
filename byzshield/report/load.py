"""Reading run folders: one run's config, metrics and status (:func:`read_run`), the
runs and sweeps under folders (:func:`discover`), and a sweep's jobs that have no
folder yet (:func:`pending_jobs`). The status rule is in :mod:`byzshield.report`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from byzshield.config.overrides import MOVED_TO_ADVERSARY

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


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReportError(Exception):
    """Bad input: printed as one line by the command line."""


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 cell", "2 cells"; ``many`` for other plurals (``plural(n, "job has", "jobs have")``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


EVAL_RANGES = {
    "top1": (0.0, 1.0),
    "top5": (0.0, 1.0),
    "test_loss": (0.0, math.inf),
    "backdoor_asr": (0.0, 1.0),
}
"""What an evaluation's values can be (accuracies are fractions): a value outside its range,
or not a finite number, is left out of every statistic and flagged."""
OPTIONAL_EVALS = ("backdoor_asr",)
"""Evaluation values only some runs have (the backdoor's attack success rate): absent
from an evaluation that does not record them."""


def _impossible(key: str, value) -> str | None:
    """Why an evaluation's ``key: value`` cannot be right (None when it can, or is absent)."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"{key}={json.dumps(value)} is not a number"
    low, high = EVAL_RANGES[key]
    if not math.isfinite(value):
        return f"{key}={value} is not finite"
    if not low <= value <= high:
        return f"{key}={value:g} is outside [{low:g}, {high:g}{']' if high < math.inf else ')'}"
    return None


# --------------------------------------------------------------------------------------
# Reading one run


@dataclass
class RunFolder:
    """What the report knows about one run folder.

    ``config`` is the flattened composed config (``{"approach.name": "mols", ...}``)
    from ``.hydra/config.yaml``, else the trainer's ``config.json`` (a run started in
    process has no Hydra folder), else what ``run.json`` tells (``config_source`` says
    which). ``evals`` are the evaluation records of the
    last run written to the folder (``{"step", "top1", "top5", "test_loss"}``, and
    ``backdoor_asr`` under the backdoor).
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
    left_out: int = 0  # evaluation values left out as impossible (see EVAL_RANGES)
    caught: dict[int, int] = field(default_factory=dict)  # detect: worker -> step caught
    warnings: list[str] = field(default_factory=list)

    @property
    def seed(self):
        return self.config.get("seed", self.info.get("seed"))

    @property
    def q(self):
        q = self.config.get("adversary.q")
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


_OLD_KEYS = {f"attack.{m}" for m in MOVED_TO_ADVERSARY}


def _moved_keys(config: dict) -> dict:
    """A run made before ``attack.q``, ``attack.selection``, ``attack.search_work`` and
    ``attack.digest_lie`` moved to the ``adversary`` node, under the new keys (so old and
    new runs of one config group together)."""
    return {
        (f"adversary.{k[len('attack.') :]}" if k in _OLD_KEYS else k): v for k, v in config.items()
    }


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
        out["adversary.q"] = selection.get("q")
        out["adversary.selection"] = selection.get("kind")
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
        self.impossible: list[str] = []  # "line 31: top1=7.5 is outside [0, 1]"
        self.caught: dict[int, int] = {}  # detect: the step each worker first was a suspect

    def add(self, record: dict, line: int = 0) -> None:
        step = record["step"]
        if record.get("event") == "eval":
            evaluation = {"step": step}
            for k in EVAL_RANGES:
                if k in OPTIONAL_EVALS and k not in record:
                    continue
                why = _impossible(k, record.get(k))
                evaluation[k] = None if why else record.get(k)
                if why:
                    self.impossible.append(f"line {line}: {why}")
            self.evals.append(evaluation)
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
        for w in record.get("suspects") or ():
            if isinstance(w, int) and not isinstance(w, bool):
                self.caught.setdefault(w, step)

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
            metrics.add(record, number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.append(f"{path}: skipped {plural(len(bad), 'unreadable line')} (line {shown})")
    if metrics.impossible:
        n = len(metrics.impossible)
        shown = "; ".join(metrics.impossible[:3]) + ("; ..." if n > 3 else "")
        warnings.append(f"{path}: left out {plural(n, 'impossible evaluation value')} ({shown})")
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


def _saved_config(folder: Path, warnings: list[str]) -> dict | None:
    """The config the trainer saved (``config.json``), or None."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warnings.append(f"{path}: not valid JSON; ignored")
        return None
    return saved if isinstance(saved, dict) else None


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
        run.config, run.config_source = _moved_keys(_flatten(config)), ".hydra/config.yaml"
    elif (saved := _saved_config(folder, run.warnings)) is not None:
        # the run's config as the trainer saved it (in-process runs), with what only
        # run.json records (the engine: it changes no bit of the run)
        run.config = {**_config_from_info(run.info), **_moved_keys(_flatten(saved))}
        run.config_source = "config.json"
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
        run.caught = m.caught
        run.left_out = len(m.impossible)
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
