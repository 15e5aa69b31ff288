"""The shell commands `fab setup`, `fab train`, `fab stop` and `fab fetch` run on a host.

Pure string builders (every value quoted with shlex), so the exact command a host
receives is unit-tested without SSH. On every host the project lives in
``$HOME/byzshield`` and its virtualenv in ``$HOME/byzshield-venv``.

    >>> torchrun_args(node_rank=2, num_nodes=16, master_addr="10.0.0.4", run="demo")[:6]
    ['--nnodes', '16', '--nproc-per-node', '1', '--node-rank', '2']
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath

REMOTE_DIR = '"$HOME/byzshield"'
VENV_PYTHON = '"$HOME/byzshield-venv/bin/python"'
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_MASTER_PORT = 29500
DEFAULT_MODULE = "byzshield.train"
DEFAULT_TRAIN_DIR = "runs"
EFS_MOUNT_POINT = "/mnt/byzshield"

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_APT = "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq"

_HAS_PIP_AND_SETUPTOOLS = (
    "import importlib.util as u, sys; "
    "sys.exit(not (u.find_spec('pip') and u.find_spec('setuptools')))"
)

# A virtualenv interpreter's own site-packages, one a line (nothing for a base interpreter).
_VENV_SITE_DIRS = (
    "import site, sys; "
    "print(*site.getsitepackages() if sys.prefix != sys.base_prefix else [], sep='\\n')"
)
_PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"

q = shlex.quote


def valid_module(module: str) -> bool:
    return bool(_MODULE.match(module))


def pidfile(run: str) -> str:
    return f'"$HOME/.byzshield-train-{run}.pid"'


def torch_pins(requirements_text: str) -> list[str]:
    """The torch and torchvision lines of requirements.txt (installed from the CPU index)."""
    pins = []
    for line in requirements_text.splitlines():
        line = line.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower()
        if name in ("torch", "torchvision"):
            pins.append(line)
    return pins


def unpack_command(archive: str) -> str:
    """Unpack the uploaded checkout over ``$HOME/byzshield`` (outputs there are kept)."""
    return f"mkdir -p {REMOTE_DIR} && tar -xzf {q(archive)} -C {REMOTE_DIR} && rm -f {q(archive)}"


def venv_script(*, python: str = "python3", system_site_packages: bool = False) -> list[str]:
    """Create ``$HOME/byzshield-venv`` with ``python`` unless it exists (installing
    python3-venv if the OS lacks it). With ``system_site_packages`` it sees ``python``'s
    packages, also when ``python`` is itself a virtualenv's interpreter: venv's own flag
    would only expose that virtualenv's base interpreter, so its site-packages are added
    with a .pth file."""
    venv_flags = " --system-site-packages" if system_site_packages else ""
    make_venv = f'{q(python)} -m venv{venv_flags} "$HOME/byzshield-venv"'
    lines = ['if [ ! -x "$HOME/byzshield-venv/bin/python" ]; then']
    if system_site_packages:
        # Reuse the system's pip and setuptools when it has them: ensurepip's bundled
        # setuptools can be older and would shadow them inside the virtualenv.
        lines += [
            f"  if {q(python)} -c {q(_HAS_PIP_AND_SETUPTOOLS)} >/dev/null 2>&1; then",
            f"    {make_venv} --without-pip",
            f"  elif ! {make_venv} >/dev/null 2>&1; then",
        ]
    else:
        lines.append(f"  if ! {make_venv} >/dev/null 2>&1; then")
    lines += [
        f'    rm -rf "$HOME/byzshield-venv"; {_APT} update && {_APT} install -y python3-venv',
        f"    {make_venv}",
        "  fi",
    ]
    if system_site_packages:
        lines += [
            f"  parent_site=$({q(python)} -c {q(_VENV_SITE_DIRS)})",
            '  if [ -n "$parent_site" ]; then',
            f"    venv_site=$({VENV_PYTHON} -c {q(_PURELIB)})",
            '    printf \'%s\\n\' "$parent_site" > "$venv_site/_byzshield_parent_site.pth"',
            "  fi",
        ]
    lines.append("fi")
    return lines


def setup_script(
    *,
    python: str = "python3",
    system_site_packages: bool = False,
    pip_args: str = "",
    torch_pins: Sequence[str] = (),
    torch_index: str = DEFAULT_TORCH_INDEX,
    efs_dns: str = "",
) -> str:
    """Create the virtualenv (installing python3-venv if the OS lacks it), install torch
    from ``torch_index`` (the CPU wheels: no CUDA download), then the requirements and
    the project in editable mode; optionally mount the run's EFS at /mnt/byzshield."""
    pip = f"{VENV_PYTHON} -m pip install -q --disable-pip-version-check"
    extra = " ".join(q(a) for a in shlex.split(pip_args))
    extra = f" {extra}" if extra else ""
    lines = [
        "set -eu",
        "if command -v cloud-init >/dev/null 2>&1; then",
        "  cloud-init status --wait >/dev/null 2>&1 || true  # first boot: apt is busy until done",
        "fi",
        f"cd {REMOTE_DIR}",
        *venv_script(python=python, system_site_packages=system_site_packages),
    ]
    if torch_pins and torch_index:
        pins = " ".join(q(p) for p in torch_pins)
        # torch X.Y.Z+cpu from this index, anything else it needs from PyPI.
        index = f"--index-url {q(torch_index)} --extra-index-url https://pypi.org/simple"
        lines.append(f"{pip}{extra} {index} {pins}")
    lines.append(f"{pip}{extra} -r requirements.txt -e .")
    if efs_dns:
        options = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
        lines += [
            f"if ! mountpoint -q {EFS_MOUNT_POINT}; then",
            "  if ! command -v mount.nfs4 >/dev/null 2>&1; then",
            f"    {_APT} update && {_APT} install -y nfs-common",
            "  fi",
            f"  sudo -n mkdir -p {EFS_MOUNT_POINT}",
            f"  sudo -n mount -t nfs4 -o {options} {q(efs_dns + ':/')} {EFS_MOUNT_POINT}",
            f'  sudo -n chown "$(id -u):$(id -g)" {EFS_MOUNT_POINT}',
            "fi",
        ]
    lines.append(
        f"{VENV_PYTHON} -c 'import byzshield, torch; print(\"ready: torch\", torch.__version__)'"
    )
    return "\n".join(lines)


def interface_snippet(private_ip: str) -> str:
    """Export GLOO_SOCKET_IFNAME as the interface holding ``private_ip`` (e.g. ens5 on EC2),
    falling back to the one routing to it; gloo otherwise guesses from the hostname."""
    ip = q(private_ip)
    return "\n".join(
        [
            "iface=$(ip -o -4 addr show 2>/dev/null | awk -v ip="
            + ip
            + " '{split($4, a, \"/\"); if (a[1] == ip) {print $2; exit}}')",
            f'[ -n "$iface" ] || iface=$(ip -o -4 route get {ip} 2>/dev/null'
            " | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')",
            'if [ -n "$iface" ]; then export GLOO_SOCKET_IFNAME="$iface"; fi',
        ]
    )


def torchrun_args(
    *,
    node_rank: int,
    num_nodes: int,
    master_addr: str,
    run: str,
    nproc_per_node: int = 1,
    master_port: int = DEFAULT_MASTER_PORT,
    module: str = DEFAULT_MODULE,
    overrides: Sequence[str] = (),
) -> list[str]:
    """torchrun's arguments for one node: static rendezvous at the server, so node 0
    holds global rank 0, the parameter server."""
    assert 0 <= node_rank < num_nodes, (node_rank, num_nodes)
    return [
        "--nnodes", str(num_nodes),
        "--nproc-per-node", str(nproc_per_node),
        "--node-rank", str(node_rank),
        "--master-addr", master_addr,
        "--master-port", str(master_port),
        "--rdzv-id", run,
        "-m", module,
        *overrides,
    ]  # fmt: skip


def train_command(*, private_ip: str, run: str, **torchrun: object) -> str:
    """The script one node runs: choose gloo's interface, record the pid (for `fab stop`),
    then exec torchrun from the project directory, as ``python -m byzshield.comm``: the
    same torchrun, except that node 0's rendezvous store listens on ``master_addr`` only
    (torchrun's own listens on every interface)."""
    args = torchrun_args(run=run, **torchrun)  # type: ignore[arg-type]
    return "\n".join(
        [
            f"cd {REMOTE_DIR}",
            interface_snippet(private_ip),
            f"echo $$ > {pidfile(run)}",
            f"exec {VENV_PYTHON} -m byzshield.comm " + " ".join(q(a) for a in args),
        ]
    )


def stop_command(run: str, signal: str = "TERM") -> str:
    """Signal the node's torchrun for ``run`` (and its process group, so its workers too),
    if the recorded pid is still torchrun (pids are recycled)."""
    return "\n".join(
        [
            f"f={pidfile(run)}",
            'if [ -f "$f" ]; then pid=$(cat "$f")',
            "  cmdline=$(tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null || true)",
            '  if echo "$cmdline" | grep -Eq "torch.distributed.run|byzshield.comm"; then',
            f'    kill -{signal} -- -"$pid" 2>/dev/null || kill -{signal} "$pid"',
            f'    echo "sent SIG{signal} to torchrun $pid"',
            "  fi",
            "fi",
            "true",
        ]
    )


def check_train_dir(train_dir: str) -> PurePosixPath:
    path = PurePosixPath(train_dir)
    if not train_dir or ".." in path.parts or str(path) in ("/", "."):
        raise ValueError(f"--train-dir {train_dir!r} must name a folder (no '..')")
    return path


def pack_outputs_command(train_dir: str, archive: str) -> str:
    """Tar the host's ``train_dir`` (relative to the project, or absolute) into ``archive``."""
    path = check_train_dir(train_dir)
    parent = q(str(path.parent))
    base = parent if path.is_absolute() else f"{REMOTE_DIR}/{parent}"
    name = q(path.name)
    return (
        f'if [ ! -d {base}/{name} ]; then echo "no {path} on this host" >&2; exit 3; fi\n'
        f"tar -czf {q(archive)} -C {base} {name}"
    )
