"""Worker-side attacks: what a Byzantine worker makes of the gradient ``own`` it computed
for one of its files, seeing nothing but that gradient (and, for ``gaussian``, the
generator seeded from (seed, step, file)).

Every Byzantine holder of a file computes the same ``own`` and draws from the same
generator, so the copies of a file that Byzantine workers send agree bit for bit: they
collude, and win the file's vote exactly when they hold a majority of its copies
(docs/design.md, sections 3 and 4). ``label_flip`` acts on the data instead: its worker
computes ``own`` on flipped labels.

Example::

    >>> ReverseGradient(scale=2.0)(torch.tensor([1.0, -3.0])).tolist()
    [-2.0, 6.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from byzshield.attacks._checks import check_own, finite
from byzshield.compute.sampling import derive_seed

__all__ = [
    "Constant",
    "Gaussian",
    "Inf",
    "LabelFlip",
    "NoAttack",
    "ReverseGradient",
    "SignFlip",
    "attack_generator",
]


def attack_generator(seed: int, step: int, file: int) -> torch.Generator:
    """The generator a Byzantine copy of ``file`` at ``step`` draws from.

    Seeded from (seed, step, file) only, so all Byzantine copies of a file agree (they
    collude), both engines draw the same numbers, and a rerun reproduces them.
    """
    return torch.Generator().manual_seed(derive_seed("attack", seed, step, file))


@dataclass(frozen=True)
class NoAttack:
    """Sends its honest gradient unchanged: v = own (returns ``own`` itself, no copy)."""

    name: ClassVar[str] = "none"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return check_own(self.name, own)


@dataclass(frozen=True)
class ReverseGradient:
    """Sends the gradient reversed and amplified: v = -scale * own.

    The ``rev_grad`` error mode of the ByzShield and DETOX code (Konstantinidis &
    Ramamoorthy, MLSys 2021; Rajput et al., NeurIPS 2019), scale 100 there and here.

    Example::

        >>> ReverseGradient(scale=100.0)(torch.tensor([0.5, -1.0])).tolist()
        [-50.0, 100.0]
    """

    scale: float = 100.0
    name: ClassVar[str] = "rev_grad"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        finite(self.scale, "rev_grad: scale")

    def __call__(self, own, *, honest=None, generator=None):
        return check_own(self.name, own) * (-self.scale)


@dataclass(frozen=True)
class Constant:
    """Sends ``value`` in every coordinate: v = value * 1.

    The ``constant`` error mode of the ByzShield and DETOX code, value -100 there and here.

    Example::

        >>> Constant(value=-100.0)(torch.tensor([0.5, -1.0])).tolist()
        [-100.0, -100.0]
    """

    value: float = -100.0
    name: ClassVar[str] = "constant"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        finite(self.value, "constant: value")

    def __call__(self, own, *, honest=None, generator=None):
        return torch.full_like(check_own(self.name, own), self.value)


@dataclass(frozen=True)
class SignFlip:
    """Sends the gradient reversed: v = -own (rev_grad with scale 1).

    The sign-flipping attack of e.g. Allen-Zhu, Ebrahimian, Li & Alistarh, "Byzantine-
    resilient non-convex stochastic gradient descent", ICLR 2021. ByzFL's SignFlipping
    is IPM with eps = 1 instead (minus the honest mean).

    Example::

        >>> SignFlip()(torch.tensor([0.5, -1.0])).tolist()
        [-0.5, 1.0]
    """

    name: ClassVar[str] = "sign_flip"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return -check_own(self.name, own)


@dataclass(frozen=True)
class Gaussian:
    """Sends noise: v ~ N(mean, std^2 I), of own's shape, drawn from the given generator.

    The Gaussian attack as in ByzFL's Gaussian (std 1 there; 200 here). The generator is
    seeded from (seed, step, file), so every Byzantine copy of a file is the same draw;
    without one the attack refuses to run.

    Example::

        >>> v = Gaussian(std=1.0)(torch.zeros(3), generator=torch.Generator().manual_seed(0))
        >>> v.shape, bool(v.abs().max() > 0)
        (torch.Size([3]), True)
    """

    mean: float = 0.0
    std: float = 200.0
    name: ClassVar[str] = "gaussian"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __post_init__(self):
        finite(self.mean, "gaussian: mean")
        if finite(self.std, "gaussian: std") < 0:
            raise ValueError(f"gaussian: std must be >= 0, got {self.std}")

    def __call__(self, own, *, honest=None, generator=None):
        own = check_own(self.name, own)
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "gaussian needs an explicit torch.Generator (seeded from (seed, step, file)), "
                f"got {generator!r}"
            )
        dtype = own.dtype if own.dtype.is_floating_point else torch.float32
        noise = torch.empty(own.shape, dtype=dtype, device=own.device)
        noise.normal_(self.mean, self.std, generator=generator)
        return noise.to(own.dtype)


@dataclass(frozen=True)
class LabelFlip:
    """Data-side attack: the worker trains on labels y -> C - 1 - y
    (:func:`byzshield.compute.gradients.flip_labels`).

    Label flipping as in Allen-Zhu et al., ICLR 2021, and ByzFL. The gradient transform
    is the identity, v = own: with ``flips_labels = True`` the worker computes ``own`` on
    flipped labels, and this call returns it unchanged.
    """

    name: ClassVar[str] = "label_flip"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = True

    def __call__(self, own, *, honest=None, generator=None):
        return check_own(self.name, own)


@dataclass(frozen=True)
class Inf:
    """Sends +inf in every coordinate: v = +inf * 1 (ByzFL's Inf).

    The vote may let it win a file; the rule then drops the non-finite winner: it tests
    the NaN/Inf handling end to end.

    Example::

        >>> Inf()(torch.zeros(2)).tolist()
        [inf, inf]
    """

    name: ClassVar[str] = "infinity"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False

    def __call__(self, own, *, honest=None, generator=None):
        return torch.full_like(check_own(self.name, own), math.inf)
