"""Re-evaluate saved checkpoints on the test set, like the original's separate evaluator.

    python -m byzshield.evaluate runs/2026-11-25_18-00-00
    python -m byzshield.evaluate runs/.../checkpoints/step_000200.pt --data-root data

Each checkpoint stores its network, dataset and model state (with the BatchNorm
statistics the server recomputed); the test set is read from ``--data-root`` (default:
the root the run used).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from byzshield.compute.datasets import DatasetNotFound, load_dataset
from byzshield.compute.networks import build_network
from byzshield.training.evaluation import score_test_set
from byzshield.training.runfolder import checkpoint_problem


def checkpoints(path: Path) -> list[Path]:
    """The checkpoint files at ``path`` (a file, a run folder, or a folder of runs)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path} is neither a checkpoint file nor a folder")
    found = sorted(path.rglob("step_*.pt"))
    if not found:
        raise ValueError(f"no checkpoints (checkpoints/step_*.pt) under {path}")
    return found


# what evaluating needs (a checkpoint's optimizer state is for resuming)
KEYS = ("step", "model", "network", "dataset", "num_classes")


@torch.no_grad()
def evaluate_checkpoint(path: Path, *, data_root: str | None = None, batch_size: int = 500) -> dict:
    """{"step", "top1", "top5", "test_loss"} of one checkpoint on its test set; a file
    that is no byzshield checkpoint, or one that resuming would not trust
    (:func:`byzshield.training.runfolder.checkpoint_problem`: its step, its model's keys and
    shapes, non-finite values), raises ValueError naming it."""
    try:
        # tensors and plain values only: a crafted file cannot run code here
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = checkpoint_problem(state, path, keys=KEYS)
        network, dataset = str(state["network"]), str(state["dataset"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise ValueError(f"{path}: not a byzshield checkpoint ({type(exc).__name__})") from None
    if problem:
        raise ValueError(f"{path} {problem}")
    test = load_dataset(
        dataset, root=data_root or state.get("dataset_root", "data"), download=False, train=False
    )
    try:
        model = build_network(
            network,
            num_classes=state["num_classes"],
            in_channels=test.in_channels,
            image_size=test.image_size,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its network {network!r} cannot be built ({exc})") from None
    problem = checkpoint_problem(state, path, model, keys=KEYS)
    if problem:
        raise ValueError(f"{path} {problem}")
    model.load_state_dict(state["model"])
    scores = score_test_set(model, test, batch_size)
    return {"step": state["step"], **scores}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m byzshield.evaluate",
        description="Evaluate byzshield checkpoints on the test set.",
    )
    ap.add_argument("path", type=Path, help="checkpoint file, run folder or folder of runs")
    ap.add_argument("--data-root", default=None, help="dataset root (default: the run's)")
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        paths = checkpoints(args.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len("checkpoint"), *(len(str(p)) for p in paths))  # paths whole
    print(f"{'checkpoint':<{width}} {'step':>7} {'top-1':>7} {'top-5':>7} {'loss':>8}")
    bad = 0
    for p in paths:
        try:
            r = evaluate_checkpoint(p, data_root=args.data_root, batch_size=args.batch_size)
        except (ValueError, DatasetNotFound) as exc:  # report it and go on with the others
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        print(
            f"{str(p):<{width}} {r['step']:>7} {r['top1']:>7.4f} {r['top5']:>7.4f} "
            f"{r['test_loss']:>8.4f}"
        )
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
