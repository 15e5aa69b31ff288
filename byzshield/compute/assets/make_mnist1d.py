"""Regenerate ``byzshield/compute/assets/mnist1d.npz`` from the ``mnist1d`` package.

    pip install mnist1d==0.0.2.post1
    python byzshield/compute/assets/make_mnist1d.py

Writes :func:`byzshield.compute.datasets.write_mnist1d` next to this script and prints its SHA-256
(the one recorded in ``README.md`` beside it). ``tests/test_datasets.py`` checks that the
shipped arrays equal a fresh generation whenever ``mnist1d`` is installed.
"""

import hashlib
from pathlib import Path

from byzshield.compute.datasets import MNIST1D_FILE, write_mnist1d

if __name__ == "__main__":
    path = Path(__file__).with_name(MNIST1D_FILE)
    write_mnist1d(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {path.stat().st_size} bytes, SHA-256 {digest}")
