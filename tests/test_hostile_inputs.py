"""Hostile and mistaken input, table by table: each case stops with one line that names
the value and what is allowed (ConfigError / UsageError / DatasetNotFound, exit 2 on
the command line), before anything large is allocated or any folder is written.

Most cases run in process, through the same checks the commands run (composing and
building the training config is what ``python -m byzshield.train`` does before it
trains); a few need a process of their own: ``--help`` of every command, and its
output going into a pipe that is already closed (``--help | head``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from byzshield.config import ConfigError, build_run
from byzshield.config.data import _load_dataset
from byzshield.overrides import compose_config

ROOT = Path(__file__).resolve().parents[1]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ the training config


@pytest.fixture
def fresh_datasets():
    """Datasets are cached per process: read them from disk in this test, and forget
    what it read (a damaged copy) afterwards."""
    _load_dataset.cache_clear()
    yield
    _load_dataset.cache_clear()


CONFIG_CASES = [
    # finite, but not a float32: SGD's step overflowed inside torch
    (["lr=1e308"], "lr must be a finite float32 (|x| <= 3.403e+38), got 1e+308"),
    (["attack=constant", "attack.value=1e39"], "attack.value must be a finite float32"),
    # torch.manual_seed overflowed; numpy refuses negative seeds
    (
        ["seed=99999999999999999999"],
        "seed must be an integer in 0..9223372036854775807, got 99999999999999999999",
    ),
    (["seed=-1"], "seed must be an integer in 0..9223372036854775807, got -1"),
    # allocated until the kernel killed it
    (
        ["batch_size=100000000"],
        "batch_size must be at most the 1438 training samples of dataset digits, got 100000000",
    ),
    (
        ["epochs=1e308"],
        "epochs must be at most 3.75e+307 (1438 samples, batch_size=300), got 1e+308",
    ),
    (["timeout=1e300"], "timeout must be at most 1e+09 s, got 1e+300"),
    # a custom placement naming file 1000000000: [0] * 10**9 before any check
    (
        ["approach=custom", "PLACEMENT:[[0, 1], [1, 1000000000]]"],
        "custom placement '{path}': worker 1 holds file 1000000000, but the 2 workers hold "
        "4 files in all, so file ids must lie in 0..3 (every file needs a holder)",
    ),
    (
        ["approach=custom", 'PLACEMENT:{"worker_files": [[0], [1]], "num_files": 1000000000}'],
        "placement 'custom': num_files=1000000000, but the 2 workers hold 2 files in all; "
        "every file needs a holder, so num_files <= 2",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_CASES)
def test_a_bad_config_value_is_one_line_naming_it(tmp_path, overrides, message):
    path = tmp_path / "placement.json"
    args = []
    for o in overrides:
        if o.startswith("PLACEMENT:"):
            path.write_text(o.removeprefix("PLACEMENT:"))
            o = f"approach.path={path}"
        args.append(o)
    with pytest.raises(ConfigError) as info:
        build_run(compose_config(args), server=False)
    assert one_line(str(info.value)).startswith(message.format(path=path))
