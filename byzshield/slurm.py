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
The rendezvous address is node 0's (its ``NodeAddr`` in Slurm), the port
``--port`` (default: 20000 + job id % 20000). ``--gloo-socket-ifname IF`` sets
``GLOO_SOCKET_IFNAME`` on every node (the interface gloo binds).

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
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Plan", "main", "plan_ranks"]


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
    p.add_argument("--port", type=int, help="rendezvous port (default 20000 + job id % 20000)")
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
    for o in list(overrides):  # nodes=N, the spelling
        if o.startswith("nodes="):
            overrides.remove(o)
            args.nodes = int(o.split("=", 1)[1]) if o[6:].isdigit() else -1
    if args.node:
        return _node(args, overrides)
    return _submit(args, overrides)


def _submit(args, overrides: list[str]) -> int:
    from byzshield.launcher import check_train_dir
    from byzshield.overrides import UsageError, compose

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


def _first_node_address() -> str:
    """NodeAddr of the allocation's first node (what Slurm itself connects to)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
    ).stdout.split()
    first = hosts[0] if hosts else os.uname().nodename
    shown = subprocess.run(
        ["scontrol", "show", "node", "-o", first], capture_output=True, text=True
    ).stdout
    for field in shown.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return first


def _node(args, overrides: list[str]) -> int:
    """Inside the allocation: this task's torchrun, with its share of the ranks."""
    counts = [int(c) for c in (args.counts or "").split(",") if c]
    rank = int(os.environ.get("SLURM_PROCID", "-1"))
    if not counts or not 0 <= rank < len(counts):
        return _fail("--node runs inside the job's step (srun sets SLURM_PROCID)")
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    port = args.port or 20000 + job % 20000
    addr = _first_node_address()
    if args.gloo_socket_ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = args.gloo_socket_ifname
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    names = os.environ.get("BYZSHIELD_RANK_NODES")
    if names is None:  # every rank's node, for messages naming a failed rank
        nodelist = os.environ.get("SLURM_JOB_NODELIST", node)
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
        ).stdout.split() or [node]
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
