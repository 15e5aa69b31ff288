"""``python -m byzshield.comm``: torchrun with its rendezvous stores bound to the address
they are given (127.0.0.1 for ``--standalone``), and one line when a rank fails.

    python -m byzshield.comm --standalone --nproc-per-node 16 -m byzshield.train

The command keeps the name it has always had; the code is
:mod:`byzshield.engines.torchrun.launch`, beside the torchrun engine's process group.
"""

import sys

from byzshield.engines.torchrun.launch import torchrun


def main() -> None:
    sys.argv[0] = "python -m byzshield.comm"  # what --help shows as the usage
    torchrun(sys.argv[1:])


if __name__ == "__main__":
    main()
