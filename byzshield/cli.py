"""Command-line front ends that compose the conf/ groups with Hydra's compose API.

``python -m byzshield.placement [overrides]`` prints a placement's worst-case table:

    python -m byzshield.placement approach=mols approach.l=7 approach.r=5 q_max=13
    python -m byzshield.placement approach=rama_two format=json
    python -m byzshield.placement approach=draco_lite approach.K=15 approach.r=3
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
"""


class UsageError(ValueError):
    """A bad command-line or config value; printed as one line."""


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, errors as UsageError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    def run(ovs: Sequence[str]) -> DictConfig:
        with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(ovs))

    try:
        return run(overrides)
    except MissingConfigException as exc:
        first = str(exc).strip().splitlines()[0]
        options = ", ".join(exc.options or [])
        raise UsageError(f"{first.split(': ', 1)[-1]}; available: {options}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().splitlines()[0]
        if msg.startswith("Could not override '"):
            key = msg.split("'")[1]
            hint = ""
            if "." in key:  # list the keys the chosen group option does take
                node = key.rsplit(".", 1)[0]
                choices = [o for o in overrides if "=" in o and "." not in o.split("=")[0]]
                try:
                    keys = list(OmegaConf.select(run(choices), node) or {})
                    hint = f"; {node} takes: {', '.join(keys)}"
                except (HydraException, OmegaConfBaseException):
                    pass
            raise UsageError(f"unknown config key {key!r}{hint}") from None
        cause = str(exc.__cause__ or "").strip().splitlines()
        detail = f" ({cause[0]})" if cause else ""
        raise UsageError(f"bad config override: {msg}{detail}") from None


def approach_params(cfg: DictConfig) -> tuple[str, dict]:
    """(approach name, builder parameters) from the composed ``approach`` group."""
    node = OmegaConf.to_container(cfg.approach, resolve=True)
    assert isinstance(node, dict)
    name = node.pop("name", None)
    if name is None:
        raise UsageError("approach has no name; pick one with approach=NAME")
    for key, value in node.items():
        if value == "???" or value is None:
            raise UsageError(f"approach {name}: set approach.{key}=...")
    return str(name), node


def _detox_eps(K: int, r: int, q_max: int) -> tuple[int | None, list[float] | None]:
    """(group size, eps per q) of DETOX with the same K, from its closed form.

    Group size r if it divides K, else 3, 5 or 2; c_max(q) = min(q // r', K / r) (a
    test checks the closed form against the exhaustive search).
    """
    for size in (r, 3, 5, 2):
        if size >= 2 and K % size == 0:
            groups, rp = K // size, (size + 1) // 2
            return size, [min(q // rp, groups) / groups for q in range(q_max + 1)]
    return None, None


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


def placement_main(argv: Sequence[str]) -> int:
    """``python -m byzshield.placement``; returns the exit status."""
    from byzshield.adversary import worst_case_table
    from byzshield.placement import APPROACHES, build_placement

    if any(a in ("-h", "--help", "help") for a in argv):
        print(PLACEMENT_HELP.format(approaches=" | ".join(APPROACHES)))
        return 0
    try:
        cfg = compose("placement", argv)
        name, params = approach_params(cfg)
        placement = build_placement(name, **params)
        K = placement.num_workers
        q_max = cfg.q_max if cfg.q_max is not None else K // 2
        if isinstance(q_max, bool) or not isinstance(q_max, int) or not 0 <= q_max <= K:
            raise UsageError(f"q_max must be an integer in 0..K={K}, got {q_max!r}")
        if cfg.format not in ("table", "json"):
            raise UsageError(f"format must be table or json, got {cfg.format!r}")
        budget = cfg.time_budget
        if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
            raise UsageError(f"time_budget must be a positive number of seconds, got {budget!r}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    progress = _Progress("searching")
    rows = worst_case_table(placement, q_max, time_budget=float(budget), progress=progress)
    progress.close()
    detox_r, detox_eps = _detox_eps(K, placement.replication, q_max)
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
                    "eps_detox": None if detox_eps is None else detox_eps[row.q],
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
        d = "-" if detox_eps is None else f"{detox_eps[row.q]:.3f}"
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


# --------------------------------------------------------------------------------------
# Helpers of `python -m byzshield.train` (kept here so train.py reads like the algorithm).


def fail(message: str, code: int) -> None:
    """Exit with ``code``; only rank 0 prints ``message`` (one line, no traceback)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def check_train_overrides(argv: Sequence[str]) -> None:
    """Compose once before Hydra does, so a bad key or value is one line, from rank 0."""
    if any(a.startswith("-") for a in argv):  # multirun sweeps and Hydra's own flags
        return
    try:
        compose("config", argv)
    except UsageError as exc:
        fail(f"error: {exc}", 2)


def launch_torchrun(world_size: int) -> int:
    """Re-run this Hydra job under `torchrun --standalone` with ``world_size`` processes."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.mode.name == "MULTIRUN":
        fail(
            f"error: a multirun needs torchrun: torchrun --standalone --nproc-per-node "
            f"{world_size} -m byzshield.train -m ...",
            2,
        )
    overrides = [o for o in hc.overrides.task if not o.startswith("train_dir=")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(world_size),
        "-m",
        "byzshield.train",
        *overrides,
        f"train_dir={hc.runtime.output_dir}",
    ]
    print(
        f"launching {world_size} processes: torchrun --standalone --nproc-per-node "
        f"{world_size} -m byzshield.train {' '.join(overrides)}",
        flush=True,
    )
    try:
        return subprocess.call(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except KeyboardInterrupt:
        return 130


def log_to_folder(folder: Path, rank: int) -> None:
    """Each rank logs to rank<N>.log in the run folder; only rank 0 talks to the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("byzshield")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
