"""SGD with momentum and a step learning-rate schedule: the arithmetic and the
``state_dict`` formats of ``torch.optim.SGD`` and ``torch.optim.lr_scheduler.StepLR``,
without torch.optim.

Why not torch.optim: the first optimizer a process builds imports torch's compiler stack
(``torch._dynamo`` and sympy, through ``Optimizer.add_param_group``), about 1 CPU-second,
as much as importing torch itself, in every run and every torchrun server. On the CPU,
``torch.optim.SGD`` takes its single-tensor path; this module does the same operations in
the same order, so the parameters have the same bits, and its checkpoints are torch's
(an old checkpoint resumes, a new one loads into torch.optim). Another device keeps
torch.optim (:func:`build_optimizer`), whose CUDA path is a multi-tensor one.

For each parameter p with gradient g (PyTorch's momentum form, no dampening)::

    b = g                      at the first step, then   b = momentum * b + g
    p = p - lr * b
    lr = lr * gamma            after every step_size steps (StepLR, chained)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["Sgd", "StepLr", "build_optimizer"]


class Sgd:
    """``torch.optim.SGD(params, lr, momentum)``'s CPU step and state, for one group."""

    def __init__(self, params: Iterable[Tensor], *, lr: float, momentum: float):
        group = {
            "lr": lr,
            "momentum": momentum,
            "dampening": 0,
            "weight_decay": 0,
            "nesterov": False,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
            "params": list(params),
        }
        self.param_groups = [group]
        self.state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)  # as torch's

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = grad.detach().clone()
                    state["momentum_buffer"] = buf
                else:
                    buf.mul_(momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-lr)

    def state_dict(self) -> dict:
        """torch.optim's format: parameters by their index in the group."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if s}
        packed = {k: v for k, v in group.items() if k != "params"}
        packed["params"] = list(range(len(group["params"])))
        return {"state": state, "param_groups": [packed]}

    def load_state_dict(self, state_dict: dict) -> None:
        (saved,) = state_dict["param_groups"]
        group = self.param_groups[0]
        params = group["params"]
        if len(saved["params"]) != len(params):
            raise ValueError(
                f"the optimizer state holds {len(saved['params'])} parameters, the model "
                f"{len(params)}"
            )
        group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = params[saved["params"].index(int(i))]
            self.state[p] = {
                k: v.to(dtype=p.dtype, device=p.device) if isinstance(v, Tensor) else v
                for k, v in s.items()
            }


class StepLr:
    """``torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma)``: the lr is
    multiplied by gamma after every ``step_size`` steps (chained, as torch does)."""

    def __init__(self, optimizer: Sgd, *, step_size: int, gamma: float):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch, self._step_count = 0, 1  # torch's initial step
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.gamma
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {
            "step_size": self.step_size,
            "gamma": self.gamma,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.step_size, self.gamma = state_dict["step_size"], state_dict["gamma"]
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self._last_lr = list(state_dict["_last_lr"])


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, step_size: int, gamma: float):
    """(optimizer, schedule) for ``model``: :class:`Sgd` and :class:`StepLr` on the CPU,
    torch.optim's SGD and StepLR on another device."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        optimizer = Sgd(model.parameters(), lr=lr, momentum=momentum)
        return optimizer, StepLr(optimizer, step_size=step_size, gamma=gamma)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
