"""Server logic in one process: vote + aggregate, omniscient attacks, evaluation."""

import subprocess
import sys

import torch
from conftest import run_env

from byzshield.adversary import distorted_files, worst_case
from byzshield.attacks import make_attack
from byzshield.data import load_dataset
from byzshield.networks import build_network
from byzshield.placement import mols, rama_two
from byzshield.server import evaluate, simulate_omniscient_attack, vote_and_aggregate


def received(placement, truth):
    """(K, l, d) what honest workers send for per-file gradients ``truth`` (f, d)."""
    K, l = placement.num_workers, placement.load
    out = torch.empty(K, l, truth.shape[1])
    for w, fs in enumerate(placement.worker_files):
        for i, j in enumerate(fs):
            out[w, i] = truth[j]
    return out


def test_vote_removes_every_file_the_byzantine_set_does_not_control():
    p = mols(5, 3)
    truth = torch.randn(p.num_files, 50, generator=torch.Generator().manual_seed(0))
    byz = worst_case(p, 4).byzantine
    grads = received(p, truth)
    for w in byz:
        grads[w] *= -100
    res = vote_and_aggregate(grads, p, byz, aggregator="mean", f=0, params={}, truth=truth)
    assert res.distorted == distorted_files(p, byz) and len(res.distorted) == 5
    bad = torch.zeros(p.num_files, dtype=torch.bool)
    bad[res.distorted] = True
    expected = torch.cat([truth[~bad], -100 * truth[bad]]).mean(dim=0)
    assert torch.allclose(res.value, expected, atol=1e-5)
    assert res.non_strict == 0


def test_alie_simulation_gives_every_byzantine_copy_of_a_file_the_same_value():
    p = rama_two(5, 5)
    truth = torch.randn(p.num_files, 40, generator=torch.Generator().manual_seed(1))
    grads = received(p, truth)
    byz = worst_case(p, 6).byzantine
    attack = make_attack("alie", n=p.num_files, q=4)
    simulate_omniscient_attack(grads, p, byz, attack, seed=0, step=0)
    mu, sigma = truth.double().mean(0), truth.double().std(0)
    alie = (mu + attack.z_used * sigma).float()
    for w in range(p.num_workers):
        for i in range(p.load):
            assert torch.equal(grads[w, i], alie if w in byz else truth[p.worker_files[w][i]])
    res = vote_and_aggregate(grads, p, byz, aggregator="coord-median", f=4, params={}, truth=truth)
    assert res.distorted == distorted_files(p, byz)


def test_evaluation_recomputes_batchnorm_statistics_instead_of_trusting_buffers():
    torch.manual_seed(0)
    train = load_dataset("digits", root="data", download=False, train=True)
    test = load_dataset("digits", root="data", download=False, train=False)
    model = build_network("resnet18", num_classes=10, in_channels=1, image_size=8)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(1e6)  # garbage a worker could have sent
    out = evaluate(
        model, train, test, seed=0, bn_batches=2, batch_size=60, eval_batch_size=200, num_files=6
    )
    assert abs(float(bn.running_mean.abs().max())) < 1e3
    assert set(out) == {"top1", "top5", "test_loss"} and 0 <= out["top1"] <= 1


def test_missing_dataset_stops_before_launch_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "byzshield.train",
            "dataset=mnist",
            f"dataset.root={tmp_path}",
            f"train_dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=run_env(),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(tmp_path) in lines[0]
