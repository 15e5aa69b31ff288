"""The ``adversary`` node: who the Byzantine workers are, not what they send (that is
the ``attack/`` group). :class:`AdversaryOption` holds ``q``, the ``selection`` of the
q workers, the worst-case search's ``search_work`` bound, with ``vote=digest`` the
``digest_lie`` (:data:`DIGEST_LIES`), and what it does about detection: where it lies
(``lie_on``) and whether it evades the certificate (``evade``,
:mod:`byzshield.detection.evade`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from byzshield.config.base import ConfigError, _int
from byzshield.design.selection import SELECTIONS
from byzshield.detection import LIE_ON

DIGEST_LIES = ("none", "honest_digest", "honest_tensor")


@dataclass
class AdversaryOption:
    """``q`` Byzantine workers (0..K; ``attack=none`` makes it 0), chosen by
    ``selection``: auto (the approach's default, as in the original code), worst_case
    (the set distorting the most files, searched once within ``search_work``), random (a
    new set every step), random_fixed, detox_worst / detox_benign / detox_whole_group
    (the original's DETOX strategies, DETOX placements only), or a list of 0-based
    worker ids. ``digest_lie`` (vote=digest): none (a Byzantine copy's digest is that of
    the copy it sends), honest_digest (it claims the honest copy's digest and sends its
    own when pulled) or honest_tensor (it claims its own and sends the honest copy).
    ``lie_on``: all (the attack on every file a Byzantine worker holds) or won (only on
    the files the Byzantine workers win, honest copies elsewhere). ``evade``: with
    ``detect`` on, a Byzantine worker lies only where its lies certify no Byzantine
    worker (docs/detection.md)."""

    q: int = 3
    selection: Any = "auto"
    search_work: int = 200_000
    digest_lie: str = "none"
    lie_on: str = "all"
    evade: bool = False

    def __post_init__(self) -> None:
        _int("adversary.", "q", self.q, 0)
        _int("adversary.", "search_work", self.search_work, 1)
        if self.digest_lie not in DIGEST_LIES:
            raise ConfigError(
                f"adversary.digest_lie must be one of {', '.join(DIGEST_LIES)}, "
                f"got {self.digest_lie!r}"
            )
        if self.lie_on not in LIE_ON:
            raise ConfigError(
                f"adversary.lie_on must be one of {', '.join(LIE_ON)}, got {self.lie_on!r}"
            )
        if not isinstance(self.evade, bool):
            raise ConfigError(f"adversary.evade must be true or false, got {self.evade!r}")
        sel = self.selection
        ok = (
            sel in (*SELECTIONS, "auto")
            if isinstance(sel, str)
            else isinstance(sel, Sequence)
            and all(isinstance(w, int) and not isinstance(w, bool) for w in sel)
        )
        if not ok:
            raise ConfigError(
                f"adversary.selection must be one of auto, {', '.join(SELECTIONS)} or a list "
                f"of worker ids, got {sel!r}"
            )
