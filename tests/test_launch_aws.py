"""`fab launch` / `fab terminate` against moto running as a real HTTP server on 127.0.0.1.

The launcher talks to it with plain boto3 (AWS_ENDPOINT_URL, fake credentials).
Failures are injected through botocore's own event hooks (a ``before-call`` handler
answers in AWS's place, an ``after-call`` handler raises as Ctrl-C would), while every
other call reaches moto; after each failure the test asks moto what is left running.
SSH reachability is a fake here (moto's addresses are not real hosts);
test_launch_ssh.py runs the real thing against a local sshd.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import boto3
import botocore.loaders
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from launch_support.moto_server import NO_AWS_ENV, REGION, MotoServer

from launch import aws, cli
from launch import state as state_io
from launch.errors import LaunchError, UsageError
from launch.plan import TAG_RUN, LaunchOptions

pytestmark = pytest.mark.network

# One loader for every test's session: each session then parses the (large) EC2 model
# once per process instead of once per test.
_LOADER = botocore.loaders.create_loader()

FAKE_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPnpeyaK1WvXPJv+ev0gox8tB9/cSBvj3dXCr+BBDfqU"


@pytest.fixture(scope="module")
def moto_server():
    return MotoServer.shared()


@pytest.fixture
def session(moto_server, monkeypatch) -> boto3.Session:
    moto_server.reset()
    for name in NO_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    core = botocore.session.Session()
    core.register_component("data_loader", _LOADER)
    return boto3.Session(botocore_session=core, region_name=REGION)


@pytest.fixture
def ec2(session):
    return session.client("ec2")


@pytest.fixture
def ami(moto_server, ec2) -> str:
    return moto_server.register_ami(ec2)


def fake_scan(host: str, port: int, timeout: float) -> list[str]:
    return [FAKE_HOST_KEY]


def no_lookup() -> str:
    raise AssertionError("the tests pass --ssh-from; nothing may look up a public address")


def make_options(tmp_path: Path, ami: str, **overrides) -> LaunchOptions:
    values = {
        "workers": 3,
        "run": "demo",
        "region": REGION,
        "ami": ami,
        "ssh_from": "127.0.0.1",
        "state_dir": str(tmp_path / ".byzshield"),
        "hostfile": str(tmp_path / "hostfile"),
    }
    return LaunchOptions(**{**values, **overrides})


def launch(session, opts, scan=fake_scan, **kwargs) -> state_io.ClusterState:
    kwargs = {"wait_timeout": 30, "ssh_timeout": 5, "poll": 0.05, "log": lambda _: None, **kwargs}
    return aws.launch_cluster(session, opts, scan=scan, lookup_ip=no_lookup, **kwargs)


def answer_with_error(session, operation: str, code: str, *, on_call: int = 1) -> None:
    """Make the ``on_call``-th ``operation`` fail with EC2 error ``code`` (no request sent)."""
    seen = {"calls": 0}

    def handler(**_):
        seen["calls"] += 1
        if seen["calls"] == on_call:
            response = AWSResponse("http://injected", 500 if "Capacity" in code else 400, {}, None)
            return response, {
                "Error": {"Code": code, "Message": f"injected {code}"},
                "ResponseMetadata": {},
            }
        return None

    session.events.register(f"before-call.ec2.{operation}", handler)


def interrupt_after(session, operation: str, *, on_call: int = 1) -> None:
    """Raise KeyboardInterrupt once the ``on_call``-th ``operation`` has reached AWS."""
    seen = {"calls": 0}

    def handler(**_):
        seen["calls"] += 1
        if seen["calls"] == on_call:
            raise KeyboardInterrupt

    session.events.register(f"after-call.ec2.{operation}", handler)


def answer_console(session, host_key: str) -> None:
    """Make every instance's console output show cloud-init's block with ``host_key``."""
    console = (
        "cloud-init boot\n-----BEGIN SSH HOST KEY KEYS-----\n"
        f"{host_key} root@ip-172-31-0-10\n-----END SSH HOST KEY KEYS-----\n"
    )
    output = base64.b64encode(console.encode()).decode()

    def handler(**_):
        body = {"InstanceId": "i-x", "Output": output, "ResponseMetadata": {}}
        return AWSResponse("http://injected", 200, {}, None), body

    session.events.register("before-call.ec2.GetConsoleOutput", handler)


def live_instances(ec2, run: str = "demo") -> list[dict]:
    return aws.find_instances(ec2, run)


def assert_nothing_left(ec2, tmp_path: Path, run: str = "demo") -> None:
    assert live_instances(ec2, run) == []
    tag = [{"Name": f"tag:{TAG_RUN}", "Values": [run]}]
    assert ec2.describe_security_groups(Filters=tag)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=tag)["KeyPairs"] == []
    assert not state_io.state_path(tmp_path / ".byzshield", run).exists()
    assert not list((tmp_path / ".byzshield").rglob("*.pem"))
    assert not (tmp_path / "hostfile").exists()


# ----------------------------------------------------------------------------- launch


def test_launch_writes_hostfile_and_state_with_server_first(session, ec2, ami, tmp_path):
    state = launch(session, make_options(tmp_path, ami))

    assert [n.name for n in state.nodes] == ["server", "worker-1", "worker-2", "worker-3"]
    hostfile = (tmp_path / "hostfile").read_text().split()
    assert hostfile == [n.private_ip for n in state.nodes]
    saved = state_io.load(tmp_path / ".byzshield", "demo")
    assert saved == state and saved.status == "ready" and saved.region == REGION
    assert all(n.host_keys == [FAKE_HOST_KEY] for n in saved.nodes)
    assert all(n.public_ip and n.instance_id.startswith("i-") for n in saved.nodes)

    by_id = {i["InstanceId"]: i for i in live_instances(ec2)}
    assert set(by_id) == {n.instance_id for n in state.nodes}
    server = by_id[state.server.instance_id]
    assert server["InstanceType"] == "c5.2xlarge"
    assert {by_id[n.instance_id]["InstanceType"] for n in state.nodes[1:]} == {"c5.xlarge"}
    for node in state.nodes:
        instance = by_id[node.instance_id]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[TAG_RUN] == "demo" and tags["Name"] == f"byzshield-demo-{node.name}"
        assert [g["GroupId"] for g in instance["NetworkInterfaces"][0]["Groups"]] == [
            state.security_group_id
        ]


def test_launch_with_servers_puts_the_sharded_servers_first_and_status_names_them(
    session, ec2, ami, tmp_path
):
    state = launch(session, make_options(tmp_path, ami, workers=2, servers=2))
    names = ["server-0", "server-1", "worker-1", "worker-2"]
    assert [n.name for n in state.nodes] == names
    assert [n.role for n in state.nodes] == ["server", "server", "worker", "worker"]
    by_id = {i["InstanceId"]: i for i in live_instances(ec2)}
    assert [by_id[n.instance_id]["InstanceType"] for n in state.nodes] == [
        "c5.2xlarge",
        "c5.2xlarge",
        "c5.xlarge",
        "c5.xlarge",
    ]
    text = aws.format_status("demo", REGION, aws.describe_run(session, REGION, "demo"))
    assert [line.split()[0] for line in text.splitlines()[2:6]] == names


def test_security_group_allows_members_and_ssh_from_the_caller_only(session, ec2, ami, tmp_path):
    state = launch(session, make_options(tmp_path, ami))

    (group,) = ec2.describe_security_groups(GroupIds=[state.security_group_id])["SecurityGroups"]
    assert {"Key": TAG_RUN, "Value": "demo"} in group["Tags"]
    for permission in group["IpPermissions"]:
        cidrs = [r["CidrIp"] for r in permission["IpRanges"]] + [
            r["CidrIpv6"] for r in permission["Ipv6Ranges"]
        ]
        if cidrs:
            assert cidrs == ["127.0.0.1/32"]
            assert (permission["IpProtocol"], permission["FromPort"], permission["ToPort"]) == (
                "tcp",
                22,
                22,
            )
        else:
            assert permission["IpProtocol"] == "-1"
            assert [p["GroupId"] for p in permission["UserIdGroupPairs"]] == [group["GroupId"]]
    for permission in group["IpPermissionsEgress"]:
        if any(r["CidrIp"] == "0.0.0.0/0" for r in permission["IpRanges"]):
            assert permission["IpProtocol"] == "tcp" and permission["FromPort"] in (80, 443)


def test_security_group_of_an_ipv6_vpc_keeps_no_allow_all_egress(session, ec2, ami, tmp_path):
    """A new group in a VPC with an IPv6 block comes with two allow-all egress rules,
    0.0.0.0/0 and ::/0: both are revoked, leaving the members and tcp 80/443."""
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    ec2.associate_vpc_cidr_block(VpcId=vpc["VpcId"], AmazonProvidedIpv6CidrBlock=True)
    state = launch(session, make_options(tmp_path, ami))

    (group,) = ec2.describe_security_groups(GroupIds=[state.security_group_id])["SecurityGroups"]
    to_internet = [
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), cidr)
        for p in group["IpPermissionsEgress"]
        for cidr in [r["CidrIp"] for r in p["IpRanges"]] + [r["CidrIpv6"] for r in p["Ipv6Ranges"]]
    ]
    assert sorted(to_internet) == sorted(
        ("tcp", port, port, cidr) for port in (80, 443) for cidr in ("0.0.0.0/0", "::/0")
    )


def test_created_key_pair_is_tagged_and_saved_owner_only(session, ec2, ami, tmp_path):
    state = launch(session, make_options(tmp_path, ami))

    assert state.key_created and state.key_name == "byzshield-demo"
    key_file = Path(state.key_file)
    assert key_file.read_text().startswith("-----BEGIN")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    (pair,) = ec2.describe_key_pairs(KeyNames=["byzshield-demo"])["KeyPairs"]
    assert {"Key": TAG_RUN, "Value": "demo"} in pair["Tags"]


def test_same_type_cluster_launches_in_one_request(session, ec2, ami, tmp_path):
    calls = []
    session.events.register(
        "before-call.ec2.RunInstances", lambda params, **_: calls.append(params)
    )
    state = launch(session, make_options(tmp_path, ami, workers=2, worker_type="c5.2xlarge"))
    assert len(calls) == 1 and len(state.nodes) == 3


def test_ami_defaults_to_the_one_named_by_an_ssm_parameter(session, ami, tmp_path):
    session.client("ssm").put_parameter(Name="/byzshield-test/ami", Value=ami, Type="String")
    opts = make_options(tmp_path, "", ami_parameter="/byzshield-test/ami")
    assert launch(session, opts).ami == ami


def test_spot_market_reaches_ec2(session, ec2, ami, tmp_path):
    state = launch(session, make_options(tmp_path, ami, market="spot", workers=1))
    for instance in live_instances(ec2):
        assert instance.get("InstanceLifecycle") == "spot", instance["InstanceId"]
    assert state.market == "spot"


# ----------------------------------------------------------------------------- terminate


def test_terminate_deletes_everything_tagged_and_is_safe_to_repeat(session, ec2, ami, tmp_path):
    state = launch(session, make_options(tmp_path, ami))
    state.efs_id = aws.ensure_efs(session, state, log=lambda _: None, poll=0.05)

    report = aws.terminate_run(session, REGION, "demo", log=lambda _: None, poll=0.05)

    assert sorted(report.instances) == sorted(n.instance_id for n in state.nodes)
    assert report.security_groups == [state.security_group_id]
    assert report.key_pairs == ["byzshield-demo"]
    assert report.file_systems == [state.efs_id]
    assert live_instances(ec2) == []
    assert session.client("efs").describe_file_systems()["FileSystems"] == []
    again = aws.terminate_run(session, REGION, "demo", log=lambda _: None, poll=0.05)
    assert again.summary() == "nothing left to delete"


def test_terminate_leaves_other_runs_alone(session, ec2, ami, tmp_path):
    launch(session, make_options(tmp_path / "a", ami, run="keep", workers=1))
    launch(session, make_options(tmp_path / "b", ami, run="drop", workers=1))
    aws.terminate_run(session, REGION, "drop", log=lambda _: None, poll=0.05)
    assert len(live_instances(ec2, "keep")) == 2
    assert live_instances(ec2, "drop") == []


def test_status_lists_nodes_server_first(session, ami, tmp_path):
    launch(session, make_options(tmp_path, ami, workers=2))
    text = aws.format_status("demo", REGION, aws.describe_run(session, REGION, "demo"))
    lines = text.splitlines()
    assert lines[0] == f"run demo in {REGION}: 3 live instance(s)"
    assert [line.split()[0] for line in lines[2:5]] == ["server", "worker-1", "worker-2"]
    assert "fab terminate --run demo" in text


# ----------------------------------------------------------------------------- failures


def test_capacity_shortage_halfway_terminates_the_server_already_launched(
    session, ec2, ami, tmp_path
):
    answer_with_error(session, "RunInstances", "InsufficientInstanceCapacity", on_call=2)
    with pytest.raises(LaunchError) as e:
        launch(session, make_options(tmp_path, ami))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("launch failed: InsufficientInstanceCapacity: injected")
    assert "try another --zone" in message
    assert "rolled back: deleted 1 instance" in message
    assert_nothing_left(ec2, tmp_path)


def test_quota_refusal_leaves_nothing_behind(session, ec2, ami, tmp_path):
    answer_with_error(session, "RunInstances", "VcpuLimitExceeded")
    with pytest.raises(LaunchError, match="VcpuLimitExceeded: .*vCPU quota reached") as e:
        launch(session, make_options(tmp_path, ami))
    assert "security group" in str(e.value)  # the group created before was deleted
    assert_nothing_left(ec2, tmp_path)


def test_ctrl_c_while_the_workers_launch_finds_them_by_tag_and_terminates_them(
    session, ec2, ami, tmp_path
):
    # The workers' RunInstances reached AWS but Ctrl-C struck before its answer was read:
    # the launcher never learnt their ids and must find them by the run's tag.
    interrupt_after(session, "RunInstances", on_call=2)
    with pytest.raises(LaunchError) as e:
        launch(session, make_options(tmp_path, ami))
    assert e.value.code == 130
    assert str(e.value).startswith(
        "launch failed: interrupted (Ctrl-C); rolled back: deleted 4 instances"
    )
    assert_nothing_left(ec2, tmp_path)


def test_ctrl_c_while_waiting_rolls_back(session, ec2, ami, tmp_path):
    interrupt_after(session, "CreateTags", on_call=2)
    with pytest.raises(LaunchError, match=r"interrupted \(Ctrl-C\); rolled back"):
        launch(session, make_options(tmp_path, ami))
    assert_nothing_left(ec2, tmp_path)


def test_instance_terminated_by_ec2_while_starting_is_reported_and_rolled_back(
    session, ec2, ami, tmp_path
):
    # EC2 accepted the request, then could not place an instance: the waiter sees it
    # "terminated" with a StateReason. (The launcher's 1st DescribeInstances is preflight.)
    reason = "Server.InsufficientInstanceCapacity: Insufficient capacity."
    seen = {"calls": 0}

    def handler(**_):
        seen["calls"] += 1
        if seen["calls"] != 2:
            return None
        instance = {
            "InstanceId": "i-0123456789abcdef0",
            "State": {"Code": 48, "Name": "terminated"},
            "StateReason": {"Code": "Server.InsufficientInstanceCapacity", "Message": reason},
        }
        body = {"Reservations": [{"Instances": [instance]}], "ResponseMetadata": {}}
        return AWSResponse("http://injected", 200, {}, None), body

    session.events.register("before-call.ec2.DescribeInstances", handler)
    with pytest.raises(
        LaunchError,
        match=r"instance i-0123456789abcdef0 is terminated \(Server.InsufficientInstanceCapacity",
    ):
        launch(session, make_options(tmp_path, ami))
    assert_nothing_left(ec2, tmp_path)


def test_unreachable_hosts_are_terminated_after_the_ssh_timeout(session, ec2, ami, tmp_path):
    def unreachable(host, port, timeout):
        raise OSError(f"{host}:{port} not reachable over SSH (timed out)")

    with pytest.raises(
        LaunchError, match=r"4 node\(s\) not reachable over SSH after 0s.*rolled back"
    ):
        launch(session, make_options(tmp_path, ami), scan=unreachable, ssh_timeout=0.2)
    assert_nothing_left(ec2, tmp_path)


def test_host_key_unlike_the_console_output_is_refused(session, ec2, ami, tmp_path):
    answer_console(session, "ssh-ed25519 AAAAsomeoneelse")
    with pytest.raises(LaunchError, match="not in the instance's console output; refusing"):
        launch(session, make_options(tmp_path, ami))
    assert_nothing_left(ec2, tmp_path)


def test_host_key_matching_the_console_output_is_marked_verified(session, ami, tmp_path):
    answer_console(session, FAKE_HOST_KEY)
    state = launch(session, make_options(tmp_path, ami, workers=1))
    assert {n.host_key_source for n in state.nodes} == {"console"}


def test_bad_ami_is_refused_before_anything_is_created(session, ec2, tmp_path):
    with pytest.raises(UsageError, match=r"^bad AMI ami-12345678: InvalidAMIID.NotFound"):
        launch(session, make_options(tmp_path, "ami-12345678"))
    assert_nothing_left(ec2, tmp_path)


def test_unknown_instance_type_is_refused_before_anything_is_created(session, ec2, ami, tmp_path):
    with pytest.raises(UsageError, match="unknown instance type"):
        launch(session, make_options(tmp_path, ami, worker_type="c5.enormous"))
    assert_nothing_left(ec2, tmp_path)


def test_second_launch_of_a_live_run_is_refused(session, ec2, ami, tmp_path):
    launch(session, make_options(tmp_path, ami, workers=1))
    with pytest.raises(UsageError, match="run demo already has 2 instances"):
        launch(session, make_options(tmp_path / "again", ami, workers=1))
    assert len(live_instances(ec2)) == 2


def test_missing_credentials_is_one_line(monkeypatch, tmp_path):
    for name in NO_AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UsageError, match="^no AWS credentials found: run `aws configure`"):
        launch(boto3.Session(region_name=REGION), make_options(tmp_path, "ami-12345678"))


def test_cli_launch_prints_the_plan_then_the_next_steps(
    session, ami, tmp_path, monkeypatch, capsys
):
    real = aws.launch_cluster

    def launch_without_ssh(session_, opts, **kwargs):
        assert opts.ssh_cidr == "127.0.0.1/32" and opts.num_nodes == 3
        return real(session_, opts, **{**kwargs, "scan": fake_scan, "poll": 0.05})

    monkeypatch.setattr(cli.aws, "launch_cluster", launch_without_ssh)
    monkeypatch.chdir(tmp_path)
    cli.do_launch(
        workers="2",
        run="demo",
        server_type="c5.2xlarge",
        worker_type="c5.xlarge",
        region=REGION,
        ami=ami,
        volume_size="20",
        ssh_from="127.0.0.1",
        ssh_user="ubuntu",
    )
    out = capsys.readouterr().out
    assert out.startswith("byzshield launch plan\n")
    assert "ready: run demo, 3 nodes in" in out and "fab terminate --run demo" in out
    assert len((tmp_path / "hostfile").read_text().split()) == 3
    assert state_io.resolve_run(tmp_path / ".byzshield") == "demo"
