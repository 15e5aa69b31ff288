"""The backdoor: a data-side attack, like label flipping.

A Byzantine worker computes the gradients of its files on a poisoned copy of their
samples (:class:`byzshield.compute.poison.Poison`: a fixed trigger stamped on the first
ceil(fraction * s) samples of each file, relabelled to ``target``) and sends them; the
gradient transform itself is the identity. Every Byzantine holder of a file computes the
same poisoned gradient, so they collude and win the file's vote where they hold a
majority of its copies. Evaluations then report ``backdoor_asr``, the share of triggered
test samples of other classes classified as ``target``
(:func:`byzshield.compute.poison.attack_success`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from byzshield.attacks._checks import check_own
from byzshield.compute.poison import Poison

__all__ = ["Backdoor"]


@dataclass(frozen=True)
class Backdoor:
    """Backdoor poisoning: the worker trains on its files with a trigger stamped on a
    ``fraction`` of the samples, relabelled to ``target``; v = own, computed on that data.

    The model-poisoning backdoor of Bagdasaryan, Veit, Hua, Estrin & Shmatikov, "How to
    backdoor federated learning", AISTATS 2020, with BadNets' pixel-pattern trigger (Gu,
    Dolan-Gavitt & Garg, 2017; :mod:`byzshield.compute.poison` has each dataset's
    trigger). ``poison`` is the data change the worker applies
    (:func:`byzshield.compute.gradients.file_gradients`).

    Example::

        >>> attack = Backdoor(target=3, fraction=0.25)
        >>> attack.poison.count(12)  # samples of a 12-sample file that get the trigger
        3
    """

    target: int = 0
    fraction: float = 0.5
    name: ClassVar[str] = "backdoor"
    needs_honest: ClassVar[bool] = False
    flips_labels: ClassVar[bool] = False
    poison: Poison = field(init=False)

    def __post_init__(self):
        try:
            poison = Poison(self.target, self.fraction)
        except ValueError as exc:
            raise ValueError(f"backdoor: {exc}") from None
        object.__setattr__(self, "poison", poison)

    def __call__(self, own, *, honest=None, generator=None):
        return check_own(self.name, own)
