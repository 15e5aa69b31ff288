"""The launcher's pure core: options, EC2 requests, firewall rules, state, remote commands.

No AWS, no SSH: what `fab launch` would send and what a host would run, checked as data
(and, for shell snippets, run by the local bash).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from launch import commands, hostkeys
from launch import state as state_io
from launch.bundle import extract_tarball, is_shipped, source_files, write_tarball
from launch.errors import UsageError
from launch.plan import (
    TAG_RUN,
    LaunchOptions,
    default_ami_parameter,
    describe_plan,
    run_instances_requests,
    security_group_rules,
    ssh_cidr,
)

ROOT = Path(__file__).resolve().parents[1]


def options(**overrides) -> LaunchOptions:
    values = {"workers": 15, "run": "demo", "region": "us-east-1", "ssh_from": "203.0.113.7"}
    return LaunchOptions(**{**values, **overrides})


def sample_state(num_workers: int = 2) -> state_io.ClusterState:
    nodes = [
        state_io.Node(
            name="server" if i == 0 else f"worker-{i}",
            role="server" if i == 0 else "worker",
            instance_id=f"i-{i:017x}",
            instance_type="c5.xlarge",
            public_ip=f"198.51.100.{10 + i}",
            private_ip=f"172.31.0.{10 + i}",
            host_keys=[
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPnpeyaK1WvXPJv+ev0gox8tB9/cSBvj3dXCr+BBDfqU"
            ],
        )
        for i in range(num_workers + 1)
    ]
    return state_io.ClusterState(run="demo", region="us-east-1", status="ready", nodes=nodes)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("workers", [0, -3])
def test_options_reject_fewer_than_one_worker_in_one_line(workers):
    with pytest.raises(UsageError, match=r"^--workers must be between 1 and \d+, got -?\d+$") as e:
        options(workers=workers)
    assert e.value.code == 2


@pytest.mark.parametrize(
    "bad", ["huge", "c5", "C5.xlarge", "c5.", ".xlarge", "c5 .xlarge", "large.xl", ""]
)
def test_options_reject_instance_types_not_shaped_family_dot_size(bad):
    with pytest.raises(UsageError, match="is not an EC2 instance type"):
        options(worker_type=bad)


@pytest.mark.parametrize(
    "good",
    ["c5.xlarge", "c5n.18xlarge", "m7i-flex.large", "u-6tb1.56xlarge", "t4g.nano", "a1.metal"],
)
def test_options_accept_real_instance_types(good):
    assert options(server_type=good).server_type == good


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"market": "reserved"}, "--market must be one of"),
        ({"region": "mars-1"}, "is not an AWS region"),
        ({"zone": "us-west-2a"}, "is not in region us-east-1"),
        ({"ami": "ami-xyz"}, "is not an AMI id"),
        ({"ami": "ami-0123456789abcdef0", "ami_parameter": "/x"}, "not both"),
        ({"volume_size": 4}, "--volume-size must be 8..16384"),
        ({"run": "Has Spaces"}, "--run 'Has Spaces'"),
        ({"ssh_user": "root;rm"}, "is not a user name"),
    ],
)
def test_options_reject_each_bad_flag_with_its_name(kwargs, message):
    with pytest.raises(UsageError, match=message) as e:
        options(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("wide", ["10.0.0.0/24", "0.0.0.0/0", "::/0", "2001:db8::/64"])
def test_ssh_from_refuses_anything_wider_than_one_address(wide):
    with pytest.raises(UsageError):
        ssh_cidr(wide)


def test_ssh_from_turns_an_address_into_a_single_host_cidr():
    assert ssh_cidr("203.0.113.7") == "203.0.113.7/32"
    assert ssh_cidr("2001:db8::1") == "2001:db8::1/128"
    with pytest.raises(UsageError, match="not an IP address"):
        ssh_cidr("my-laptop")


def test_default_ami_parameter_follows_the_instance_architecture():
    assert default_ami_parameter("x86_64").endswith("/amd64/hvm/ebs-gp3/ami-id")
    assert default_ami_parameter("arm64").startswith("/aws/service/canonical/ubuntu/server/24.04/")
    with pytest.raises(UsageError, match="pass --ami"):
        default_ami_parameter("i386")


# ----------------------------------------------------------------------------- firewall


def _cidrs(permission: dict) -> list[str]:
    return [r["CidrIp"] for r in permission.get("IpRanges", [])] + [
        r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])
    ]


def test_security_group_accepts_only_its_members_and_ssh_from_the_caller():
    ingress, egress = security_group_rules("sg-1", "203.0.113.7/32")
    internet = {"0.0.0.0/0", "::/0"}
    assert not any(internet & set(_cidrs(p)) for p in ingress)
    members = [p for p in ingress if p.get("UserIdGroupPairs")]
    assert members == [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-1"}]}]
    (ssh,) = [p for p in ingress if not p.get("UserIdGroupPairs")]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert _cidrs(ssh) == ["203.0.113.7/32"]
    # Outbound to the internet: only web ports (apt, pip), never everything.
    for permission in egress:
        if internet & set(_cidrs(permission)):
            assert permission["IpProtocol"] == "tcp"
            assert permission["FromPort"] == permission["ToPort"] in (80, 443)


def test_security_group_ssh_rule_uses_ipv6_ranges_for_an_ipv6_caller():
    ingress, _ = security_group_rules("sg-1", "2001:db8::1/128")
    assert ingress[1]["Ipv6Ranges"][0]["CidrIpv6"] == "2001:db8::1/128"
    assert "IpRanges" not in ingress[1]


# ----------------------------------------------------------------------------- requests


def test_same_type_cluster_is_one_all_or_nothing_request():
    (request,) = run_instances_requests(
        options(worker_type="c5.2xlarge"),
        ami="ami-1",
        root_device="/dev/sda1",
        subnet_id="s",
        group_id="g",
    )
    role, kwargs = request
    assert role == "cluster" and kwargs["MinCount"] == kwargs["MaxCount"] == 16


def test_mixed_types_are_one_request_for_the_server_then_one_for_the_workers():
    requests = run_instances_requests(
        options(workers=3),
        ami="ami-1",
        root_device="/dev/sda1",
        subnet_id="subnet-1",
        group_id="sg-1",
    )
    assert [(r, k["InstanceType"], k["MinCount"], k["MaxCount"]) for r, k in requests] == [
        ("server", "c5.2xlarge", 1, 1),
        ("workers", "c5.xlarge", 3, 3),
    ]
    for _, kwargs in requests:
        assert kwargs["MetadataOptions"]["HttpTokens"] == "required"
        assert kwargs["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        (nic,) = kwargs["NetworkInterfaces"]
        assert nic["Groups"] == ["sg-1"] and nic["SubnetId"] == "subnet-1"
        ebs = kwargs["BlockDeviceMappings"][0]["Ebs"]
        assert ebs["Encrypted"] and ebs["DeleteOnTermination"] and ebs["VolumeSize"] == 30
        kinds = {s["ResourceType"] for s in kwargs["TagSpecifications"]}
        assert kinds == {"instance", "volume"}
        for spec in kwargs["TagSpecifications"]:
            assert {"Key": TAG_RUN, "Value": "demo"} in spec["Tags"]
        assert "InstanceMarketOptions" not in kwargs


def test_spot_requests_are_one_time_and_terminate_on_interruption():
    for _, kwargs in run_instances_requests(
        options(market="spot"), ami="ami-1", root_device="/dev/xvda", subnet_id="s", group_id="g"
    ):
        spot = kwargs["InstanceMarketOptions"]
        assert spot["MarketType"] == "spot"
        assert spot["SpotOptions"] == {
            "SpotInstanceType": "one-time",
            "InstanceInterruptionBehavior": "terminate",
        }
        assert "spot-instances-request" in {s["ResourceType"] for s in kwargs["TagSpecifications"]}


def test_dry_run_plan_names_every_resource_and_how_to_undo_it():
    text = describe_plan(options(market="spot"))
    for expected in (
        "1 x c5.2xlarge (server) + 15 x c5.xlarge (workers), spot, all or nothing",
        "SSH only from 203.0.113.7/32",
        "IMDSv2 required",
        "byzshield-demo",
        "mode 0600",
        "hostfile (16 private IPs, server first)",
        ".byzshield/demo/state.json",
        "fab terminate --run demo",
    ):
        assert expected in text
    assert "0.0.0.0/0" not in text


# ----------------------------------------------------------------------------- state


def test_state_round_trips_through_json(tmp_path):
    state = sample_state()
    state_io.save(state, tmp_path)
    path = state_io.state_path(tmp_path, "demo")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    data = json.loads(path.read_text())
    assert {"run", "region", "nodes", "security_group_id", "key_name"} <= data.keys()
    assert {"instance_id", "public_ip", "private_ip", "host_keys"} <= data["nodes"][0].keys()
    assert state_io.load(tmp_path, "demo") == state


def test_hostfile_lists_private_ips_server_first(tmp_path):
    state = sample_state()
    path = state_io.write_hostfile(state, tmp_path / "hostfile")
    assert path.read_text() == "172.31.0.10\n172.31.0.11\n172.31.0.12\n"
    nodes = state_io.nodes_from_hostfile(state, path)
    assert [n.name for n in nodes] == ["server", "worker-1", "worker-2"]


def test_missing_hostfile_is_one_clear_line(tmp_path):
    with pytest.raises(
        UsageError, match=r"^hostfile not found: .*hostfile \(run `fab launch` first"
    ):
        state_io.read_hostfile(tmp_path / "hostfile")


def test_hostfile_naming_a_stranger_is_refused(tmp_path):
    (tmp_path / "hostfile").write_text("172.31.0.10\n10.9.9.9\n")
    with pytest.raises(UsageError, match="10.9.9.9 is not a node of run demo"):
        state_io.nodes_from_hostfile(sample_state(), tmp_path / "hostfile")


def test_resolve_run_picks_the_only_run_and_asks_when_there_are_several(tmp_path):
    with pytest.raises(UsageError, match="no launched cluster"):
        state_io.resolve_run(tmp_path)
    state_io.save(sample_state(), tmp_path)
    assert state_io.resolve_run(tmp_path) == "demo"
    other = sample_state()
    other.run = "other"
    state_io.save(other, tmp_path)
    with pytest.raises(UsageError, match=r"several runs .*\(demo, other\): pass --run"):
        state_io.resolve_run(tmp_path)


# ----------------------------------------------------------------------------- host keys


def test_console_host_keys_are_read_from_cloud_inits_block():
    console = (
        "boot noise\n-----BEGIN SSH HOST KEY KEYS-----\n"
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-172-31-0-10\n"
        "ssh-ed25519 AAAAC3NzaC1l root@ip-172-31-0-10\n"
        "-----END SSH HOST KEY KEYS-----\nlogin:"
    )
    keys = hostkeys.console_host_keys(console)
    assert keys == ["ecdsa-sha2-nistp256 AAAAE2VjZHNh", "ssh-ed25519 AAAAC3NzaC1l"]
    assert hostkeys.check_against_console(["ssh-ed25519 AAAAC3NzaC1l"], keys) == "console"
    assert hostkeys.check_against_console(["ssh-ed25519 AAAAC3NzaC1l"], []) == "first-contact"
    with pytest.raises(ValueError, match="not in the instance's console output"):
        hostkeys.check_against_console(["ssh-ed25519 AAAAother"], keys)


def test_known_hosts_name_carries_the_port_unless_it_is_22():
    assert hostkeys.host_key_name("10.0.0.1", 22) == "10.0.0.1"
    assert hostkeys.host_key_name("127.0.0.2", 2222) == "[127.0.0.2]:2222"


# ----------------------------------------------------------------------------- commands


def test_torchrun_uses_static_rendezvous_at_the_parameter_server():
    args = commands.torchrun_args(
        node_rank=3,
        num_nodes=16,
        master_addr="172.31.0.10",
        run="demo",
        overrides=["approach=mols"],
    )
    assert args == [
        "--nnodes", "16", "--nproc-per-node", "1", "--node-rank", "3",
        "--master-addr", "172.31.0.10", "--master-port", "29500", "--rdzv-id", "demo",
        "-m", "byzshield.train", "approach=mols",
    ]  # fmt: skip


def test_train_command_quotes_overrides_and_records_the_pid():
    script = commands.train_command(
        private_ip="172.31.0.11",
        run="demo",
        node_rank=1,
        num_nodes=2,
        master_addr="172.31.0.10",
        overrides=["attack.name=alie", "note=it's $HOME"],
    )
    assert 'export GLOO_SOCKET_IFNAME="$iface"' in script
    assert 'echo $$ > "$HOME/.byzshield-train-demo.pid"' in script
    assert script.splitlines()[-1].startswith(
        'exec "$HOME/byzshield-venv/bin/python" -m byzshield.comm'
    )
    assert "'note=it'\"'\"'s $HOME'" in script
    subprocess.run(["bash", "-n", "-c", script], check=True, timeout=10)


def test_interface_snippet_finds_the_interface_of_a_local_address():
    snippet = commands.interface_snippet("127.0.0.1") + '\necho "$GLOO_SOCKET_IFNAME"'
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")
    out = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "lo"


@pytest.mark.parametrize("system_site_packages", [False, True])
@pytest.mark.parametrize("efs_dns", ["", "fs-1.efs.us-east-1.amazonaws.com"])
def test_setup_script_is_valid_bash(system_site_packages, efs_dns):
    script = commands.setup_script(
        python="python3",
        system_site_packages=system_site_packages,
        pip_args="--no-index --find-links '/tmp/wheels dir'",
        torch_pins=["torch==2.14.1", "torchvision==0.29.1"],
        efs_dns=efs_dns,
    )
    subprocess.run(["bash", "-n", "-c", script], check=True, timeout=10)
    index = (
        "--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
    )
    assert f"{index} torch==2.14.1 torchvision==0.29.1" in script
    assert ("/mnt/byzshield" in script) == bool(efs_dns)


def test_setup_venv_sees_the_packages_of_a_virtualenv_python(tmp_path):
    # venv's --system-site-packages alone would expose only the parent's base interpreter.
    parent = tmp_path / "parent"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(parent)],
        check=True,
        timeout=120,
    )
    parent_python = parent / "bin" / "python"
    purelib = subprocess.run(
        [str(parent_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    marker = Path(purelib) / "byzshield_parent_marker.py"
    marker.write_text("")
    lines = commands.venv_script(python=str(parent_python), system_site_packages=True)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    script = "\n".join(["set -eu", *lines])
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=300)
    found = subprocess.run(
        [
            str(home / "byzshield-venv" / "bin" / "python"),
            "-c",
            "import byzshield_parent_marker as m; print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == str(marker), found.stderr


def test_torch_pins_are_read_from_requirements():
    text = "# deps\ntorch==2.14.1\ntorchvision==0.29.1  # cpu\nnumpy>=1.26\ntorchmetrics>=1\n"
    assert commands.torch_pins(text) == ["torch==2.14.1", "torchvision==0.29.1"]


def test_stop_command_signals_torchrun_but_never_a_recycled_pid(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    pidfile = tmp_path / ".byzshield-train-demo.pid"
    bystander = subprocess.Popen(["sleep", "30"])
    fake_torchrun = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-m", "torch.distributed.run"]
    )
    try:
        pidfile.write_text(f"{bystander.pid}\n")
        subprocess.run(
            ["bash", "-c", commands.stop_command("demo")], env=env, check=True, timeout=10
        )
        time.sleep(0.2)
        assert bystander.poll() is None, "a process that is not torchrun was signalled"
        pidfile.write_text(f"{fake_torchrun.pid}\n")
        out = subprocess.run(
            ["bash", "-c", commands.stop_command("demo")],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert "sent SIGTERM" in out.stdout
        assert fake_torchrun.wait(timeout=10) != 0
    finally:
        for process in (bystander, fake_torchrun):
            process.kill()
            process.wait(timeout=10)


def test_pack_outputs_command_refuses_to_climb_out_of_the_project():
    with pytest.raises(ValueError, match="no '..'"):
        commands.pack_outputs_command("../etc", "/tmp/x.tar.gz")
    assert '-C "$HOME/byzshield"/. runs' in commands.pack_outputs_command("runs", "/tmp/x.tar.gz")
    assert "-C /data out" in commands.pack_outputs_command("/data/out", "/tmp/x.tar.gz")


# ----------------------------------------------------------------------------- bundle


def test_checkout_bundle_leaves_keys_state_outputs_and_caches_behind():
    assert is_shipped("byzshield/train.py") and is_shipped("conf/approach/mols.yaml")
    assert is_shipped(
        "byzshield/compute/assets/digits.csv.gz"
    )  # package data, not the download cache
    for local in (
        ".byzshield/demo/byzshield-demo.pem",
        ".byzshield/demo/state.json",
        "hostfile",
        "runs/x/ckpt.pt",
        "data/cifar-10-batches-py/data_batch_1",
        "fetched/demo/server/runs/m.json",
        ".git/config",
        "byzshield/__pycache__/x.pyc",
        "keys/id.pem",
        "byzshield.egg-info/PKG-INFO",
    ):
        assert not is_shipped(local), local


def test_source_files_of_this_checkout_include_the_project_and_no_state():
    files = source_files(ROOT)
    assert {"setup.py", "requirements.txt", "launch/plan.py", "fabfile.py"} <= set(files)
    assert not [f for f in files if f.startswith((".byzshield/", ".git/")) or f.endswith(".pem")]


def test_fetched_tarballs_cannot_write_outside_the_destination(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises((tarfile.TarError, ValueError)):
        extract_tarball(evil, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()
    good = tmp_path / "good.tar.gz"
    write_tarball(tmp_path, ["payload"], good)
    extract_tarball(good, tmp_path / "dest")
    assert (tmp_path / "dest" / "payload").read_text() == "x"


# ----------------------------------------------------------------------------- boundaries


def test_launch_package_never_imports_torch_or_byzshield():
    for path in sorted((ROOT / "launch").glob("*.py")) + [ROOT / "fabfile.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("torch", "byzshield"), (
                    f"{path.name} imports {name}"
                )
    probe = (
        "import sys, launch.cli, launch.remote, launch.aws; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'byzshield')]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, timeout=60)


def test_servers_make_k_plus_s_instances_the_servers_first_named_and_priced():
    from launch.plan import estimate_cost, node_name

    opts = options(workers=3, servers=2)
    assert opts.num_nodes == 5
    requests = run_instances_requests(
        opts, ami="ami-1", root_device="/dev/sda1", subnet_id="s", group_id="g"
    )
    assert [(role, kw["MinCount"]) for role, kw in requests] == [("server", 2), ("workers", 3)]
    assert [node_name(i, 2) for i in range(5)] == [
        "server-0",
        "server-1",
        "worker-1",
        "worker-2",
        "worker-3",
    ]
    assert [node_name(i) for i in range(3)] == ["server", "worker-1", "worker-2"]
    assert "2 x $" in estimate_cost(opts)
    assert "2 x c5.2xlarge (2 servers (ps_shards)) + 3 x c5.xlarge" in describe_plan(opts)
    with pytest.raises(UsageError, match="--servers must be between 1 and 64, got 0"):
        options(servers=0)


def test_fab_train_passes_ps_shards_for_a_cluster_launched_with_several_servers():
    from launch.cli import with_servers

    nodes = sample_state(3).nodes
    assert with_servers(["mode=bulyan"], nodes, 1) == ["mode=bulyan"]  # one server
    nodes[1].role = "server"
    assert with_servers(["mode=bulyan"], nodes, 1) == ["mode=bulyan", "ps_shards=2"]
    assert with_servers(["ps_shards=1"], nodes, 1) == ["ps_shards=1"]  # the user's own
    assert with_servers([], nodes, 2) == []  # several processes per node: the user's call
