"""Start-up of `python -m byzshield.train` (byzshield/cli/startup.py), in process: a single
run is composed once, its network built once, it trains with no process group, and its
run folder holds what Hydra's own main writes there."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra

from byzshield import train
from byzshield.cli.startup import entry_point
from byzshield.config.data import NetworkOption
from byzshield.engines.torchrun import comm

RUN = ("max_steps=1", "eval_freq=0", "attack=alie")


@pytest.fixture
def command(monkeypatch):
    """Run ``python -m byzshield.train ARGS`` in this process (``composed``: through the
    one-composition start-up, else through Hydra's main); returns its exit status and
    counts what it did."""
    counts = {"compositions": 0, "networks": 0}
    compose_config, build = Hydra.compose_config, NetworkOption.build

    def counted_compose(self, *args, **kwargs):
        counts["compositions"] += 1
        return compose_config(self, *args, **kwargs)

    def counted_build(self, data):
        counts["networks"] += 1
        return build(self, data)

    def no_process_group(**kwargs):
        raise AssertionError("a one-process run joined a process group")

    monkeypatch.setattr(Hydra, "compose_config", counted_compose)
    monkeypatch.setattr(NetworkOption, "build", counted_build)
    monkeypatch.setattr(comm, "init", no_process_group)  # what torchrun_job imports
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    loggers = {name: logging.getLogger(name) for name in ("", "byzshield")}
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in loggers.items()}

    def run(*args: str, composed: bool = True) -> int:
        monkeypatch.setattr(sys, "argv", ["byzshield.train", *args])
        job = train.job if composed else None
        return entry_point(train.main, job=job, after=train.train_collected)

    yield run, counts
    GlobalHydra.instance().clear()  # Hydra's main leaves its instance behind
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn
    for name, lg in loggers.items():
        lg.handlers[:], lg.level, lg.propagate = saved[name]


def test_a_single_run_is_composed_once_built_once_and_trains_without_a_process_group(
    command, tmp_path, monkeypatch
):
    run, counts = command
    monkeypatch.chdir(tmp_path)
    assert run(*RUN) == 0
    assert counts == {"compositions": 1, "networks": 2}  # build_run's check + the model
    (folder,) = (tmp_path / "runs").iterdir()  # the default train_dir, resolved once
    assert (folder / "metrics.jsonl").exists() and not (folder / "train.log").exists()
    overrides = (folder / ".hydra" / "overrides.yaml").read_text().splitlines()
    assert overrides[-1] == f"- train_dir=runs/{folder.name}"


def test_a_single_runs_folder_holds_what_hydras_main_writes(command, tmp_path):
    run, counts = command
    assert run(*RUN, f"train_dir={tmp_path / 'hydra'}", composed=False) == 0
    assert counts["compositions"] == 3  # the check, Hydra's mode and Hydra's run
    assert run(*RUN, f"train_dir={tmp_path / 'composed'}") == 0
    assert counts["compositions"] == 4
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        by_hydra = (tmp_path / "hydra" / ".hydra" / name).read_text()
        composed = (tmp_path / "composed" / ".hydra" / name).read_text()
        assert composed == by_hydra.replace(str(tmp_path / "hydra"), str(tmp_path / "composed"))


def test_the_command_freezes_what_its_imports_built_out_of_the_garbage_collector(monkeypatch):
    """byzshield.train.cli: the start-up's objects live as long as the process, so the
    collector's full collections and the one at exit skip them (benchmarks/startup.py)."""
    import gc

    monkeypatch.setattr(train, "entry_point", lambda *args, **kwargs: 0)
    try:
        with pytest.raises(SystemExit) as stop:
            train.cli()
        assert stop.value.code == 0
        assert gc.get_freeze_count() > 10_000  # torch's, Hydra's and ours
        assert gc.isenabled()
    finally:
        gc.unfreeze()  # the test process collects as before


def test_a_sweep_is_validated_on_jobs_covering_every_value():
    import itertools

    from byzshield.cli.sweep import covering

    grid = [
        [f"attack={a}", f"seed={s}", f"adversary.q={q}"]
        for a, s, q in itertools.product(["alie", "ipm", "fang"], range(5), [2, 4])
    ]
    chosen = covering(grid)
    assert len(chosen) == 5  # the key with most values decides
    assert {o for k in chosen for o in grid[k]} == {o for job in grid for o in job}
    assert covering([["seed=0"]]) == [0] and covering([]) == []


def test_a_sweep_whose_train_dir_interpolates_a_swept_key_is_refused(monkeypatch, capsys, tmp_path):
    """+experiment=verdict's train_dir names q; with q among its sweeper's parameters the
    folder would be resolved once, with q's default: refused in one line."""
    from omegaconf import open_dict

    from byzshield.cli import startup
    from byzshield.config.overrides import compose

    def sweeping_q(name, overrides, **kwargs):
        cfg = compose(name, overrides, **kwargs)
        if "hydra" in cfg:
            with open_dict(cfg):
                cfg.hydra.sweeper.params["adversary.q"] = "2,4"
        return cfg

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train"])
    monkeypatch.setattr(startup, "compose", sweeping_q)
    with pytest.raises(SystemExit):
        startup.check_train_overrides(["+experiment=verdict"], [])
    assert capsys.readouterr().err.strip() == (
        "error: train_dir=runs/verdict/q${adversary.q} interpolates adversary.q, which this "
        "sweep varies; a sweep writes into one folder, resolved once: give train_dir on the "
        "command line or sweep adversary.q in separate commands"
    )
    monkeypatch.setattr(startup, "compose", compose)  # q not swept: the folder is pinned
    assert startup.check_train_overrides(["+experiment=verdict"], []) is None
    assert sys.argv[-1] == "train_dir=runs/verdict/q3"


@pytest.mark.parametrize(
    "jobs",
    [
        [["seed=0"], ["seed=3"], ["seed=4"]],
        [["attack=alie", "lr=0.05"], ["attack=ipm", "lr=0.05"], ["attack=alie", "lr=0.2"]],
        [["dataset=mnist1d", "dataset.partition=dirichlet", "network=cnn1d", "seed=1"],
         ["network=cnn1d", "dataset=mnist1d", "seed=2", "dataset.partition=iid"]],
        [["+experiment=verdict", "adversary.q=2", "seed=1"],
         ["+experiment=verdict", "seed=2", "adversary.q=4", "verdict/arm=baseline"],
         ["+experiment=verdict", "verdict/arm=baseline", "attack=constant", "seed=0"]],
    ],
)  # fmt: skip
def test_a_sweep_job_composed_from_its_template_is_hydras_composition(jobs, tmp_path):
    """Every job of a sweep, composed from the template of its config groups with its plain
    values applied (byzshield/cli/sweep.py), is what Hydra's own ``load_sweep_config``
    composes, ``hydra`` node included; the second job sharing a template is a copy."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from byzshield.cli import sweep
    from byzshield.config import register_schema

    register_schema()
    sweep.install()
    with initialize_config_module(config_module="byzshield.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        master = hydra.compose_config(
            "config", [f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN
        )
        loader = hydra.config_loader
        for job in jobs:
            ours = loader.load_sweep_config(master, job)
            hydras = sweep._HYDRA_LOAD_SWEEP_CONFIG(loader, master, job)
            assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras)
            assert list(ours.hydra.overrides.task) == job
    plain = ("seed", "lr", "dataset.partition", "adversary.q")
    groups = {tuple(o for o in job if o.split("=")[0] not in plain) for job in jobs}
    assert sum(key[0] == id(master) for key in sweep._TEMPLATES) == len(groups)
