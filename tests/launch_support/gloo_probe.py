"""A stand-in training module for the launcher's two-node torchrun test.

Every rank joins a gloo process group and all-reduces its rank; rank 0 prints the
result and writes ``<train_dir>/probe.txt`` (for `fab fetch`). ``fail_rank=N`` makes
rank N exit with code 3 first, to test that `fab train` fails and stops every node.

    python -m torch.distributed.run --nproc-per-node 2 \\
        -m tests.launch_support.gloo_probe train_dir=/tmp/out
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str]) -> int:
    args = dict(arg.split("=", 1) for arg in argv)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if rank == int(args.get("fail_rank", -1)):
        print(f"gloo_probe: rank {rank} failing on purpose", flush=True)
        return 3
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    expected = world_size * (world_size - 1) // 2
    if rank == 0:
        interface = os.environ.get("GLOO_SOCKET_IFNAME", "")
        line = (
            f"gloo_probe: world_size={world_size} sum={int(total.item())} "
            f"expected={expected} ifname={interface}"
        )
        print(line, flush=True)
        out = Path(args.get("train_dir", "runs"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.txt").write_text(line + "\n")
    dist.destroy_process_group()
    return 0 if int(total.item()) == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
