"""The `fab` command line: every bad flag is one line, a dry run calls nothing, and
`fab terminate` (against moto on 127.0.0.1) is safe to repeat.

Each test runs `python -m fabric` in a subprocess from a temporary directory, as a user
runs `fab` from a checkout; the fabfile is found through ``--search-root``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from launch_support.moto_server import NO_AWS_ENV, REGION, MotoServer
from launch_support.sshd import free_port

from launch import aws
from launch import state as state_io
from launch.plan import LaunchOptions

ROOT = Path(__file__).resolve().parents[1]
NO_CREDENTIALS = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": REGION,
}


def fab(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in NO_AWS_ENV}
    return subprocess.run(
        [sys.executable, "-m", "fabric", "--search-root", str(ROOT), *args],
        cwd=cwd,
        env={**base, **NO_CREDENTIALS, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess, task: str) -> str:
    """The failure's stderr, checked to be exactly one 'fab <task>: ...' line."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fab {task}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--workers", "0"], "--workers must be between 1 and 256, got 0"),
        (["--workers", "many"], "--workers must be a whole number, got 'many'"),
        (["--worker-type", "c5-xlarge"], "--worker-type 'c5-xlarge' is not an EC2 instance type"),
        (["--server-type", "big"], "--server-type 'big' is not an EC2 instance type"),
        (["--market", "cheap"], "--market must be one of on-demand, spot"),
        (["--zone", "us-west-2a"], f"--zone 'us-west-2a' is not in region {REGION}"),
        (["--ssh-from", "0.0.0.0/0"], "SSH is only opened to one address"),
        (["--volume-size", "2"], "--volume-size must be 8..16384 GiB"),
    ],
)
def test_fab_launch_bad_flag_is_one_line(tmp_path, args, expected):
    result = fab(tmp_path, "launch", *args)
    assert expected in one_line_error(result, "launch")
    assert result.returncode == 2
    assert not (tmp_path / ".byzshield").exists()


def test_fab_launch_without_credentials_is_one_line(tmp_path):
    result = fab(tmp_path, "launch", "--workers", "2", "--ssh-from", "127.0.0.1")
    assert "no AWS credentials found" in one_line_error(result, "launch")


def test_fab_launch_dry_run_prints_the_plan_and_calls_nothing(tmp_path):
    # No credentials and an endpoint nobody listens on: any AWS call would fail.
    closed = f"http://127.0.0.1:{free_port(['127.0.0.1'])}"
    result = fab(
        tmp_path,
        "launch",
        "--workers",
        "15",
        "--run",
        "plan",
        "--market",
        "spot",
        "--dry-run",
        env={"AWS_ENDPOINT_URL": closed},
    )
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was called or created" in result.stdout
    assert "1 x c5.2xlarge (server) + 15 x c5.xlarge (workers), spot" in result.stdout
    assert "this machine's public address (looked up at launch)" in result.stdout
    # 1 x 0.34 + 15 x 0.17 = 2.89 (us-east-1 list prices)
    assert "about $2.89 per hour on demand (1 x $0.34 + 15 x $0.17;" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_fab_launch_dry_run_needs_no_region(tmp_path):
    result = fab(
        tmp_path,
        "launch",
        "--workers",
        "2",
        "--server-type",
        "x9.huge",
        "--dry-run",
        env={"AWS_DEFAULT_REGION": "", "AWS_REGION": "", "AWS_CONFIG_FILE": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    assert "not set (pass --region or set AWS_DEFAULT_REGION)" in result.stdout
    assert "no estimate for x9.huge: see https://aws.amazon.com/ec2/pricing/" in result.stdout


def test_fab_train_without_hostfile_is_one_line(tmp_path):
    result = fab(tmp_path, "train", "--", "approach=mols")
    line = one_line_error(result, "train")
    assert (
        line
        == "fab train: hostfile not found: hostfile (run `fab launch` first, or pass --hostfile)"
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["--master-port", "80"], "--master-port must be 1024..65535"),
        (["--module", "byzshield/train.py"], "is not a Python module name"),
    ],
)
def test_fab_train_bad_flag_is_one_line(tmp_path, args, expected):
    assert expected in one_line_error(fab(tmp_path, "train", *args), "train")


def test_fab_train_takes_overrides_after_double_dash_or_by_flag_but_not_both(tmp_path):
    result = fab(tmp_path, "train", "--overrides", "approach=mols", "--", "attack=alie")
    assert result.returncode == 2
    assert "give Hydra overrides after -- or with --overrides, not both" in one_line_error(
        result, "train"
    )


@pytest.mark.parametrize("task", ["setup", "status", "fetch", "stop", "terminate"])
def test_tasks_without_a_launched_cluster_say_so_in_one_line(tmp_path, task):
    line = one_line_error(fab(tmp_path, task), task)
    assert "no launched cluster in .byzshield/" in line


def test_fab_lists_every_task(tmp_path):
    result = fab(tmp_path, "--list")
    for task in ("launch", "setup", "train", "status", "fetch", "stop", "terminate"):
        assert f"  {task} " in result.stdout


@pytest.mark.network
def test_fab_terminate_removes_the_run_and_is_safe_to_repeat(tmp_path, monkeypatch):
    server = MotoServer.shared()
    server.reset()
    env = server.env()
    for name in NO_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    session = boto3.Session(region_name=REGION)
    opts = LaunchOptions(
        workers=2,
        run="demo",
        region=REGION,
        ami=server.register_ami(session.client("ec2")),
        ssh_from="127.0.0.1",
        state_dir=str(tmp_path / ".byzshield"),
        hostfile=str(tmp_path / "hostfile"),
    )
    aws.launch_cluster(
        session, opts, scan=lambda *_: ["ssh-ed25519 AAAA"], log=lambda _: None, poll=0.05
    )

    status = fab(tmp_path, "status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"run demo in {REGION}: 3 live instance(s)" in status.stdout

    first = fab(tmp_path, "terminate", env=env)
    assert first.returncode == 0, first.stderr
    assert "deleted 3 instances" in first.stdout
    assert "AWS lists no instance, group or key of it" in first.stdout
    assert not state_io.state_path(tmp_path / ".byzshield", "demo").exists()
    assert not (tmp_path / "hostfile").exists()
    assert aws.find_instances(session.client("ec2"), "demo") == []

    again = fab(tmp_path, "terminate", "--run", "demo", "--region", REGION, env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing left to delete" in again.stdout


def test_bad_worker_count_is_reported_before_any_aws_lookup(monkeypatch):
    """No region and no credentials: the bad flag still comes first."""
    import pytest

    from launch import cli
    from launch.plan import UsageError

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(UsageError, match="--workers must be between 1"):
        cli.do_launch(
            workers="0",
            server_type="c5.xlarge",
            worker_type="c5.xlarge",
            volume_size="30",
            ssh_user="ubuntu",
            dry_run=True,
        )
