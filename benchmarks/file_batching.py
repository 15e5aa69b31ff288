"""Benchmark: could a MOLS worker batch its file gradients? The measurement behind
keeping one forward/backward pass per file.

    python benchmarks/file_batching.py              # ~1 min on one core
    python benchmarks/file_batching.py --reps 200

A MOLS l=5 r=3 worker (K = 15, batch 300) holds 5 files of 12 samples; a DETOX worker
(K = 15, r = 3) one file of 60. Same samples per worker, but five small passes against
one. Timed in one process with one intra-op thread, in alternating order, medians:

- ``per file``: :func:`byzshield.gradients.file_gradients` on the worker's 5 files (what
  a worker calls today);
- ``vmap``: torch.func's ``vmap(grad(functional_call))`` over the same 5 files stacked;
- ``DETOX``: ``file_gradients`` on one 60-sample file.

Then the bits: whether vmap gives per-file's bits, and whether a file's vmap gradient
depends on which other files are batched with it (honest replicas of a file sit on
workers holding different other files, so it must not).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from byzshield.data import file_batches, load_dataset
from byzshield.gradients import file_gradients
from byzshield.networks import build_network
from byzshield.placement import mols


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100, help="timed calls of each (default 100)")
    args = ap.parse_args()
    if args.reps < 5:
        ap.error(f"--reps must be >= 5, got {args.reps}")
    torch.set_num_threads(1)
    data = load_dataset("digits", root="data", download=False, train=True)
    model = build_network("lenet", num_classes=10, in_channels=1, image_size=8).train()
    p = mols(5, 3)
    files = list(p.worker_files[0])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(ps, x, y):
        return F.cross_entropy(functional_call(model, ps, (x,)), y)

    per_file_grad = vmap(grad(loss), in_dims=(None, 0, 0))

    def stacked(js):
        batches = file_batches(data, seed=0, step=1, batch_size=300, num_files=25, files=js)
        return torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])

    def flat(g):
        return torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1)

    kwargs = {"seed": 0, "step": 1, "batch_size": 300}
    calls = {
        "per file (5 x 12 samples)": lambda: file_gradients(
            model, data, files, num_files=25, **kwargs
        ),
        "vmap (5 x 12 samples)": lambda: flat(per_file_grad(params, *stacked(files))),
        "DETOX (1 x 60 samples)": lambda: file_gradients(model, data, [0], num_files=5, **kwargs),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    for k in range(args.reps):
        for name in calls if k % 2 == 0 else list(calls)[::-1]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["DETOX (1 x 60 samples)"])
    print("LeNet on the embedded digits, one worker's gradients, 1 thread, medians\n")
    print("| computation | ms | / DETOX |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.2f} | {med / ref:.2f}x |")

    one = file_gradients(model, data, [files[0]], num_files=25, **kwargs)[0][0]
    vm = flat(per_file_grad(params, *stacked(files)))
    others = [j for j in range(p.num_files) if j not in files][:4]
    mixed = flat(per_file_grad(params, *stacked([files[0], *others])))
    alone = flat(per_file_grad(params, *stacked([files[0]])))
    every = flat(per_file_grad(params, *stacked(list(range(p.num_files)))))
    print("\nbits of file", files[0], "(torch.equal):")
    print(f"- vmap over the worker's 5 files == per file: {torch.equal(vm[0], one)}")
    print(f"- vmap with 4 other files == vmap with the worker's: {torch.equal(mixed[0], vm[0])}")
    print(f"- vmap alone == vmap with the worker's 5: {torch.equal(alone[0], vm[0])}")
    same = torch.equal(every[files[0]], vm[0])
    print(f"- vmap over all 25 files == vmap with the worker's 5: {same}")
    print(f"- max |vmap - per file|: {float((vm[0] - one).abs().max()):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
