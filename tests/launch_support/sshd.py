"""Real OpenSSH servers on 127.0.0.x for the launcher tests, one per "host".

Each server has its own generated host key and its own HOME (sshd's SetEnv), so two
loopback addresses behave like two machines that happen to share a filesystem: the
launcher's ``$HOME/byzshield`` differs per host. Logins use one generated client key.

    with LoopbackSshd("127.0.0.2", port, workdir, client_key.pub) as host:
        host.home / "byzshield"
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_missing_reason() -> str:
    """Why the SSH tests cannot run here, or "" if they can."""
    if not os.path.exists(SSHD):
        return (
            f"{SSHD} not installed (apt-get install openssh-server; tests/run.sh does it as root)"
        )
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen not installed (Debian: apt-get install openssh-client)"
    return ""


def generate_key(path: Path, key_type: str = "ed25519") -> Path:
    """An unencrypted key pair at ``path`` and ``path.pub`` (OpenSSH format)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "byzshield-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    path.chmod(0o600)
    return path


def free_port(addresses: list[str], attempts: int = 50) -> int:
    """A TCP port free on every one of ``addresses`` (all must be local)."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        ok = True
        for address in addresses:
            with socket.socket() as s:
                try:
                    s.bind((address, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError(f"no common free port on {addresses}")


class LoopbackSshd:
    """``/usr/sbin/sshd -D`` on ``address:port`` with its own host key, config and HOME."""

    def __init__(self, address: str, port: int, workdir: Path, authorized_key: Path) -> None:
        self.address = address
        self.port = port
        self.workdir = Path(workdir)
        self.authorized_key = authorized_key
        self.home = self.workdir / "home"
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.log = self.workdir / "sshd.log"
        self.process: subprocess.Popen | None = None

    @property
    def host_key_line(self) -> str:
        """The host's public key as "type base64" (what the launcher records)."""
        key_type, data = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"{key_type} {data}"

    def start(self, timeout: float = 15.0) -> LoopbackSshd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        generate_key(self.host_key)
        authorized = self.workdir / "authorized_keys"
        shutil.copy(self.authorized_key, authorized)
        authorized.chmod(0o600)
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}:{self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "MaxStartups 100",
                    "MaxSessions 50",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv HOME={self.home}",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd on {self.address} exited: {self.log.read_text().strip()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not start within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> LoopbackSshd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
