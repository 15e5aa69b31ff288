"""One training run across the nodes of a Slurm allocation (the torchrun engine).

    python -m byzshield.slurm --nodes 4 --partition gpu --time 2:00:00 approach=mols
    python -m byzshield.slurm --nodes 2 --dry-run approach=mols     # the plan; submits nothing
    python -m byzshield.slurm nodes=4 approach=mols                 # nodes=N works too

Submits one batch job (``sbatch``) whose single step starts one task per node
(``srun --ntasks N``); each task runs ``python -m byzshield.slurm --node ...``, which
execs ``python -m byzshield.comm`` (torchrun with its stores bound to the address given)
with that node's share of the K + S ranks (S = ``ps_shards``, 1 by default): node 0 holds
rank 0, the parameter server, and the ranks are split as evenly as the count allows
(``--nproc-per-node`` per node).
The rendezvous address is node 0's (its ``NodeAddr`` in Slurm) as an IP address, so that
node 0's store listens on that address only (:func:`rendezvous_address`: a host name is
resolved; one that resolves to loopback on a multi-host allocation, as Debian's
``/etc/hosts`` maps a machine's own name to 127.0.1.1, is replaced by the address this
host reaches the other nodes from). The port is ``--port`` (1..65535; default: 20000 +
job id % 20000). ``--gloo-socket-ifname IF`` sets ``GLOO_SOCKET_IFNAME`` on every node
(the interface gloo binds).

The run's folder (``train_dir``, resolved once at submission) holds the job's output
(``slurm-<jobid>.out``) beside the usual run files; with ``--requeue`` Slurm may requeue
the job (preemption, a node failure) and it resumes from its newest checkpoint to the
same bits, as any rerun of the same command does. ``scancel <jobid>`` stops every rank:
Slurm signals each task, whose torchrun stops its ranks. A rank that dies stops the run
with a line naming its rank and node.

Sweeps go through Hydra's submitit launcher instead (one Slurm job per run, the
simulate engine inside): ``python -m byzshield.train -m hydra/launcher=submitit_slurm
hydra.launcher.partition=P ...`` (docs/slurm.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Plan", "main", "plan_ranks", "rendezvous_address"]

PORTS = range(1, 65536)
"""TCP ports ``--port`` may name."""


def plan_ranks(world_size: int, nodes: int) -> list[int]:
    """Ranks per node, rank 0 (the server) on node 0: as even as the count allows, the
    first nodes taking one more. Refuses more nodes than ranks."""
    if nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")
    if nodes > world_size:
        raise ValueError(
            f"--nodes {nodes} is more than the run's {world_size} ranks (K + S); use at most "
            f"{world_size}"
        )
    base, extra = divmod(world_size, nodes)
    return [base + (1 if n < extra else 0) for n in range(nodes)]


@dataclass
class Plan:
    """What one submission does: the ranks of each node and the commands."""

    overrides: list[str]
    counts: list[int]
    train_dir: Path
    placement: str
    port: int | None
    partition: str | None
    time: str | None
    job_name: str
    requeue: bool
    gloo_ifname: str | None
    extra: list[str]
    tasks_per_node: int = 1
    cpus_per_task: int | None = None
    servers: int = 1  # ranks 0..servers-1: the parameter server (ps_shards)

    def node_command(self) -> list[str]:
        """What each task of the step runs (inside the allocation)."""
        cmd = [sys.executable, "-m", "byzshield.slurm", "--node", "--counts"]
        cmd.append(",".join(map(str, self.counts)))
        cmd += ["--tasks-per-node", str(self.tasks_per_node)]
        if self.port is not None:
            cmd += ["--port", str(self.port)]
        if self.gloo_ifname:
            cmd += ["--gloo-socket-ifname", self.gloo_ifname]
        return [*cmd, "--", *self.overrides, f"train_dir={self.train_dir}"]

    def script(self) -> str:
        """The batch script (``sbatch`` reads it from stdin)."""
        nodes = len(self.counts)
        hosts = -(-nodes // self.tasks_per_node)
        lines = ["#!/bin/bash", f"#SBATCH --job-name={self.job_name}"]
        lines += [f"#SBATCH --nodes={hosts}", f"#SBATCH --ntasks={nodes}"]
        lines.append(f"#SBATCH --ntasks-per-node={self.tasks_per_node}")
        lines.append(f"#SBATCH --cpus-per-task={self.cpus_per_task or max(self.counts)}")
        lines.append(f"#SBATCH --output={self.train_dir}/slurm-%j.out")
        lines.append("#SBATCH --open-mode=append")
        if self.partition:
            lines.append(f"#SBATCH --partition={self.partition}")
        if self.time:
            lines.append(f"#SBATCH --time={self.time}")
        lines.append("#SBATCH --requeue" if self.requeue else "#SBATCH --no-requeue")
        lines += [f"#SBATCH {arg}" for arg in self.extra]
        lines += [
            "export OMP_NUM_THREADS=1",
            f"srun --kill-on-bad-exit=1 --ntasks={nodes} {shlex.join(self.node_command())}",
        ]
        return "\n".join(lines) + "\n"

    def _servers_in(self, lo: int, hi: int) -> str:
        """The parameter server's ranks among ranks lo..hi-1, for the plan's rows."""
        top = min(hi, self.servers)
        if self.servers == 1:
            return " (rank 0: the parameter server)" if lo == 0 else ""
        if lo >= top:
            return ""
        ranks = f"rank {lo}" if top - lo == 1 else f"ranks {lo}..{top - 1}"
        return f" ({ranks}: parameter servers, ps_shards={self.servers})"

    def describe(self) -> str:
        world = sum(self.counts)
        tasks = len(self.counts)
        hosts = -(-tasks // self.tasks_per_node)
        where = f"{tasks} task{'s' * (tasks > 1)} on {hosts} node{'s' * (hosts > 1)}"
        rows = [f"byzshield slurm plan: {self.placement}, {world} ranks in {where}"]
        start = 0
        for n, count in enumerate(self.counts):
            ranks = f"ranks {start}..{start + count - 1}" if count > 1 else f"rank {start}"
            role = self._servers_in(start, start + count)
            host = n // self.tasks_per_node
            rows.append(f"  task {n} (node {host}): {ranks}, --nproc-per-node {count}{role}")
            start += count
        rows.append(f"  run folder: {self.train_dir} (job output: slurm-<jobid>.out in it)")
        rows += ["", "batch script (sbatch):", self.script()]
        return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m byzshield.slurm",
        description="Submit one training run across the nodes of a Slurm allocation "
        "(torchrun engine: one task per node, the parameter server on the first).",
        epilog="Everything else is a training override (python -m byzshield.train --help).",
    )
    p.add_argument(
        "--nodes", type=int, help="torchrun agents (Slurm tasks) to spread the K + S ranks over"
    )
    p.add_argument(
        "--tasks-per-node",
        type=int,
        default=1,
        help="agents per machine (default 1: one per node; more to split a large node)",
    )
    p.add_argument(
        "--cpus-per-task", type=int, help="sbatch --cpus-per-task (default: the task's ranks)"
    )
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--time", help="sbatch --time (e.g. 2:00:00)")
    p.add_argument("--job-name", default="byzshield", help="sbatch --job-name")
    p.add_argument(
        "--port", type=int, help="rendezvous port, 1..65535 (default 20000 + job id %% 20000)"
    )
    p.add_argument("--gloo-socket-ifname", help="GLOO_SOCKET_IFNAME on every node")
    p.add_argument(
        "--requeue", action="store_true", help="let Slurm requeue the job (it then resumes)"
    )
    p.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more #SBATCH line, e.g. --sbatch-arg=--account=lab (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing")
    p.add_argument("--node", action="store_true", help=argparse.SUPPRESS)  # inside the job
    p.add_argument("--counts", help=argparse.SUPPRESS)
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
        args, unknown = _parser().parse_known_args(argv)
        overrides = [*unknown, *rest]
    else:
        args, overrides = _parser().parse_known_args(argv)
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        return _fail(f"unknown option {flags[0]}; see python -m byzshield.slurm --help")
    if args.port is not None and args.port not in PORTS:
        return _fail(f"--port must be a TCP port in 1..65535, got {args.port}")
    for o in list(overrides):  # nodes=N, the spelling
        if o.startswith("nodes="):
            overrides.remove(o)
            args.nodes = int(o.split("=", 1)[1]) if o[6:].isdigit() else -1
    if args.node:
        return _node(args, overrides)
    return _submit(args, overrides)


def _submit(args, overrides: list[str]) -> int:
    from byzshield.cli.launcher import check_train_dir
    from byzshield.config.overrides import UsageError, compose

    if args.nodes is None:
        return _fail("give --nodes N (the tasks the run's ranks are spread over)")
    if args.tasks_per_node < 1 or (args.cpus_per_task is not None and args.cpus_per_task < 1):
        return _fail("--tasks-per-node and --cpus-per-task must be >= 1")
    try:
        cfg = compose("config", overrides)
        from byzshield.config import load_config

        config = load_config(cfg)
        if config.engine not in ("auto", "torchrun"):
            raise ValueError(
                f"engine={config.engine} runs in one process: use "
                "python -m byzshield.train -m hydra/launcher=submitit_slurm"
            )
        if config.device != "cpu":
            raise ValueError(
                "the torchrun engine runs on CPUs; device=cuda needs the simulate engine"
            )
        p = config.approach.build()
        counts = plan_ranks(p.num_workers + config.ps_shards, args.nodes)
        train_dir = Path(str(cfg.train_dir)).expanduser().resolve()
    except (UsageError, ValueError) as exc:
        return _fail(str(exc))
    kept = [o for o in overrides if not o.startswith(("train_dir=", "engine="))]
    plan = Plan(
        kept + ["engine=torchrun"],
        counts,
        train_dir,
        p.describe(),
        args.port,
        args.partition,
        args.time,
        args.job_name,
        args.requeue,
        args.gloo_socket_ifname,
        list(args.sbatch_arg),
        args.tasks_per_node,
        args.cpus_per_task,
        config.ps_shards,
    )
    if args.dry_run:
        print(plan.describe().replace("byzshield slurm plan:", "byzshield slurm plan (dry run):"))
        return 0
    if shutil.which("sbatch") is None:
        return _fail("sbatch is not on PATH: run this on a Slurm login node (or --dry-run)")
    try:
        check_train_dir(str(train_dir))
    except ValueError as exc:
        return _fail(str(exc))
    proc = subprocess.run(
        ["sbatch", "--parsable"], input=plan.script(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["sbatch failed"])[-1]
        return _fail(f"sbatch refused the job: {reason}")
    job = proc.stdout.strip().split(";")[0]
    (train_dir / "slurm-job.sbatch").write_text(plan.script())
    print(
        f"submitted batch job {job}: {plan.placement}, {sum(counts)} ranks on {len(counts)} "
        f"nodes; run folder {train_dir}; follow it with tail -f {train_dir}/slurm-{job}.out; "
        f"stop it with scancel {job}"
    )
    return 0


def _hostnames() -> list[str]:
    """The allocation's host names, in Slurm's order (this host alone outside a job)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
    ).stdout.split()
    return hosts or [os.environ.get("SLURMD_NODENAME") or os.uname().nodename]


def _node_address(host: str) -> str:
    """NodeAddr of ``host`` (what Slurm itself connects to), else the name itself."""
    shown = subprocess.run(
        ["scontrol", "show", "node", "-o", host], capture_output=True, text=True
    ).stdout
    for field in shown.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return host


def rendezvous_address(node_addr: str, peers: list[str]) -> str:
    """The IP address node 0's rendezvous store listens on, and the other nodes connect
    to: ``node_addr`` (Slurm's NodeAddr of the first node) when it is an IP address,
    else the address it resolves to (IPv4 first). A store given a host name would
    listen on every interface (see :mod:`byzshield.engines.torchrun.comm`).

    A name that resolves to a loopback address (Debian's ``/etc/hosts`` maps a machine's
    own name to 127.0.1.1) is kept when the allocation has no other host (``peers``
    empty: nothing outside this host needs to reach the store); otherwise it is replaced
    by the address of the interface this host reaches ``peers[0]`` from, which the
    other nodes can reach. Raises ValueError (one line) for a name that does not resolve.
    """
    if _ip(node_addr) is not None:
        return node_addr
    address = _resolve(node_addr, "the first node's address")
    if _ip(address).is_loopback and peers:
        peer = _resolve(peers[0], "the allocation's second host")
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((peer, 9))  # UDP: picks the route, sends nothing
            except OSError as exc:
                raise ValueError(
                    f"the first node's address {node_addr!r} resolves to {address} "
                    f"(loopback) and there is no route to {peers[0]} ({peer}): "
                    f"{exc.strerror or exc}; set the node's NodeAddr to its IP address"
                ) from None
            address = probe.getsockname()[0]
    return address


def _ip(text: str):
    import ipaddress

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _resolve(host: str, what: str) -> str:
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"cannot resolve {what} {host!r}: {exc.strerror or exc}") from None
    addresses = [info[4][0] for info in found if _ip(str(info[4][0])) is not None]
    if not addresses:
        raise ValueError(f"cannot resolve {what} {host!r}: no IP address")
    return min(addresses, key=lambda a: (_ip(a).is_loopback, ":" in a))  # reachable, IPv4


def _node(args, overrides: list[str]) -> int:
    """Inside the allocation: this task's torchrun, with its share of the ranks."""
    counts = [int(c) for c in (args.counts or "").split(",") if c]
    rank = int(os.environ.get("SLURM_PROCID", "-1"))
    if not counts or not 0 <= rank < len(counts):
        return _fail("--node runs inside the job's step (srun sets SLURM_PROCID)")
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    port = args.port or 20000 + job % 20000
    hosts = _hostnames()
    try:
        addr = rendezvous_address(_node_address(hosts[0]), hosts[1:])
    except ValueError as exc:
        return _fail(str(exc))
    if args.gloo_socket_ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = args.gloo_socket_ifname
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    names = os.environ.get("BYZSHIELD_RANK_NODES")
    if names is None:  # every rank's node, for messages naming a failed rank
        per = max(1, args.tasks_per_node)
        per_task = [hosts[min(t // per, len(hosts) - 1)] for t in range(len(counts))]
        names = json.dumps(
            [f"task {t} on {h}" for t, h in enumerate(per_task) for _ in range(counts[t])]
        )
        os.environ["BYZSHIELD_RANK_NODES"] = names
    cmd = [
        sys.executable,
        "-m",
        "byzshield.comm",
        "--nnodes",
        str(len(counts)),
        "--node-rank",
        str(rank),
        "--nproc-per-node",
        str(counts[rank]),
        "--master-addr",
        addr,
        "--master-port",
        str(port),
        "-m",
        "byzshield.train",
        *overrides,
    ]
    print(
        f"slurm task {rank} on {node}: {counts[rank]} ranks, rendezvous {addr}:{port}",
        flush=True,
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
