"""The cluster state file and the hostfile: what `fab launch` leaves for the other tasks.

``.byzshield/<run>/state.json`` holds the run, region, instance ids, public and private
addresses and the SSH host keys recorded at launch; ``hostfile`` holds one private IP
per line, the parameter server first (the original ByzShield format). Both are written
atomically so an interrupted launch never leaves half a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launch.errors import UsageError
from launch.plan import DEFAULT_HOSTFILE, DEFAULT_STATE_DIR, validate_run

STATE_VERSION = 1


@dataclass
class Node:
    """One host. ``host_keys`` are OpenSSH public key lines ("ssh-ed25519 AAAA...")."""

    name: str
    role: str
    instance_id: str
    instance_type: str
    public_ip: str
    private_ip: str
    host_keys: list[str] = field(default_factory=list)
    host_key_source: str = ""


@dataclass
class ClusterState:
    """A launched (or launching) cluster; ``nodes[0]`` is the parameter server."""

    run: str
    region: str
    status: str = "launching"
    zone: str = ""
    vpc_id: str = ""
    subnet_id: str = ""
    security_group_id: str = ""
    ami: str = ""
    market: str = ""
    key_name: str = ""
    key_file: str = ""
    key_created: bool = False
    ssh_user: str = "ubuntu"
    ssh_port: int = 22
    hostfile: str = DEFAULT_HOSTFILE
    efs_id: str = ""
    created_at: str = ""
    nodes: list[Node] = field(default_factory=list)
    version: int = STATE_VERSION

    @property
    def server(self) -> Node:
        assert self.nodes, "state has no nodes"
        return self.nodes[0]

    def node_by_private_ip(self, ip: str) -> Node | None:
        return next((n for n in self.nodes if n.private_ip == ip), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        nodes = [Node(**n) for n in data.pop("nodes", [])]
        return cls(**data, nodes=nodes)


def run_dir(state_dir: str | os.PathLike, run: str) -> Path:
    return Path(state_dir) / run


def state_path(state_dir: str | os.PathLike, run: str) -> Path:
    return run_dir(state_dir, run) / "state.json"


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(state: ClusterState, state_dir: str | os.PathLike) -> Path:
    path = state_path(state_dir, state.run)
    atomic_write(path, state.to_json(), mode=0o600)
    return path


def load(state_dir: str | os.PathLike, run: str) -> ClusterState:
    path = state_path(state_dir, run)
    try:
        return ClusterState.from_json(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"no cluster state for run {run!r} in {state_dir}/ ({path} missing)"
        ) from None
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{path} is not a byzshield state file ({e})") from None


def known_runs(state_dir: str | os.PathLike) -> list[str]:
    root = Path(state_dir)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/state.json"))


def resolve_run(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, run: str = "") -> str:
    """``run`` if given, else the only run recorded in ``state_dir``; UsageError otherwise."""
    if run:
        return validate_run(run)
    runs = known_runs(state_dir)
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise UsageError(
            f"no launched cluster in {state_dir}/: run `fab launch` first or pass --run"
        )
    raise UsageError(f"several runs in {state_dir}/ ({', '.join(runs)}): pass --run")


def remove(state_dir: str | os.PathLike, run: str) -> None:
    """Forget a terminated run: its state file, and its private key if we created it."""
    path = state_path(state_dir, run)
    if not path.exists():
        return
    try:
        state = load(state_dir, run)
    except UsageError:
        state = None
    if state and state.key_created and state.key_file:
        Path(state.key_file).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def hostfile_text(state: ClusterState) -> str:
    """One private IP per line, the parameter server first, then workers 1..K."""
    return "".join(f"{n.private_ip}\n" for n in state.nodes)


def write_hostfile(state: ClusterState, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write(path, hostfile_text(state))
    return path


def read_hostfile(path: str | os.PathLike) -> list[str]:
    """The private IPs in ``path``, in order (blank lines and # comments ignored)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(
            f"hostfile not found: {path} (run `fab launch` first, or pass --hostfile)"
        ) from None
    ips = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ips.append(str(ipaddress.ip_address(line)))
        except ValueError:
            raise UsageError(f"{path} line {number}: {line!r} is not an IP address") from None
    if not ips:
        raise UsageError(f"hostfile {path} lists no hosts")
    if len(set(ips)) != len(ips):
        raise UsageError(f"hostfile {path} lists a host twice")
    return ips


def nodes_from_hostfile(state: ClusterState, path: str | os.PathLike) -> list[Node]:
    """The nodes named by the hostfile, in its order (line 1 = node 0 = parameter server)."""
    nodes = []
    for ip in read_hostfile(path):
        node = state.node_by_private_ip(ip)
        if node is None:
            raise UsageError(f"hostfile {path}: {ip} is not a node of run {state.run}")
        nodes.append(node)
    return nodes
