"""Hostile and mistaken input, table by table: each case stops with one line that names
the value and what is allowed (ConfigError / UsageError / DatasetNotFound, exit 2 on
the command line), before anything large is allocated or any folder is written.

Most cases run in process, through the same checks the commands run (composing and
building the training config is what ``python -m byzshield.train`` does before it
trains); a few need a process of their own: ``--help`` of every command, and its
output going into a pipe that is already closed (``--help | head``).
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_env

from byzshield import slurm
from byzshield.compute import datasets as data_module
from byzshield.compute.datasets import DatasetNotFound, load_dataset
from byzshield.config import ConfigError, build_run
from byzshield.config.data import cached_dataset
from byzshield.config.overrides import compose_config
from byzshield.placement import placement_main

ROOT = Path(__file__).resolve().parents[1]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------------------------ the training config


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


# ------------------------------------------------------------------ datasets


@pytest.fixture
def fresh_datasets():
    """Datasets are cached per process: read them from disk in this test, and forget
    what it read (a damaged copy) afterwards."""
    cached_dataset.cache_clear()
    yield
    cached_dataset.cache_clear()


def _damaged(tmp_path: Path, name: str, keep: int) -> Path:
    """A copy of the shipped ``name`` cut to its first ``keep`` bytes, in tmp_path."""
    copy = tmp_path / name
    copy.write_bytes(data_module._shipped(name).read_bytes()[:keep])
    return copy


@pytest.mark.parametrize(
    ("dataset", "name", "keep", "reason"),
    [
        ("digits", "digits.csv.gz", 20_000, "EOFError: Compressed file ended"),
        ("digits", "digits.csv.gz", 0, "ValueError: expected 1797 rows of 65 values, got (0,"),
        ("mnist1d", "mnist1d.npz", 100_000, "BadZipFile: File is not a zip file"),
    ],
)
def test_a_damaged_shipped_dataset_names_the_file_and_how_to_restore_it(
    tmp_path, monkeypatch, fresh_datasets, dataset, name, keep, reason
):
    copy = _damaged(tmp_path, name, keep)
    monkeypatch.setattr(data_module, "_shipped", lambda n: tmp_path / n)
    network = "cnn1d" if dataset == "mnist1d" else "lenet"
    with pytest.raises(ConfigError) as info:
        build_run(compose_config([f"dataset={dataset}", f"network={network}"]), server=False)
    line = one_line(str(info.value))
    assert line.startswith(f"{dataset}: the shipped file {copy} is missing or damaged ({reason}")
    assert line.endswith(f"git checkout -- byzshield/compute/assets/{name})")
    assert "reinstalling byzshield" in line


def test_a_shipped_digits_file_with_rows_missing_is_refused(tmp_path, monkeypatch):
    rows = gzip.decompress(data_module._shipped("digits.csv.gz").read_bytes()).splitlines()
    (tmp_path / "digits.csv.gz").write_bytes(gzip.compress(b"\n".join(rows[:1000])))
    monkeypatch.setattr(data_module, "_shipped", lambda n: tmp_path / n)
    with pytest.raises(DatasetNotFound, match=r"expected 1797 rows of 65 values, got \(1000, 65\)"):
        load_dataset("digits", root=tmp_path, download=False, train=True)


def _mnist_folder(root: Path, images: bytes) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    return raw


@pytest.mark.parametrize(
    "images",
    [
        bytes(range(256)) * 4,  # noise: torchvision asserted, with no message
        b"\x00\x00\x08\x03\x00\x00\x00\x10",  # a header and no data: int(b'', 16)
    ],
)
def test_a_corrupt_mnist_folder_names_the_file_and_how_to_restore_it(
    tmp_path, fresh_datasets, images
):
    raw = _mnist_folder(tmp_path / "data", images)
    with pytest.raises(ConfigError) as info:
        build_run(compose_config(["dataset=mnist", f"dataset.root={tmp_path / 'data'}"]))
    line = one_line(str(info.value))
    assert line.startswith(f"mnist: {raw / 'train-images-idx3-ubyte'} is damaged (")
    assert line.endswith(
        f"delete {raw.parent} and run again with dataset.download=true, or put an intact copy there"
    )


def _failing_download(url, download_root, filename=None, md5=None, **_):
    """What torchvision sees with no network, after it made its folders and began a file."""
    from urllib.error import URLError

    Path(download_root).mkdir(parents=True, exist_ok=True)
    (Path(download_root) / (filename or "partial.gz")).write_bytes(b"\x1f\x8b")
    raise URLError("no network here")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_download_removes_what_it_created(tmp_path, monkeypatch, existing):
    import torchvision.datasets.mnist

    monkeypatch.setattr(
        torchvision.datasets.mnist, "download_and_extract_archive", _failing_download
    )
    root = tmp_path / "data"
    if existing:  # a folder the user had: it and what was in it stay
        root.mkdir()
        (root / "notes.txt").write_text("mine")
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("mnist", root=root, download=True, train=True)
    assert one_line(str(info.value)).startswith(
        "mnist: files not found or corrupted (Error downloading"
    )
    if existing:
        assert sorted(p.name for p in root.rglob("*")) == ["notes.txt"]
    else:
        assert not root.exists()


# ------------------------------------------------------------------ python -m byzshield.placement


def test_placement_out_is_checked_before_the_search(tmp_path, monkeypatch, capsys):
    import byzshield.design.search

    def search(*args, **kwargs):
        raise AssertionError("the search ran before out= was checked")

    monkeypatch.setattr(byzshield.design.search, "worst_case_table", search)
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "figures"
    assert placement_main(["+experiment=distortion", f"out={out}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: out={out} cannot be created: {tmp_path / 'a-file'} is a file"
    )
    assert not out.exists()


def test_placement_help_lists_the_approaches_it_accepts(capsys):
    from byzshield.config.overrides import compose, group_options

    assert placement_main(["--help"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "approach=NAME" in ln]
    listed = [name.strip() for name in line.split("approach=NAME", 1)[1].split(" | ")]
    assert listed == group_options("approach") and "detox" not in listed
    for name in listed:  # each one it lists composes
        assert compose("placement", [f"approach={name}"]).approach.name == name


# ------------------------------------------------------------------ python -m byzshield.slurm


def test_slurm_help_shows_the_default_port(capsys):
    with pytest.raises(SystemExit) as info:
        slurm.main(["--help"])
    assert info.value.code == 0
    assert "20000 + job id % 20000" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("port", ["99999", "0", "-5"])
def test_slurm_port_outside_1_to_65535_is_one_line(tmp_path, capsys, port):
    code = slurm.main(["--nodes", "1", "--dry-run", "--port", port, f"train_dir={tmp_path / 'r'}"])
    assert code == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: --port must be a TCP port in 1..65535, got {port}"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", "99999"],
            "error: --master-port needs a TCP port in 1..65535, got 99999",
        ),
        (
            ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:70000"],
            "error: --rdzv-endpoint needs a TCP port in 0..65535, got 70000",
        ),
    ],
)
def test_comm_port_outside_the_tcp_range_is_one_line(capsys, args, message):
    from byzshield.engines.torchrun import launch as comm

    with pytest.raises(SystemExit) as info:
        comm.torchrun([*args, "--nproc-per-node", "1", "-m", "byzshield.train"])
    assert info.value.code == 2
    assert one_line(capsys.readouterr().err) == message


def _resolver(table: dict[str, list[str]]):
    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in table[host]
        ]

    return getaddrinfo


@pytest.mark.parametrize(
    ("node_addr", "names", "expected"),
    [
        ("10.1.2.3", {}, "10.1.2.3"),  # an address is used as it is
        ("node0", {"node0": ["10.1.2.3"]}, "10.1.2.3"),
        ("node0", {"node0": ["fd00::7", "10.1.2.3"]}, "10.1.2.3"),  # IPv4 first
        ("node0", {"node0": ["127.0.1.1", "fd00::7"]}, "fd00::7"),  # reachable first
        ("node0", {"node0": ["127.0.1.1"]}, "127.0.1.1"),  # one host: loopback is enough
    ],
)
def test_slurm_rendezvous_binds_an_address_not_a_host_name(monkeypatch, node_addr, names, expected):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver(names))
    assert slurm.rendezvous_address(node_addr, []) == expected


def test_slurm_rendezvous_name_that_does_not_resolve_is_one_line(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({}))
    with pytest.raises(ValueError) as info:
        slurm.rendezvous_address("node0", [])
    assert one_line(str(info.value)).startswith("cannot resolve the first node's address 'node0'")


def test_slurm_rendezvous_loopback_name_on_several_hosts_binds_the_routed_address(monkeypatch):
    """Debian maps a machine's own name to 127.0.1.1: bound there, the other nodes could
    not reach the store; the address this host reaches them from is used instead."""
    peer = "192.0.2.77"  # TEST-NET-1: routed by any default route, never answers
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((peer, 9))
            routed = probe.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no route beyond loopback")
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"node0": ["127.0.1.1"], "node1": [peer]}))
    address = slurm.rendezvous_address("node0", ["node1"])
    assert address == routed and not ipaddress.ip_address(address).is_loopback


def test_slurm_task_passes_torchrun_an_ip_address(tmp_path, monkeypatch, capsys):
    """Inside the job (``--node``): NodeAddr a host name, the store bound to its address."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = hostnames ]; then echo localhost; '
        "else echo NodeName=n0 NodeAddr=localhost State=IDLE; fi\n"
    )
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost")
    # slurm.main sets BYZSHIELD_RANK_NODES for torchrun's ranks: set it here first, so that
    # the monkeypatch takes it away again after the test
    monkeypatch.setenv("BYZSHIELD_RANK_NODES", "")
    monkeypatch.delenv("BYZSHIELD_RANK_NODES")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    started = []

    def execv(path, cmd):
        started.append(cmd)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(socket, "getaddrinfo", _resolver({"localhost": ["127.0.0.1"]}))
    with pytest.raises(SystemExit):
        slurm.main(["--node", "--counts", "16", "--", "approach=mols"])
    (cmd,) = started
    assert cmd[cmd.index("--master-addr") + 1] == "127.0.0.1"
    assert "rendezvous 127.0.0.1:20007" in capsys.readouterr().out


# ------------------------------------------------------------------ every command's --help

COMMANDS = {
    "train": [sys.executable, "-m", "byzshield.train", "--help"],
    "report": [sys.executable, "-m", "byzshield.report", "--help"],
    "placement": [sys.executable, "-m", "byzshield.placement", "--help"],
    "slurm": [sys.executable, "-m", "byzshield.slurm", "--help"],
    "evaluate": [sys.executable, "-m", "byzshield.evaluate", "--help"],
    "comm": [sys.executable, "-m", "byzshield.comm", "--help"],
    "fab": [sys.executable, "-m", "fabric", "--list"],
}
FIRST_WORDS = {"fab": "Available tasks:"}


@pytest.mark.slow  # a process each; test_help_of_every_command_in_process is the fast half
@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_every_command_prints_and_survives_a_closed_pipe(tmp_path, command):
    """``--help`` prints its text and exits 0; into a pipe whose reader has already gone
    (``--help | head`` once head has its lines) it exits quietly, no BrokenPipeError."""
    if command == "fab" and shutil.which("fab") is None:
        pytest.skip("Fabric is not installed")
    cmd, env = COMMANDS[command], run_env()
    shown = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert shown.stdout.startswith(FIRST_WORDS.get(command, "usage:")), shown.stdout[:200]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        cut = subprocess.run(
            cmd, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, timeout=120
        )
    finally:
        os.close(write)
    assert cut.returncode == 0 and cut.stderr == "", cut.stderr


def _help_in_process(command: str) -> str:
    from byzshield import evaluate, placement, slurm
    from byzshield.cli.launcher import train_help
    from byzshield.engines.torchrun.launch import torchrun
    from byzshield.report.cli import main as report_main

    if command == "train":
        return train_help()
    run = {
        "report": report_main,
        "placement": placement.main,
        "slurm": slurm.main,
        "evaluate": evaluate.main,
        "comm": torchrun,
    }[command]
    try:
        status = run(["--help"])
    except SystemExit as exc:  # argparse's --help
        status = exc.code
    assert status in (0, None)
    return ""


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "fab"])
def test_help_of_every_command_in_process(capsys, command):
    """Every command's ``--help`` builds and prints its text (a ``%`` in an argparse help
    string crashed ``slurm --help``); the closed pipe needs processes (the test above)."""
    text = _help_in_process(command) or capsys.readouterr().out
    assert text.startswith("usage:"), text[:200]
