"""The checkout as a tarball for `fab setup`, and safe unpacking of what `fab fetch` brings.

The hosts get exactly the files of this working tree (git's tracked and untracked but
not ignored files when it is a git checkout), so no git credentials are needed on them
and uncommitted edits are included. Launcher state, private keys, outputs, caches and
virtualenvs never leave the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

# Top-level entries that stay local: launcher state and keys, outputs, environments, and
# the dataset download cache (conf/dataset/*: root "data"; each host fetches its own copy
# with dataset.download=true rather than this machine uploading it once per host).
LOCAL_ONLY_TOP = {
    "data",
    ".git",
    ".byzshield",
    "hostfile",
    "fetched",
    "runs",
    "outputs",
    "multirun",
    ".venv",
    "venv",
    "build",
    "dist",
}
# Names skipped at any depth.
LOCAL_ONLY_ANY = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache"}
LOCAL_ONLY_SUFFIXES = (".pyc", ".pem", ".egg-info")


def is_shipped(relative: str) -> bool:
    """Whether the checkout file at ``relative`` (a POSIX path) goes to the hosts."""
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] in LOCAL_ONLY_TOP:
        return False
    return not any(p in LOCAL_ONLY_ANY or p.endswith(LOCAL_ONLY_SUFFIXES) for p in parts)


def source_files(root: str | os.PathLike) -> list[str]:
    """The files of the checkout at ``root`` to ship, as sorted POSIX paths relative to it."""
    root = Path(root)
    candidates: list[str] | None = None
    if (root / ".git").exists() and shutil.which("git"):
        result = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            candidates = [p for p in result.stdout.decode().split("\0") if p]
    if candidates is None:
        candidates = [
            Path(dirpath, name).relative_to(root).as_posix()
            for dirpath, dirnames, filenames in os.walk(root)
            for name in filenames
        ]
    return sorted(
        {
            p
            for p in candidates
            if is_shipped(p) and (root / p).is_file() and not (root / p).is_symlink()
        }
    )


def write_tarball(root: str | os.PathLike, files: list[str], path: str | os.PathLike) -> int:
    """Pack ``files`` (relative to ``root``) into the gzip tarball ``path``; returns its size."""
    root = Path(root)

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name in files:
            tar.add(root / name, arcname=name, recursive=False, filter=anonymous)
    return Path(path).stat().st_size


def extract_tarball(path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Unpack a fetched tarball into ``dest``, refusing absolute paths, ``..`` and devices."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        for member in tar.getmembers():  # Python < 3.10.12 / 3.11.4: check by hand
            parts = PurePosixPath(member.name).parts
            if (
                member.name.startswith("/")
                or ".." in parts
                or not (member.isfile() or member.isdir())
            ):
                raise ValueError(f"refusing to unpack {member.name!r}")
        tar.extractall(dest)  # noqa: S202 - members checked above
