"""The boto3 side of the launcher: preflight, all-or-nothing launch, status, terminate.

Everything a run creates carries the tag ``byzshield:run=<run>``; `terminate_run` finds
it by that tag alone, so it also cleans up after a launcher that was killed outright,
and running it twice is harmless. `launch_cluster` calls it itself when anything goes
wrong (capacity, quota, a bad AMI, an unreachable host, Ctrl-C), so a failed launch
leaves nothing billing behind.

    session = make_session("us-east-1")
    state = launch_cluster(session, LaunchOptions(workers=15, run="demo", region="us-east-1"))
    terminate_run(session, "us-east-1", "demo")
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from launch import state as state_io
from launch.errors import LaunchError, UsageError
from launch.hostkeys import check_against_console, console_host_keys, scan_host_keys
from launch.plan import (
    TAG_NODE,
    TAG_ROLE,
    TAG_RUN,
    LaunchOptions,
    default_ami_parameter,
    node_name,
    resource_name,
    run_instances_requests,
    run_tags,
    security_group_rules,
    ssh_cidr,
)
from launch.state import ClusterState, Node

CHECKIP_URL = "https://checkip.amazonaws.com"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

Log = Callable[[str], None]
Scan = Callable[[str, int, float], list[str]]

# What to do about the refusals a launch commonly meets, keyed by EC2 error code.
HINTS = {
    "InsufficientInstanceCapacity": (
        "AWS has no spare capacity for this type in this zone: try another --zone, "
        "another instance type, or --market on-demand"
    ),
    "InstanceLimitExceeded": (
        "instance quota reached: request more in Service Quotas (EC2), or launch fewer "
        "or smaller instances"
    ),
    "VcpuLimitExceeded": (
        "vCPU quota reached: request more in Service Quotas (EC2 'Running On-Demand' or "
        "'All Standard Spot Instance Requests'), or launch fewer or smaller instances"
    ),
    "MaxSpotInstanceCountExceeded": "spot quota reached: use --market on-demand or fewer workers",
    "SpotMaxPriceTooLow": "spot price is above the on-demand cap: use --market on-demand",
    "InvalidAMIID.NotFound": "no such AMI in this region (AMI ids are per region)",
    "InvalidAMIID.Malformed": "malformed AMI id",
    "InvalidAMIID.Unavailable": "the AMI is no longer available",
    "UnauthorizedOperation": (
        "these credentials may not do this: the launcher needs ec2:*, ssm:GetParameter "
        "and, for --efs, elasticfilesystem:*"
    ),
    "AuthFailure": "AWS rejected the credentials",
    "RequestExpired": "the request expired: check this machine's clock",
}


def explain(exc: BaseException) -> str:
    """One line saying what went wrong, with a hint for the usual EC2 refusals."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        message = " ".join(str(error.get("Message", "")).split())[:240]
        hint = HINTS.get(code)
        return f"{code}: {message}" + (f" ({hint})" if hint else "")
    if isinstance(exc, WaiterError):
        return f"gave up waiting ({exc.kwargs.get('reason', exc)})"
    if isinstance(exc, (LaunchError, BotoCoreError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def make_session(region: str = "") -> boto3.Session:
    """A boto3 session (honours AWS_PROFILE, AWS_ENDPOINT_URL and the usual variables)."""
    return boto3.Session(region_name=region or None)


def require_credentials(session: boto3.Session) -> None:
    if session.get_credentials() is None:
        raise UsageError(
            "no AWS credentials found: run `aws configure`, or set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )


def resolve_region(session: boto3.Session, region: str = "") -> str:
    region = region or session.region_name or ""
    if not region:
        raise UsageError(
            "no AWS region: pass --region, or set AWS_DEFAULT_REGION or a region in ~/.aws/config"
        )
    return region


def my_public_ip(url: str = CHECKIP_URL, attempts: int = 3, timeout: float = 5.0) -> str:
    """This machine's public address as the internet sees it (AWS's checkip service)."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                text = response.read(64).decode(errors="replace").strip()
            ipaddress.ip_address(text)
            return text
        except (OSError, ValueError) as e:
            last = e
            time.sleep(min(2.0**attempt, 4.0))
    raise UsageError(f"could not find this machine's public address ({last}): pass --ssh-from")


def _run_filter(run: str) -> list[dict]:
    return [{"Name": f"tag:{TAG_RUN}", "Values": [run]}]


def find_instances(ec2, run: str, instance_ids: Iterable[str] = ()) -> list[dict]:
    """The run's instances that are not terminated: by tag, plus ``instance_ids``."""
    found: dict[str, dict] = {}
    queries = [
        {"Filters": _run_filter(run) + [{"Name": "instance-state-name", "Values": LIVE_STATES}]}
    ]
    ids = sorted(set(instance_ids))
    if ids:
        queries.append({"Filters": [{"Name": "instance-id", "Values": ids}]})
    for query in queries:
        for page in ec2.get_paginator("describe_instances").paginate(**query):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    if instance["State"]["Name"] in LIVE_STATES:
                        found[instance["InstanceId"]] = instance
    return list(found.values())


# ----------------------------------------------------------------------------- launch


@dataclass
class Preflight:
    """What the read-only checks resolved before anything is created."""

    ami: str
    root_device: str
    architecture: str
    zone: str
    subnet_id: str
    vpc_id: str
    ssh_cidr: str
    key_exists: bool


def preflight(
    ec2, ssm, opts: LaunchOptions, lookup_ip: Callable[[], str] = my_public_ip
) -> Preflight:
    """Read-only checks and lookups; raises UsageError (nothing created yet) on any problem."""
    existing = find_instances(ec2, opts.run)
    if existing:
        raise UsageError(
            f"run {opts.run} already has {len(existing)} instances in {opts.region}: pick "
            f"another --run, or `fab terminate --run {opts.run}` first"
        )
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [opts.group_name]}]
    )["SecurityGroups"]
    if groups:
        raise UsageError(
            f"security group {opts.group_name} already exists ({groups[0]['GroupId']}): "
            f"`fab terminate --run {opts.run} --region {opts.region}` first"
        )

    types = sorted({opts.server_type, opts.worker_type})
    try:
        described = ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "InvalidInstanceType":
            raise UsageError(f"unknown instance type in {opts.region}: {explain(e)}") from None
        raise
    archs = {
        t["InstanceType"]: set(t["ProcessorInfo"]["SupportedArchitectures"]) for t in described
    }
    common = archs[opts.server_type] & archs[opts.worker_type]
    if not common:
        raise UsageError(
            f"{opts.server_type} and {opts.worker_type} share no CPU architecture; one AMI "
            "must boot both"
        )
    architecture = "x86_64" if "x86_64" in common else sorted(common)[0]

    ami = opts.ami
    if not ami:
        parameter = opts.ami_parameter or default_ami_parameter(architecture)
        try:
            ami = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as e:
            raise UsageError(f"cannot resolve the AMI from SSM {parameter}: {explain(e)}") from None
    try:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
    except ClientError as e:
        raise UsageError(f"bad AMI {ami}: {explain(e)}") from None
    if not images:
        raise UsageError(f"bad AMI {ami}: not found in {opts.region}")
    image = images[0]
    if image.get("Architecture", architecture) not in common:
        raise UsageError(
            f"AMI {ami} is {image.get('Architecture')} but {opts.server_type} runs "
            f"{'/'.join(sorted(common))}"
        )
    root_device = image.get("RootDeviceName") or "/dev/sda1"

    offered: dict[str, set[str]] = {}
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": types}],
    )
    for page in pages:
        for offer in page["InstanceTypeOfferings"]:
            offered.setdefault(offer["Location"], set()).add(offer["InstanceType"])
    zones_with_both = {z for z, t in offered.items() if set(types) <= t}
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])[
        "Subnets"
    ]
    by_zone = {s["AvailabilityZone"]: s for s in subnets}
    if opts.zone:
        if opts.zone not in zones_with_both:
            raise UsageError(f"{' and '.join(types)} not offered in zone {opts.zone}")
        zone = opts.zone
    else:
        candidates = sorted(zones_with_both & by_zone.keys())
        if not candidates:
            raise UsageError(
                f"no zone of {opts.region} with a default subnet offers {' and '.join(types)}"
            )
        zone = candidates[0]
    if zone not in by_zone:
        raise UsageError(
            f"no default subnet in {zone}: create one (`aws ec2 create-default-subnet "
            f"--availability-zone {zone}`) or pick another --zone"
        )
    subnet = by_zone[zone]

    key_file = opts.effective_key_file
    try:
        ec2.describe_key_pairs(KeyNames=[opts.effective_key_name])
        key_exists = True
    except ClientError as e:
        if e.response["Error"]["Code"] != "InvalidKeyPair.NotFound":
            raise
        key_exists = False
    if key_exists and not key_file.exists():
        raise UsageError(
            f"key pair {opts.effective_key_name} exists in {opts.region} but its private key "
            f"{key_file} is missing: pass --key-file, or another --key-name"
        )
    if not key_exists and key_file.exists():
        raise UsageError(
            f"{key_file} exists but key pair {opts.effective_key_name} does not: move the "
            "file away or pass --key-name"
        )

    cidr = opts.ssh_cidr or ssh_cidr(lookup_ip())
    return Preflight(
        ami=ami,
        root_device=root_device,
        architecture=architecture,
        zone=zone,
        subnet_id=subnet["SubnetId"],
        vpc_id=subnet["VpcId"],
        ssh_cidr=cidr,
        key_exists=key_exists,
    )


def write_private_key(path: Path, material: str) -> None:
    """Save a private key readable by its owner only (0600), refusing to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(material if material.endswith("\n") else material + "\n")


def launch_cluster(
    session: boto3.Session,
    opts: LaunchOptions,
    *,
    scan: Scan = scan_host_keys,
    lookup_ip: Callable[[], str] = my_public_ip,
    log: Log = print,
    wait_timeout: float = 600.0,
    ssh_timeout: float = 600.0,
    poll: float = 5.0,
    ssh_port: int = 22,
) -> ClusterState:
    """Create the run's key pair, security group and K + S instances, all or nothing.

    Waits until every instance runs and answers SSH, records its host keys, then writes
    the state file and the hostfile. On any failure, Ctrl-C included, terminates what it
    created and raises LaunchError with one line saying what happened.
    """
    require_credentials(session)
    ec2 = session.client("ec2", region_name=opts.region)
    ssm = session.client("ssm", region_name=opts.region)
    try:
        pre = preflight(ec2, ssm, opts, lookup_ip)
    except LaunchError:
        raise
    except KeyboardInterrupt:
        raise LaunchError("interrupted (Ctrl-C) before anything was created", code=130) from None
    except (ClientError, BotoCoreError) as e:
        raise LaunchError(f"launch stopped before creating anything: {explain(e)}") from None

    state = ClusterState(
        run=opts.run,
        region=opts.region,
        zone=pre.zone,
        vpc_id=pre.vpc_id,
        subnet_id=pre.subnet_id,
        ami=pre.ami,
        market=opts.market,
        key_name=opts.effective_key_name,
        key_file=str(opts.effective_key_file),
        ssh_user=opts.ssh_user,
        ssh_port=ssh_port,
        hostfile=opts.hostfile,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    state_io.save(state, opts.state_dir)
    instance_ids: list[str] = []
    try:
        _create(ec2, opts, pre, state, instance_ids, scan, log, wait_timeout, ssh_timeout, poll)
    except BaseException as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        reason = explain(exc)
        log(f"launch failed ({reason}); cleaning up")
        try:
            report = terminate_run(
                session,
                opts.region,
                opts.run,
                instance_ids=instance_ids,
                log=lambda _: None,
                wait_timeout=wait_timeout,
                poll=poll,
                settle=poll,
            )
            state_io.remove(opts.state_dir, opts.run)
        except BaseException as cleanup:
            raise LaunchError(
                f"launch failed ({reason}) and so did the cleanup ({explain(cleanup)}): run "
                f"`fab terminate --run {opts.run} --region {opts.region}` now",
                code,
            ) from exc
        raise LaunchError(
            f"launch failed: {reason}; rolled back: {report.summary()}", code
        ) from exc
    return state


def _create(
    ec2,
    opts: LaunchOptions,
    pre: Preflight,
    state: ClusterState,
    instance_ids: list[str],
    scan: Scan,
    log: Log,
    wait_timeout: float,
    ssh_timeout: float,
    poll: float,
) -> None:
    if pre.key_exists:
        log(f"key pair {state.key_name}: using the existing one ({state.key_file})")
    else:
        created = ec2.create_key_pair(
            KeyName=state.key_name,
            KeyType="ed25519",
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": run_tags(opts.run)}],
        )
        # The file first: a rollback deletes the key file only if this run wrote it.
        write_private_key(Path(state.key_file), created["KeyMaterial"])
        state.key_created = True
        state_io.save(state, opts.state_dir)
        log(f"key pair {state.key_name}: created; private key {state.key_file} (mode 0600)")

    group_id = ec2.create_security_group(
        GroupName=opts.group_name,
        Description=f"byzshield run {opts.run}: members only, SSH from the launcher",
        VpcId=pre.vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": run_tags(opts.run)}],
    )["GroupId"]
    state.security_group_id = group_id
    state_io.save(state, opts.state_dir)
    ingress, egress = security_group_rules(group_id, pre.ssh_cidr)
    # A new group lets everything out: 0.0.0.0/0, and ::/0 too in a VPC with IPv6.
    # Revoke the rules it came with, whichever they are, before adding ours.
    (created,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    if created["IpPermissionsEgress"]:
        ec2.revoke_security_group_egress(
            GroupId=group_id, IpPermissions=created["IpPermissionsEgress"]
        )
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)
    ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=egress)
    log(f"security group {group_id}: all traffic between members, SSH only from {pre.ssh_cidr}")

    launched: list[list[dict]] = []
    requests = run_instances_requests(
        opts, ami=pre.ami, root_device=pre.root_device, subnet_id=pre.subnet_id, group_id=group_id
    )
    for _, kwargs in requests:
        response = ec2.run_instances(ClientToken=uuid.uuid4().hex, **kwargs)
        batch = sorted(response["Instances"], key=lambda i: i["AmiLaunchIndex"])
        instance_ids.extend(i["InstanceId"] for i in batch)
        launched.append(batch)
    ordered = [i for batch in launched for i in batch]  # server first, then workers
    assert len(ordered) == opts.num_nodes, (len(ordered), opts.num_nodes)
    log(f"instances: {len(ordered)} requested ({opts.market}) in {pre.zone}")
    for index, instance in enumerate(ordered):
        role = "server" if index < opts.servers else "worker"
        name = node_name(index, opts.servers)
        ec2.create_tags(
            Resources=[instance["InstanceId"]],
            Tags=[
                {"Key": "Name", "Value": f"{resource_name(opts.run)}-{name}"},
                {"Key": TAG_ROLE, "Value": role},
                {"Key": TAG_NODE, "Value": str(index)},
            ],
        )

    attempts = max(1, math.ceil(wait_timeout / max(poll, 0.01)))
    try:
        ec2.get_waiter("instance_running").wait(
            InstanceIds=instance_ids,
            WaiterConfig={"Delay": max(1, round(poll)), "MaxAttempts": attempts},
        )
    except WaiterError as e:
        raise LaunchError(not_running_reason(e.last_response, wait_timeout)) from None
    by_id = {i["InstanceId"]: i for i in find_instances(ec2, opts.run, instance_ids)}
    nodes = []
    for index, launched_instance in enumerate(ordered):
        instance = by_id.get(launched_instance["InstanceId"])
        if instance is None or not instance.get("PublicIpAddress"):
            raise LaunchError(f"instance {launched_instance['InstanceId']} has no public address")
        nodes.append(
            Node(
                name=node_name(index, opts.servers),
                role="server" if index < opts.servers else "worker",
                instance_id=instance["InstanceId"],
                instance_type=instance["InstanceType"],
                public_ip=instance["PublicIpAddress"],
                private_ip=instance["PrivateIpAddress"],
            )
        )
    state.nodes = nodes
    state_io.save(state, opts.state_dir)
    log(
        f"running: {', '.join(f'{n.name} {n.public_ip}' for n in nodes[:3])}"
        + (" ..." if len(nodes) > 3 else "")
    )

    wait_for_ssh(nodes, state.ssh_port, scan, ssh_timeout, poll)
    for node in nodes:
        try:
            output = ec2.get_console_output(InstanceId=node.instance_id).get("Output", "")
        except ClientError:
            output = ""
        try:
            node.host_key_source = check_against_console(node.host_keys, console_host_keys(output))
        except ValueError as e:
            raise LaunchError(
                f"{node.name} ({node.public_ip}): {e}; refusing to trust it"
            ) from None
    verified = sum(n.host_key_source == "console" for n in nodes)
    log(
        f"reachable over SSH; host keys recorded ({verified}/{len(nodes)} checked against the "
        "console output, the rest pinned at first contact)"
    )
    state.status = "ready"
    path = state_io.save(state, opts.state_dir)
    hostfile = state_io.write_hostfile(state, opts.hostfile)
    log(f"wrote {hostfile} and {path}")


def not_running_reason(last_response: dict | None, wait_timeout: float) -> str:
    """Why the instances did not all reach "running", from the waiter's last answer (EC2
    puts e.g. "Server.InsufficientInstanceCapacity" in a terminated instance's StateReason)."""
    for reservation in (last_response or {}).get("Reservations", []):
        for instance in reservation.get("Instances", []):
            state = instance.get("State", {}).get("Name", "?")
            if state != "running":
                reason = instance.get("StateReason", {}).get("Message", "")
                return f"instance {instance.get('InstanceId')} is {state}" + (
                    f" ({reason})" if reason else ""
                )
    return f"instances not running after {wait_timeout:.0f}s"


def wait_for_ssh(nodes: list[Node], port: int, scan: Scan, timeout: float, poll: float) -> None:
    """Poll every node's SSH port until it hands over its host keys, within ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    last: dict[str, str] = {}
    while pending:
        for node in list(pending):
            try:
                node.host_keys = scan(node.public_ip, port, min(10.0, max(1.0, timeout)))
                pending.remove(node)
            except Exception as e:  # noqa: BLE001 - not up yet; retried until the deadline
                last[node.name] = str(e)
        if not pending:
            return
        if time.monotonic() >= deadline:
            node = pending[0]
            raise LaunchError(
                f"{len(pending)} node(s) not reachable over SSH after {timeout:.0f}s, e.g. "
                f"{node.name} {node.public_ip}: {last.get(node.name, '')}"
            )
        time.sleep(poll)


# ----------------------------------------------------------------------------- terminate


@dataclass
class TerminateReport:
    instances: list[str] = field(default_factory=list)
    file_systems: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    key_pairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        for label, items in (
            ("instance", self.instances),
            ("EFS file system", self.file_systems),
            ("security group", self.security_groups),
            ("key pair", self.key_pairs),
        ):
            if items:
                plural = "s" if len(items) > 1 else ""
                parts.append(f"{len(items)} {label}{plural} ({', '.join(items)})")
        text = "deleted " + ", ".join(parts) if parts else "nothing left to delete"
        return text + "".join(f"; warning: {w}" for w in self.warnings)


def terminate_run(
    session: boto3.Session,
    region: str,
    run: str,
    *,
    instance_ids: Iterable[str] = (),
    log: Log = print,
    wait_timeout: float = 600.0,
    poll: float = 5.0,
    settle: float = 0.0,
) -> TerminateReport:
    """Delete everything tagged with ``run`` in ``region`` (plus ``instance_ids``).

    Order matters: instances (and spot requests) first, waiting until they are gone; then
    EFS mount targets and file systems; then the security group, which AWS refuses to
    delete while a network interface still uses it; then the key pair. Idempotent.
    """
    require_credentials(session)
    ec2 = session.client("ec2", region_name=region)
    report = TerminateReport()
    deadline = time.monotonic() + wait_timeout

    def sweep(extra_ids: Iterable[str]) -> None:
        ids = sorted(i["InstanceId"] for i in find_instances(ec2, run, extra_ids))
        if not ids:
            return
        log(f"terminating {len(ids)} instance(s): {', '.join(ids)}")
        ec2.terminate_instances(InstanceIds=ids)
        report.instances.extend(i for i in ids if i not in report.instances)
        _cancel_spot_requests(ec2, run)
        _wait_terminated(ec2, ids, deadline, poll)

    sweep(instance_ids)
    if settle > 0:
        # Instances from an interrupted RunInstances may show up in a search by tag a
        # moment late: look once more.
        time.sleep(settle)
        sweep(())

    _delete_file_systems(session, region, run, report, log, deadline, poll)

    groups = ec2.describe_security_groups(Filters=_run_filter(run))["SecurityGroups"]
    for group in groups:
        _delete_group(ec2, group["GroupId"], deadline, poll)
        report.security_groups.append(group["GroupId"])
        log(f"deleted security group {group['GroupId']}")
    for key in ec2.describe_key_pairs(Filters=_run_filter(run))["KeyPairs"]:
        ec2.delete_key_pair(KeyName=key["KeyName"])
        report.key_pairs.append(key["KeyName"])
        log(f"deleted key pair {key['KeyName']}")
    return report


def _cancel_spot_requests(ec2, run: str) -> None:
    requests = ec2.describe_spot_instance_requests(
        Filters=_run_filter(run) + [{"Name": "state", "Values": ["open", "active"]}]
    )["SpotInstanceRequests"]
    ids = [r["SpotInstanceRequestId"] for r in requests]
    if ids:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=ids)


def _wait_terminated(ec2, ids: list[str], deadline: float, poll: float) -> None:
    remaining = max(1.0, deadline - time.monotonic())
    delay = max(1, round(poll))
    try:
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=ids,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, math.ceil(remaining / delay))},
        )
    except WaiterError as e:
        raise LaunchError(
            f"instances still shutting down ({explain(e)}): run `fab terminate` again in a minute"
        ) from None


def _delete_group(ec2, group_id: str, deadline: float, poll: float) -> None:
    """Delete a group, retrying while AWS still reports it in use (network interfaces are
    released a little after their instance terminates)."""
    while True:
        try:
            ec2.delete_security_group(GroupId=group_id)
            return
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code == "InvalidGroup.NotFound":
                return
            if code != "DependencyViolation" or time.monotonic() >= deadline:
                raise
        time.sleep(poll)


def _delete_file_systems(session, region, run, report, log, deadline, poll) -> None:
    efs = session.client("efs", region_name=region)
    try:
        systems = [
            fs
            for page in efs.get_paginator("describe_file_systems").paginate()
            for fs in page["FileSystems"]
            if {"Key": TAG_RUN, "Value": run} in fs.get("Tags", [])
        ]
    except ClientError as e:
        report.warnings.append(f"could not list EFS file systems ({explain(e)})")
        return
    for fs in systems:
        fs_id = fs["FileSystemId"]
        for target in efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]:
            efs.delete_mount_target(MountTargetId=target["MountTargetId"])
        while efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"EFS {fs_id} mount targets still deleting: run `fab terminate` again"
                )
            time.sleep(poll)
        efs.delete_file_system(FileSystemId=fs_id)
        report.file_systems.append(fs_id)
        log(f"deleted EFS file system {fs_id}")


# ----------------------------------------------------------------------------- status, EFS


def describe_run(session: boto3.Session, region: str, run: str) -> dict:
    """What AWS currently holds for ``run``: instances (any state), groups, keys."""
    require_credentials(session)
    ec2 = session.client("ec2", region_name=region)
    instances = [
        i
        for page in ec2.get_paginator("describe_instances").paginate(Filters=_run_filter(run))
        for r in page["Reservations"]
        for i in r["Instances"]
    ]
    groups = ec2.describe_security_groups(Filters=_run_filter(run))["SecurityGroups"]
    keys = ec2.describe_key_pairs(Filters=_run_filter(run))["KeyPairs"]
    return {"instances": instances, "security_groups": groups, "key_pairs": keys}


def format_status(run: str, region: str, described: dict) -> str:
    """A table of the run's instances (server first) and the other resources it holds."""

    def tag(instance, key):
        return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), "")

    def order(instance):
        node = tag(instance, TAG_NODE)
        return (int(node) if node.isdigit() else 10**6, instance["InstanceId"])

    rows = [("node", "instance", "type", "market", "state", "public ip", "private ip")]
    servers = max(1, sum(tag(i, TAG_ROLE) == "server" for i in described["instances"]))
    for i in sorted(described["instances"], key=order):
        node = tag(i, TAG_NODE)
        rows.append(
            (
                node_name(int(node), servers) if node.isdigit() else "?",
                i["InstanceId"],
                i["InstanceType"],
                i.get("InstanceLifecycle", "on-demand"),
                i["State"]["Name"],
                i.get("PublicIpAddress", "-"),
                i.get("PrivateIpAddress", "-"),
            )
        )
    live = [i for i in described["instances"] if i["State"]["Name"] in LIVE_STATES]
    lines = [f"run {run} in {region}: {len(live)} live instance(s)"]
    if len(rows) > 1:
        widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
        lines += [
            "  " + "  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
    groups = ", ".join(g["GroupId"] for g in described["security_groups"]) or "none"
    keys = ", ".join(k["KeyName"] for k in described["key_pairs"]) or "none"
    lines.append(f"  security group: {groups}; key pair: {keys}")
    if live:
        lines.append(f"  still billing: `fab terminate --run {run}` when done")
    return "\n".join(lines)


def ensure_efs(
    session: boto3.Session,
    state: ClusterState,
    log: Log = print,
    timeout: float = 300.0,
    poll: float = 5.0,
) -> str:
    """The run's EFS file system (created, encrypted and tagged, if absent) with a mount
    target in the cluster's subnet and security group; returns its id."""
    efs = session.client("efs", region_name=state.region)
    deadline = time.monotonic() + timeout
    fs_id = state.efs_id
    if not fs_id:
        fs_id = efs.create_file_system(
            CreationToken=resource_name(state.run),
            Encrypted=True,
            Tags=run_tags(state.run),
        )["FileSystemId"]
        log(f"EFS {fs_id}: created")
    while (
        efs.describe_file_systems(FileSystemId=fs_id)["FileSystems"][0]["LifeCycleState"]
        != "available"
    ):
        if time.monotonic() >= deadline:
            raise LaunchError(f"EFS {fs_id} not available after {timeout:.0f}s")
        time.sleep(poll)
    targets = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
    if not any(t["SubnetId"] == state.subnet_id for t in targets):
        efs.create_mount_target(
            FileSystemId=fs_id, SubnetId=state.subnet_id, SecurityGroups=[state.security_group_id]
        )
    while True:
        targets = efs.describe_mount_targets(FileSystemId=fs_id)["MountTargets"]
        if any(
            t["SubnetId"] == state.subnet_id and t["LifeCycleState"] == "available" for t in targets
        ):
            break
        if time.monotonic() >= deadline:
            raise LaunchError(f"EFS {fs_id} mount target not available after {timeout:.0f}s")
        time.sleep(poll)
    return fs_id


def efs_dns_name(fs_id: str, region: str) -> str:
    return f"{fs_id}.efs.{region}.amazonaws.com"
