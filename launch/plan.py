"""What `fab launch` will create, as data: validated options, EC2 requests, firewall rules.

Pure: no boto3 client, no network. ``launch.aws`` sends these requests; the tests read
them directly.

    >>> opts = LaunchOptions(workers=2, run="demo", region="us-east-1", ssh_from="203.0.113.7")
    >>> ingress, egress = security_group_rules("sg-1", opts.ssh_cidr)
    >>> ingress[1]["IpRanges"][0]["CidrIp"]
    '203.0.113.7/32'
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from launch.errors import UsageError

TAG_RUN = "byzshield:run"
TAG_ROLE = "byzshield:role"
TAG_NODE = "byzshield:node"

DEFAULT_SERVER_TYPE = "c5.2xlarge"
DEFAULT_WORKER_TYPE = "c5.xlarge"
DEFAULT_SSH_USER = "ubuntu"
DEFAULT_VOLUME_GIB = 30
DEFAULT_STATE_DIR = ".byzshield"
DEFAULT_HOSTFILE = "hostfile"
MARKETS = ("on-demand", "spot")
MAX_WORKERS = 256
MAX_SERVERS = 64

# Canonical publishes the current Ubuntu LTS image of every region under this public SSM
# name; {arch} is amd64 or arm64 (the instance type decides which).
UBUNTU_AMI_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)
UBUNTU_ARCH = {"x86_64": "amd64", "arm64": "arm64"}

# Outbound traffic the hosts need beyond their own group: apt mirrors (http) and
# PyPI / the PyTorch wheel index (https). DNS and NTP go to the VPC's link-local
# resolvers, which security groups do not filter.
EGRESS_TCP_PORTS = (80, 443)

_INSTANCE_TYPE = re.compile(r"^(?=[a-z0-9-]*\d)[a-z][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")
_RUN = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_workers(workers: object) -> None:
    """--workers (K) must be a whole number in 1..MAX_WORKERS."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise UsageError(f"--workers must be a whole number, got {workers!r}")
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")


def check_servers(servers: object) -> None:
    """--servers (S, the parameter server's instances: ps_shards) must be in 1..64."""
    if isinstance(servers, bool) or not isinstance(servers, int):
        raise UsageError(f"--servers must be a whole number, got {servers!r}")
    if not 1 <= servers <= MAX_SERVERS:
        raise UsageError(f"--servers must be between 1 and {MAX_SERVERS}, got {servers}")


@dataclass(frozen=True)
class LaunchOptions:
    """Everything `fab launch` needs; checked on construction (UsageError: one line).

    ``workers`` is K and ``servers`` S (a parameter server sharded S ways, ``ps_shards``):
    the cluster has K + S instances, the parameter server's first.
    Empty strings mean "decide at launch": ``zone`` (first zone offering both types),
    ``ami`` (from ``ami_parameter``, default the Ubuntu LTS one), ``ssh_from`` (this
    machine's public address), ``key_name`` (``byzshield-<run>``).
    """

    workers: int
    run: str
    region: str
    zone: str = ""
    market: str = "on-demand"
    server_type: str = DEFAULT_SERVER_TYPE
    worker_type: str = DEFAULT_WORKER_TYPE
    ami: str = ""
    ami_parameter: str = ""
    key_name: str = ""
    key_file: str = ""
    volume_size: int = DEFAULT_VOLUME_GIB
    ssh_from: str = ""
    ssh_user: str = DEFAULT_SSH_USER
    state_dir: str = DEFAULT_STATE_DIR
    hostfile: str = DEFAULT_HOSTFILE
    servers: int = 1

    def __post_init__(self) -> None:
        check_workers(self.workers)
        check_servers(self.servers)
        validate_run(self.run)
        validate_instance_type(self.server_type, "--server-type")
        validate_instance_type(self.worker_type, "--worker-type")
        if self.market not in MARKETS:
            raise UsageError(f"--market must be one of {', '.join(MARKETS)}, got {self.market!r}")
        if not _REGION.match(self.region):
            raise UsageError(f"--region {self.region!r} is not an AWS region (e.g. us-east-1)")
        if self.zone and not (self.zone.startswith(self.region) and self.zone != self.region):
            raise UsageError(
                f"--zone {self.zone!r} is not in region {self.region} (e.g. {self.region}a)"
            )
        if self.ami and not _AMI.match(self.ami):
            raise UsageError(f"--ami {self.ami!r} is not an AMI id (ami- and 8 or 17 hex digits)")
        if self.ami and self.ami_parameter:
            raise UsageError("give --ami or --ami-parameter, not both")
        if self.ami_parameter and not self.ami_parameter.startswith("/"):
            raise UsageError(f"--ami-parameter {self.ami_parameter!r} must start with /")
        if self.key_name and not _KEY_NAME.match(self.key_name):
            raise UsageError(f"--key-name {self.key_name!r}: use letters, digits, '.', '_', '-'")
        if isinstance(self.volume_size, bool) or not isinstance(self.volume_size, int):
            raise UsageError(
                f"--volume-size must be a whole number of GiB, got {self.volume_size!r}"
            )
        if not 8 <= self.volume_size <= 16384:
            raise UsageError(f"--volume-size must be 8..16384 GiB, got {self.volume_size}")
        if self.ssh_from:
            ssh_cidr(self.ssh_from)
        if not _USER.match(self.ssh_user):
            raise UsageError(f"--ssh-user {self.ssh_user!r} is not a user name")

    @property
    def num_nodes(self) -> int:
        return self.workers + self.servers

    @property
    def group_name(self) -> str:
        return resource_name(self.run)

    @property
    def effective_key_name(self) -> str:
        return self.key_name or resource_name(self.run)

    @property
    def effective_key_file(self) -> Path:
        if self.key_file:
            return Path(self.key_file).expanduser()
        return Path(self.state_dir) / self.run / f"{self.effective_key_name}.pem"

    @property
    def ssh_cidr(self) -> str:
        """The caller's address as a single-host CIDR ("" until looked up)."""
        return ssh_cidr(self.ssh_from) if self.ssh_from else ""

    @property
    def same_type(self) -> bool:
        return self.server_type == self.worker_type


def resource_name(run: str) -> str:
    """The name of the run's security group, key pair and instances."""
    return f"byzshield-{run}"


def validate_run(run: str) -> str:
    if not _RUN.match(run or ""):
        raise UsageError(
            f"--run {run!r}: use 1-30 lowercase letters, digits and '-', starting with a "
            "letter or digit"
        )
    return run


def validate_instance_type(value: str, flag: str) -> str:
    if not _INSTANCE_TYPE.match(value or ""):
        raise UsageError(
            f"{flag} {value!r} is not an EC2 instance type (expected family.size, e.g. c5.xlarge)"
        )
    return value


def ssh_cidr(address: str) -> str:
    """``address`` (an IP, or a /32 or /128 network) as the single-host CIDR to allow SSH from.

    Anything wider is refused: SSH is opened to the launching machine only.
    """
    try:
        network = ipaddress.ip_network(address.strip(), strict=True)
    except ValueError:
        raise UsageError(f"--ssh-from {address!r} is not an IP address") from None
    if network.num_addresses != 1:
        raise UsageError(
            f"--ssh-from {address!r} is a network of {network.num_addresses} addresses: "
            "SSH is only opened to one address (a /32 or /128)"
        )
    if network.network_address.is_unspecified:
        raise UsageError(f"--ssh-from {address!r} is not a host address")
    return network.with_prefixlen


def default_ami_parameter(architecture: str) -> str:
    """The public SSM parameter naming the current Ubuntu LTS AMI for ``architecture``."""
    if architecture not in UBUNTU_ARCH:
        raise UsageError(
            f"no default AMI for {architecture} instances: pass --ami or --ami-parameter"
        )
    return UBUNTU_AMI_PARAMETER.format(arch=UBUNTU_ARCH[architecture])


def security_group_rules(group_id: str, ssh_from_cidr: str) -> tuple[list[dict], list[dict]]:
    """(ingress, egress) IpPermissions for the run's security group.

    Ingress: every protocol and port from members of the group itself (gloo, the
    rendezvous store, NFS to EFS), and tcp/22 from ``ssh_from_cidr`` (one address).
    Egress: every protocol to the group, and tcp 80/443 to the internet for apt and pip.
    Nothing accepts connections from 0.0.0.0/0.
    """
    network = ipaddress.ip_network(ssh_from_cidr, strict=True)
    assert network.num_addresses == 1, ssh_from_cidr
    ranges_key, cidr_key = (
        ("IpRanges", "CidrIp") if network.version == 4 else ("Ipv6Ranges", "CidrIpv6")
    )
    own_group = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}
    ingress = [
        own_group,
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            ranges_key: [
                {cidr_key: network.with_prefixlen, "Description": "SSH from the launcher"}
            ],
        },
    ]
    egress = [own_group] + [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "apt and pip"}],
            "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": "apt and pip"}],
        }
        for port in EGRESS_TCP_PORTS
    ]
    return ingress, egress


def run_tags(run: str, **extra: str) -> list[dict]:
    tags = {TAG_RUN: run, "Name": resource_name(run), **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def node_name(index: int, servers: int = 1) -> str:
    """Node 0 is the parameter server, nodes 1..K the workers (the hostfile order); with
    S servers, nodes 0..S-1 are server-0.. server-(S-1), then worker-1.. worker-K."""
    if servers == 1:
        return "server" if index == 0 else f"worker-{index}"
    return f"server-{index}" if index < servers else f"worker-{index - servers + 1}"


def run_instances_requests(
    opts: LaunchOptions,
    *,
    ami: str,
    root_device: str,
    subnet_id: str,
    group_id: str,
) -> list[tuple[str, dict]]:
    """The RunInstances calls, as (role, kwargs) with MinCount == MaxCount (all-or-nothing).

    One call for all K + S nodes when server and workers share a type (EC2 then launches
    all or none), else one for the server and one for the workers. Every instance gets
    IMDSv2 only (no token, no metadata: blocks SSRF credential theft), a public address
    in the run's group, an encrypted root volume deleted with it, and the run's tags.
    """
    if opts.same_type:
        groups = [("cluster", opts.server_type, opts.num_nodes)]
    else:
        groups = [
            ("server", opts.server_type, opts.servers),
            ("workers", opts.worker_type, opts.workers),
        ]
    requests = []
    for role, instance_type, count in groups:
        tags = run_tags(opts.run, **{TAG_ROLE: role})
        spec = [{"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")]
        kwargs = {
            "ImageId": ami,
            "InstanceType": instance_type,
            "MinCount": count,
            "MaxCount": count,
            "KeyName": opts.effective_key_name,
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": subnet_id,
                    "Groups": [group_id],
                    "AssociatePublicIpAddress": True,
                    "DeleteOnTermination": True,
                }
            ],
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": opts.volume_size,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": spec,
        }
        if opts.market == "spot":
            kwargs["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
            spec.append({"ResourceType": "spot-instances-request", "Tags": tags})
        requests.append((role, kwargs))
    return requests


ON_DEMAND_USD_PER_HOUR = {
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "c5.2xlarge": 0.34,
    "c5.4xlarge": 0.68,
    "c5.9xlarge": 1.53,
    "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "m5.2xlarge": 0.384,
    "r5.xlarge": 0.252,
    "r3.xlarge": 0.333,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "g4dn.xlarge": 0.526,
    "g5.xlarge": 1.006,
    "p3.2xlarge": 3.06,
}
"""Linux on-demand list prices in us-east-1 (USD per hour, 2024): for the plan's estimate
only; other regions differ, spot is usually lower, and prices change."""


def estimate_cost(opts: LaunchOptions) -> str:
    """The plan's cost line: instances x list price per hour, or why there is none."""
    counts = {opts.server_type: opts.servers}
    counts[opts.worker_type] = counts.get(opts.worker_type, 0) + opts.workers
    unknown = [t for t in counts if t not in ON_DEMAND_USD_PER_HOUR]
    if unknown:
        return (
            f"no estimate for {', '.join(unknown)}: see https://aws.amazon.com/ec2/pricing/ "
            "(it bills until fab terminate)"
        )
    total = sum(n * ON_DEMAND_USD_PER_HOUR[t] for t, n in counts.items())
    parts = " + ".join(f"{n} x ${ON_DEMAND_USD_PER_HOUR[t]:.3g}" for t, n in counts.items())
    spot = "; spot is usually lower" if opts.market == "spot" else ""
    return (
        f"about ${total:.2f} per hour on demand ({parts}; us-east-1 list prices of 2024, "
        f"other regions differ{spot}), billed until fab terminate"
    )


def describe_plan(opts: LaunchOptions, *, region_note: str = "") -> str:
    """The plan `fab launch --dry-run` prints: what would be created, what it costs, and
    how to undo it. ``region_note`` replaces the region when none was set (a dry run
    needs none)."""
    servers = "1 server" if opts.servers == 1 else f"{opts.servers} servers (ps_shards)"
    if opts.same_type:
        instances = f"{opts.num_nodes} x {opts.server_type} ({servers} + {opts.workers} workers)"
    else:
        named = "server" if opts.servers == 1 else servers
        instances = (
            f"{opts.servers} x {opts.server_type} ({named}) + {opts.workers} x "
            f"{opts.worker_type} (workers)"
        )
    if opts.ami:
        ami = opts.ami
    else:
        parameter = opts.ami_parameter or UBUNTU_AMI_PARAMETER.format(arch="<arch>")
        ami = f"from SSM {parameter} (arch of {opts.server_type})"
    ssh_from = opts.ssh_cidr or "this machine's public address (looked up at launch)"
    zone = opts.zone or "first zone offering both instance types"
    rows = [
        ("run", opts.run),
        ("region / zone", f"{region_note or opts.region} / {zone}"),
        ("instances", f"{instances}, {opts.market}, all or nothing"),
        ("cost", estimate_cost(opts)),
        ("AMI", ami),
        ("storage", f"{opts.volume_size} GiB gp3 root volume each, encrypted, deleted with it"),
        (
            "key pair",
            f"{opts.effective_key_name} (created if absent; private key "
            f"{opts.effective_key_file}, mode 0600)",
        ),
        (
            "security group",
            f"{opts.group_name}: all traffic between its members; SSH only from {ssh_from}; "
            f"outbound tcp/{','.join(map(str, EGRESS_TCP_PORTS))} for apt and pip",
        ),
        ("metadata", "IMDSv2 required (session tokens, hop limit 1)"),
        ("tags", f"{TAG_RUN}={opts.run} on instances, volumes, group and key pair"),
        (
            "writes",
            f"{opts.hostfile} ({opts.num_nodes} private IPs, server first), "
            f"{Path(opts.state_dir) / opts.run / 'state.json'}",
        ),
        ("ssh", f"as {opts.ssh_user}; host keys recorded at launch and pinned"),
        ("undo", f"fab terminate --run {opts.run}"),
    ]
    width = max(len(key) for key, _ in rows)
    lines = ["byzshield launch plan (dry run: nothing was called or created)"]
    lines += [f"  {key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)
