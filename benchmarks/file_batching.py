"""Benchmark: a MOLS worker's files in one batched pass against one pass per file, and
against a DETOX worker's single pass; with the bits checked.

    python benchmarks/file_batching.py              # ~2 min on one core
    python benchmarks/file_batching.py --reps 100 --resnet-reps 6

A MOLS l=5 r=3 worker (K = 15) holds 5 files of b/25 samples; a DETOX worker (K = 15,
r = 3) one file of b/5. Same samples per worker, five small passes against one. Timed in
one process with one intra-op thread (a worker's), in alternating order, medians:

- ``per file``: :func:`byzshield.compute.gradients.file_gradients` one pass per file;
- ``batched``: the same call with ``batched=True`` (:mod:`byzshield.compute.batched`: the cnn1d
  kernel, LeNet's dense pass, torch.func vmap for BatchNorm networks);
- ``DETOX``: ``file_gradients`` on one file of b/5 samples, as a DETOX worker runs it
  (with ``batched`` as the network's ``NetworkInfo.batched_files`` says).

For LeNet (batch 300 on the digits), cnn1d (batch 300 on MNIST-1D) and ResNet-18 (batch
75 on random 32x32 images). Then the bits: a file's batched gradient alone, beside the
worker's other files and beside 4 other files (torch.equal), and its largest difference
from the per-file pass.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from byzshield.compute.datasets import ImageDataset, load_dataset
from byzshield.compute.gradients import file_gradients
from byzshield.compute.networks import NETWORKS, build_network, use_kernels
from byzshield.design.placements import mols


def _random_cifar() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(600, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (600,), generator=g)
    return ImageDataset("random32", images, labels, 10, (0.5,) * 3, (0.25,) * 3, False)


def measure(name: str, data, batch_size: int, reps: int) -> None:
    use_kernels(name)
    torch.manual_seed(0)
    model = build_network(
        name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        spatial_dims=data.spatial_dims,
    )
    files = list(mols(5, 3).worker_files[0])
    kw = {"seed": 0, "step": 1, "batch_size": batch_size}
    detox_batched = NETWORKS[name].batched_files
    calls = {
        "per file": lambda: file_gradients(model, data, files, num_files=25, **kw),
        "batched": lambda: file_gradients(model, data, files, num_files=25, batched=True, **kw),
        "DETOX": lambda: file_gradients(model, data, [0], num_files=5, batched=detox_batched, **kw),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()
    for k in range(reps):
        for key in calls if k % 2 == 0 else list(calls)[::-1]:
            t0 = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"| {name} (batch {batch_size}: 5 x {batch_size // 25} against 1 x {batch_size // 5}) "
        f"| {med['per file']:.2f} | {med['batched']:.2f} | {med['DETOX']:.2f} "
        f"| {med['per file'] / med['DETOX']:.2f}x | {med['batched'] / med['DETOX']:.2f}x "
        f"| {med['per file'] / med['batched']:.2f}x |",
        flush=True,
    )
    j = files[0]
    alone = file_gradients(model, data, [j], num_files=25, batched=True, **kw)[0][0]
    mine = file_gradients(model, data, files, num_files=25, batched=True, **kw)[0][0]
    others = [j, *(x for x in range(25) if x not in files)][:5]
    mixed = file_gradients(model, data, others, num_files=25, batched=True, **kw)[0][0]
    single = file_gradients(model, data, [j], num_files=25, **kw)[0][0]
    bits.append(
        f"- {name}: alone == with the worker's files {torch.equal(alone, mine)}, == with 4 "
        f"other files {torch.equal(mixed, mine)}; max |batched - per file| "
        f"{float((mine - single).abs().max()):.2g}"
    )


bits: list[str] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60, help="timed calls of each (default 60)")
    ap.add_argument("--resnet-reps", type=int, default=4, help="for ResNet-18 (default 4)")
    args = ap.parse_args()
    if args.reps < 3 or args.resnet_reps < 1:
        ap.error("--reps must be >= 3 and --resnet-reps >= 1")
    print("one worker's gradients, 1 thread, medians (ms)\n")
    print(
        "| network | per file | batched | DETOX | per file / DETOX | batched / DETOX | speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    measure(
        "lenet", load_dataset("digits", root="data", download=False, train=True), 300, args.reps
    )
    measure(
        "cnn1d", load_dataset("mnist1d", root="data", download=False, train=True), 300, args.reps
    )
    measure("resnet18", _random_cifar(), 75, args.resnet_reps)
    print("\nbits of one file (torch.equal):")
    print("\n".join(bits))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
