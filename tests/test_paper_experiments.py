"""+experiment=paper_mnist1d, its plateau check and +experiment=paper_cifar10: every arm
composes to the setup docs/results/paper_setup.md describes, and a narrowed
paper_mnist1d sweep trains in lockstep and reports paired differences."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_env

from byzshield.config import build_run
from byzshield.config.overrides import compose_config

ARMS = {  # arm -> (placement, num_buckets)
    "mols_median": ("mols(l=5, r=3)", None),
    "mols_mom": ("mols(l=5, r=3)", 5),
    "detox15": ("draco_lite_attack(K=15, r=3)", None),
    "rama_median": ("rama_two(m=5, s=5)", None),
    "rama_mom": ("rama_two(m=5, s=5)", 5),
    "detox25": ("draco_lite_attack(K=25, r=5)", None),
}
SIZES = {  # size -> (batch, steps, lr, lr_step)
    "batch150": (150, 1500, 0.1, 25),
    "batch750": (750, 600, 0.2236, 10),
    "batch1500": (1500, 600, 0.3162, 10),
}


@pytest.mark.parametrize("arm", list(ARMS))
def test_each_paper_mnist1d_arm_builds_the_documented_run(arm):
    placement, buckets = ARMS[arm]
    for size, (batch, steps, lr, lr_step) in SIZES.items():
        config = compose_config(
            ["+experiment=paper_mnist1d", f"paper/arm={arm}", f"paper/size={size}", "adversary.q=3"]
        )
        assert config.engine == "lockstep" and config.network.name == "cnn1d"
        assert (config.batch_size, config.max_steps, config.lr, config.lr_step) == (
            batch,
            steps,
            lr,
            lr_step,
        )
        assert config.gamma == 0.96 and config.momentum == 0.9
        assert (config.attack.name, config.attack.z, config.attack.ddof) == ("alie", 1.0, 0)
        assert getattr(config.mode, "num_buckets", None) == buckets
    run = build_run(config)
    assert run.placement.describe().startswith(placement)
    assert run.outside_guarantee or run.rule_f <= run.placement.num_files // 2


def test_each_half_sweeps_q_up_to_the_largest_byzantine_minority():
    """paper_mnist1d is the K = 15 half (q 0..7), paper_mnist1d_k25 the K = 25 half (q
    0..12), each in its own folder under runs/paper_mnist1d; together they cover the six
    arms, and the plateau check covers all six at q = 0."""
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "experiment"
    covered = set()
    for name, k in (("paper_mnist1d", 15), ("paper_mnist1d_k25", 25)):
        params = OmegaConf.load(conf / f"{name}.yaml").hydra.sweeper.params
        arms = params["paper/arm"].split(",")
        for arm in arms:
            config = compose_config([f"+experiment={name}", f"paper/arm={arm}", "adversary.q=0"])
            assert config.train_dir == f"runs/paper_mnist1d/k{k}"
            assert build_run(config).placement.num_workers == k, (name, arm)
        assert [int(q) for q in params["adversary.q"].split(",")] == list(range((k - 1) // 2 + 1))
        covered |= set(arms)
    assert covered == set(ARMS)
    plateau = OmegaConf.load(conf / "paper_mnist1d_plateau.yaml").hydra.sweeper.params
    assert set(plateau["paper/arm"].split(",")) == set(ARMS) and str(plateau["adversary.q"]) == "0"


def test_the_plateau_check_trains_the_no_attack_runs_twice_as_long():
    for size, (batch, steps, _, lr_step) in SIZES.items():
        config = compose_config(
            [
                "+experiment=paper_mnist1d_plateau",
                f"paper/size={size}_plateau",
                "adversary.q=0",
                "hydra.mode=RUN",
            ]
        )
        assert (config.batch_size, config.max_steps, config.lr_step) == (batch, 2 * steps, lr_step)
        assert config.train_dir == "runs/paper_mnist1d/plateau"


@pytest.mark.parametrize("approach", ["mols", "draco_lite_attack", "baseline"])
def test_paper_cifar10_composes_for_every_rule_and_attack(approach):
    for mode in ("coord-median", "multi-krum", "bulyan"):
        for attack in ("alie_original", "constant", "rev_grad"):
            config = compose_config(
                ["+experiment=paper_cifar10", f"approach={approach}", f"mode={mode}"]
                + [f"attack={attack}", "adversary.q=3"]
            )
            assert (config.dataset.name, config.network.name) == ("cifar10", "resnet18")
            assert (config.engine, config.device, config.batch_size) == ("simulate", "cuda", 250)
            assert (config.lr, config.gamma, config.lr_step, config.max_steps) == (
                0.05,
                0.96,
                15,
                1040,
            )
            if attack == "alie_original":
                assert (config.attack.name, config.attack.z, config.attack.ddof) == ("alie", 1.0, 0)


def test_a_narrowed_paper_mnist1d_sweep_reports_paired_differences(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "byzshield.train",
        "+experiment=paper_mnist1d",
        "paper/arm=mols_mom,detox15",
        "paper/size=batch150",
        "adversary.q=0,3",
        "seed=0,1,2",
        "max_steps=6",
        "eval_freq=2",
        f"train_dir={sweep}",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=run_env()
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "lockstep: 12 runs in 2 groups" in proc.stdout
    out = tmp_path / "report"
    pair = (
        "mols(l=5, r=3) / coord-median(num_buckets=5) vs draco_lite_attack(K=15, r=3) / "
        "coord-median(num_buckets=null)"
    )
    rep = subprocess.run(
        [sys.executable, "-m", "byzshield.report", str(sweep), "--out", str(out)]
        + ["--no-eps", "--last-evals", "2", "--paired", pair],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env(),
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = list(csv.DictReader((out / "paired.csv").read_text().splitlines()))
    assert [r["q"] for r in rows] == ["0", "3"]
    assert all(r["n"] == "3" for r in rows)
    assert rows[1]["drop_diff_mean"] != "" and rows[1]["diff_low"] != ""
    assert (out / "drop_vs_bias.png").exists()
