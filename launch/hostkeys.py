"""SSH host keys: read them once at launch, pin them afterwards.

At launch every node's keys are read over a bare SSH handshake (no login) and, when
the instance's console output already shows cloud-init's key block, checked against
it: the console comes through the authenticated EC2 API, so a match rules out a
man-in-the-middle on the first contact. The keys go into the state file; every later
connection (`launch.remote`) accepts only them.
"""

from __future__ import annotations

import base64
import logging
import socket

import paramiko

# One handshake per algorithm, so the state holds every key type the host offers.
SCAN_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512")

# A refused key type is expected while scanning; keep paramiko from printing it.
_SCAN_LOG = "byzshield.launch.hostkeys.scan"
logging.getLogger(_SCAN_LOG).addHandler(logging.NullHandler())
logging.getLogger(_SCAN_LOG).propagate = False

_CONSOLE_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
_CONSOLE_END = "-----END SSH HOST KEY KEYS-----"


def scan_host_keys(host: str, port: int = 22, timeout: float = 5.0) -> list[str]:
    """The host's public keys as OpenSSH lines ("ssh-ed25519 AAAA..."), read without login.

    Raises OSError (unreachable) or paramiko.SSHException (no usable key) if none is read.
    """
    keys: list[str] = []
    last_error: Exception | None = None
    for key_type in SCAN_KEY_TYPES:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise OSError(f"{host}:{port} not reachable over SSH ({e})") from e
        transport = paramiko.Transport(sock)
        transport.set_log_channel(_SCAN_LOG)
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        try:
            transport.get_security_options().key_types = [key_type]
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
            line = f"{key.get_name()} {key.get_base64()}"
            if line not in keys:
                keys.append(line)
        except (paramiko.SSHException, EOFError, OSError, ValueError) as e:
            last_error = e  # the host has no key of this type; try the next
        finally:
            transport.close()
    if not keys:
        raise paramiko.SSHException(f"{host}:{port} offered no usable host key ({last_error})")
    return keys


def console_host_keys(console_output: str) -> list[str]:
    """The "type base64" lines cloud-init prints between its host-key markers, if any."""
    if _CONSOLE_BEGIN not in console_output:
        return []
    block = console_output.split(_CONSOLE_BEGIN, 1)[1].split(_CONSOLE_END, 1)[0]
    keys = []
    for line in block.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and (parts[0].startswith(("ssh-", "ecdsa-"))):
            keys.append(f"{parts[0]} {parts[1]}")
    return keys


def check_against_console(scanned: list[str], console: list[str]) -> str:
    """ "console" if every scanned key is in the console block, "first-contact" if there
    is no block yet; ValueError if a scanned key is absent from it (someone answered in
    the host's place)."""
    if not console:
        return "first-contact"
    foreign = [k for k in scanned if k not in console]
    if foreign:
        raise ValueError(f"host key {foreign[0][:40]}... is not in the instance's console output")
    return "console"


def pkey_from_line(line: str) -> paramiko.PKey:
    """A paramiko public key from an OpenSSH "type base64" line."""
    key_type, data = line.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(data))


def host_key_name(host: str, port: int) -> str:
    """The known_hosts name paramiko looks up: "host" on port 22, "[host]:port" otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_lines(host: str, port: int, keys: list[str]) -> str:
    return "".join(f"{host_key_name(host, port)} {k}\n" for k in keys)
