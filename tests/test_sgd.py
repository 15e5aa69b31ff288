"""The trainer's SGD and step schedule are torch.optim's, bit for bit and in their
checkpoints, without loading torch's compiler stack."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch
from conftest import run_env

from byzshield.training.sgd import Sgd, StepLr, build_optimizer


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def _steps(model, optimizer, scheduler, grads) -> list[float]:
    lrs = []
    for g in grads:
        for p, gp in zip(model.parameters(), g, strict=True):
            p.grad = gp.clone()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_sgd_and_step_lr_give_torch_optims_bits_lrs_and_state_dicts():
    ours, theirs = _model(0), _model(0)
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in ours.parameters()] for _ in range(9)]
    o = Sgd(ours.parameters(), lr=0.3, momentum=0.9)
    s = StepLr(o, step_size=4, gamma=0.37)
    to = torch.optim.SGD(theirs.parameters(), lr=0.3, momentum=0.9)
    ts = torch.optim.lr_scheduler.StepLR(to, step_size=4, gamma=0.37)
    assert _steps(ours, o, s, grads) == _steps(theirs, to, ts, grads)
    assert all(
        torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    assert s.state_dict() == ts.state_dict()
    mine, torchs = o.state_dict(), to.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()
    assert all(
        torch.equal(mine["state"][i]["momentum_buffer"], b["momentum_buffer"])
        for i, b in torchs["state"].items()
    )


def test_a_torch_checkpoint_resumes_into_ours_and_ours_into_torch():
    gen = torch.Generator().manual_seed(2)
    grads = [
        [torch.randn(p.shape, generator=gen) for p in _model(0).parameters()] for _ in range(6)
    ]
    # torch for 3 steps, then each side resumes from that state for 3 more
    first = _model(0)
    to = torch.optim.SGD(first.parameters(), lr=0.1, momentum=0.5)
    ts = torch.optim.lr_scheduler.StepLR(to, step_size=2, gamma=0.5)
    _steps(first, to, ts, grads[:3])
    ours, theirs = _model(1), _model(1)
    for m in (ours, theirs):
        m.load_state_dict(first.state_dict())
    o = Sgd(ours.parameters(), lr=0.1, momentum=0.5)
    s = StepLr(o, step_size=2, gamma=0.5)
    o.load_state_dict(copy.deepcopy(to.state_dict()))  # as torch.load gives it
    s.load_state_dict(copy.deepcopy(ts.state_dict()))
    to2 = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.5)
    ts2 = torch.optim.lr_scheduler.StepLR(to2, step_size=2, gamma=0.5)
    to2.load_state_dict(copy.deepcopy(o.state_dict()))  # ours, read by torch
    ts2.load_state_dict(copy.deepcopy(s.state_dict()))
    assert _steps(ours, o, s, grads[3:]) == _steps(theirs, to2, ts2, grads[3:])
    assert all(
        torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)
    )


def test_building_the_optimizer_does_not_load_torchs_compiler_stack():
    code = (
        "import sys, torch\n"
        "from byzshield.training.sgd import build_optimizer\n"
        "m = torch.nn.Linear(3, 3)\n"
        "o, s = build_optimizer(m, lr=0.1, momentum=0.9, step_size=5, gamma=0.5)\n"
        "m.weight.grad = torch.ones(3, 3); m.bias.grad = torch.ones(3)\n"
        "o.step(); s.step(); o.state_dict(); s.state_dict()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=run_env(), timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    o, _ = build_optimizer(torch.nn.Linear(2, 2), lr=0.1, momentum=0.9, step_size=5, gamma=0.5)
    assert isinstance(o, Sgd)
