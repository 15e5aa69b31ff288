"""The paper-setup sweep on MNIST-1D (``+experiment=paper_mnist1d``, ``_k25``,
``_plateau``), in pieces that each commit: rerunning it continues it, on this machine or
on a fresh one (``byzshield.report.pieces``).

    python docs/results/paper_mnist1d/sweep.py           # every missing piece, 2 at a time
    python docs/results/paper_mnist1d/sweep.py --list    # what is done, what is left

Seven pieces: K = 15 and K = 25, one batch size each (120 and 195 runs), and the no-attack
plateau check (36 runs). Each piece is one ``python -m byzshield.train`` command into
its own folder under ``--runs``; when it ends, its complete runs are merged into
``docs/results/paper_mnist1d/runs.jsonl.gz`` (commit it). The report is then made from
that archive with the ``--paired`` command in docs/results/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from byzshield.report.pieces import Piece, main

HERE = Path(__file__).resolve().parent
SIZES = {"batch150": (150, 1500), "batch750": (750, 600), "batch1500": (1500, 600)}
"""paper/size -> (batch_size, max_steps): conf/paper/size."""


def _k(config: dict) -> int:
    """The arm's K: 15 for MOLS and DETOX K=15, 25 for Ramanujan and DETOX K=25."""
    name = config["approach.name"]
    if name == "draco_lite_attack":
        return int(config["approach.K"])
    return {"mols": 15, "rama_two": 25}[name]


def _sized(k: int, size: str) -> Piece:
    batch, steps = SIZES[size]

    def holds(c: dict, max_steps: int) -> bool:
        return _k(c) == k and c["batch_size"] == batch and max_steps == steps

    experiment = "+experiment=paper_mnist1d" + ("" if k == 15 else "_k25")
    arms, qs = 3, (8 if k == 15 else 13)
    return Piece(f"k{k}/{size}", (experiment, f"paper/size={size}"), arms * qs * 5, holds)


def pieces() -> list[Piece]:
    plateau = {(batch, 2 * steps) for batch, steps in SIZES.values()}
    out = [_sized(k, size) for k in (15, 25) for size in SIZES]
    out.append(
        Piece(
            "plateau",
            ("+experiment=paper_mnist1d_plateau",),
            6 * 3 * 2,
            lambda c, steps: (c["batch_size"], steps) in plateau,
        )  # fmt: skip
    )
    return out


if __name__ == "__main__":
    runs = Path("runs/paper_mnist1d")
    sys.exit(main(sys.argv[1:], pieces, HERE / "runs.jsonl.gz", runs, __doc__))
