"""The verdict's sweep, in pieces that each commit: rerunning it continues it, on this
machine or on a fresh one (``byzshield.report.pieces``).

    python docs/results/verdict/sweep.py                 # every missing piece, 2 at a time
    python docs/results/verdict/sweep.py --list          # what is done, what is left
    python docs/results/verdict/sweep.py --only q4 --jobs 1   # some pieces only

The sweep (``+experiment=verdict``, ``verdict_clean``, ``verdict_plateau``: see their
headers) is cut into pieces of one q, one rule and one kind of files (175 runs, about 40
minutes of one core at 600 steps), plus the no-attack reference and the two plateau
checks. Each piece is one ``python -m byzshield.train`` command into its own folder
under ``--runs`` (a rerun continues from the runs' checkpoints there). When a piece
ends, its complete runs are merged into ``docs/results/verdict/runs.jsonl.gz``; commit
that file and the piece is kept even when the run folders are lost. Then ``tables.py``
makes the tables and heatmaps from it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from byzshield.report.pieces import Piece, main

HERE = Path(__file__).resolve().parent
QS = (4, 2, 5)  # the verdict's q, in the order its pieces run (5: past the crossover)
RULES = {"mom": "median of means", "multi_krum": "multi-Krum"}
SKEWS = {"iid": "iid", "alpha1": "Dir(1)", "alpha01": "Dir(0.1)"}
LR_STEP = 10  # +experiment=verdict's; the plateau check continues the same schedule


def _tables():
    spec = importlib.util.spec_from_file_location("verdict_tables", HERE / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = _tables()


def _attacked(q: int, rule: str, skew: str) -> Piece:
    def holds(c: dict, steps: int) -> bool:
        return (steps == T.STEPS and c["adversary.q"] == q and c["attack.name"] != "none"
                and T.rule(c) == RULES[rule] and T.skew(c) == SKEWS[skew])  # fmt: skip

    overrides = ("+experiment=verdict", f"adversary.q={q}", f"heterogeneity/rule={rule}",
                 f"heterogeneity/skew={skew}")  # fmt: skip
    return Piece(f"q{q}/{rule}/{skew}", overrides, len(T.ARMS) * len(T.ATTACKS) * len(T.SEEDS),
                 holds)  # fmt: skip


def pieces(qs=QS) -> list[Piece]:
    """Every piece of the sweep: the references first, then q by q."""

    def longer(c: dict, steps: int) -> bool:  # a plateau-check run
        return steps == 2 * T.STEPS and c["lr_step"] == LR_STEP

    out = [
        Piece(
            "clean",
            ("+experiment=verdict_clean",),
            3 * len(SKEWS) * len(RULES) * len(T.SEEDS),
            lambda c, steps: steps == T.STEPS and c["attack.name"] == "none",
        ),  # fmt: skip
        Piece(
            "plateau/q4",
            ("+experiment=verdict_plateau",),
            len(T.ARMS) * 2 * 3 * 2,
            lambda c, steps: longer(c, steps) and c["attack.name"] != "none",
        ),  # fmt: skip
        Piece(
            "plateau/q0",
            (
                "+experiment=verdict_plateau",
                "adversary.q=0",
                "attack=none",
                "verdict/arm=baseline,detox,mols",
            ),
            3 * 2 * 2,
            lambda c, steps: longer(c, steps) and c["attack.name"] == "none",
        ),  # fmt: skip
    ]
    for q in qs:
        out += [_attacked(q, r, s) for r in RULES for s in SKEWS]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], pieces, HERE / "runs.jsonl.gz", Path("runs/verdict"), __doc__))
