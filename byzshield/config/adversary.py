"""The ``adversary`` node: who the Byzantine workers are, not what they send (that is
the ``attack/`` group). :class:`AdversaryOption` holds ``q``, the ``selection`` of the
q workers, the worst-case search's ``search_work`` bound and, with ``vote=digest``, the
``digest_lie`` (:data:`DIGEST_LIES`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from byzshield.config.base import ConfigError, _int
from byzshield.design.selection import SELECTIONS

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
    own when pulled) or honest_tensor (it claims its own and sends the honest copy)."""

    q: int = 3
    selection: Any = "auto"
    search_work: int = 200_000
    digest_lie: str = "none"

    def __post_init__(self) -> None:
        _int("adversary.", "q", self.q, 0)
        _int("adversary.", "search_work", self.search_work, 1)
        if self.digest_lie not in DIGEST_LIES:
            raise ConfigError(
                f"adversary.digest_lie must be one of {', '.join(DIGEST_LIES)}, "
                f"got {self.digest_lie!r}"
            )
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
