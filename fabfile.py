"""Run byzshield on EC2 with `fab` (see docs/aws.md); the work is done in launch/.

fab launch --workers 15 --dry-run        # print the plan; calls nothing
fab launch --workers 15 --market spot    # K+1 instances, hostfile, .byzshield/<run>/
fab launch --workers 15 --servers 4      # K+4: a parameter server sharded 4 ways
fab setup                                # ship this checkout, install it on every host
fab train -- approach=mols dataset=cifar10 network=resnet18
fab status
fab fetch                                # runs/ of the parameter server -> fetched/<run>/
fab terminate                            # everything tagged with the run; safe to re-run
"""

from pathlib import Path

from fabric import task

from launch import cli
from launch.commands import (
    DEFAULT_MASTER_PORT,
    DEFAULT_MODULE,
    DEFAULT_TORCH_INDEX,
    DEFAULT_TRAIN_DIR,
)
from launch.plan import (
    DEFAULT_HOSTFILE,
    DEFAULT_SERVER_TYPE,
    DEFAULT_SSH_USER,
    DEFAULT_STATE_DIR,
    DEFAULT_VOLUME_GIB,
    DEFAULT_WORKER_TYPE,
)

ROOT = Path(__file__).resolve().parent
# Numeric flags are declared as strings and converted by launch.cli, so `--workers x`
# gets one clear line instead of invoke's traceback.
RUN = "run name (default: the only run in .byzshield/)"
cli.install_remainder_executor()
cli.install_quiet_stdout()


@task(
    auto_shortflags=False,
    help={
        "workers": "K, the number of workers (the cluster has K+S instances)",
        "servers": "S parameter-server instances, a server sharded S ways (default 1; "
        "fab train then adds ps_shards=S)",
        "run": "run name, tags everything (default: bz-<utc time>)",
        "market": "on-demand (default) or spot",
        "server-type": f"parameter server instance type (default {DEFAULT_SERVER_TYPE})",
        "worker-type": f"worker instance type (default {DEFAULT_WORKER_TYPE})",
        "region": "AWS region (default: AWS_DEFAULT_REGION / ~/.aws/config)",
        "zone": "availability zone (default: first offering both types)",
        "ami": "AMI id (default: latest Ubuntu 24.04 LTS from a public SSM parameter)",
        "ami-parameter": "SSM parameter naming the AMI instead of the Ubuntu one",
        "key-name": "EC2 key pair (created if absent; default byzshield-<run>)",
        "key-file": "its private key (default .byzshield/<run>/<key-name>.pem, mode 0600)",
        "volume-size": f"root volume GiB per instance (default {DEFAULT_VOLUME_GIB})",
        "ssh-from": "the one address allowed to SSH in (default: this machine's public IP)",
        "ssh-user": f"login user of the AMI (default {DEFAULT_SSH_USER})",
        "hostfile": f"where to write the hostfile (default {DEFAULT_HOSTFILE})",
        "dry-run": "print the plan and stop; nothing is called or created",
        "wait-timeout": "seconds to wait for the instances to run",
        "ssh-timeout": "seconds to wait for SSH on every instance",
    },
)
def launch(
    c,
    workers="15",
    servers="1",
    run="",
    market="on-demand",
    server_type=DEFAULT_SERVER_TYPE,
    worker_type=DEFAULT_WORKER_TYPE,
    region="",
    zone="",
    ami="",
    ami_parameter="",
    key_name="",
    key_file="",
    volume_size=str(DEFAULT_VOLUME_GIB),
    ssh_from="",
    ssh_user=DEFAULT_SSH_USER,
    hostfile=DEFAULT_HOSTFILE,
    dry_run=False,
    wait_timeout="600",
    ssh_timeout="600",
):
    """Launch the parameter server and K workers on EC2, all or nothing."""
    with cli.one_line_errors("launch"):
        cli.do_launch(
            workers=workers,
            servers=servers,
            run=run,
            market=market,
            server_type=server_type,
            worker_type=worker_type,
            region=region,
            zone=zone,
            ami=ami,
            ami_parameter=ami_parameter,
            key_name=key_name,
            key_file=key_file,
            volume_size=volume_size,
            ssh_from=ssh_from,
            ssh_user=ssh_user,
            hostfile=hostfile,
            state_dir=DEFAULT_STATE_DIR,
            dry_run=dry_run,
            wait_timeout=wait_timeout,
            ssh_timeout=ssh_timeout,
        )


@task(
    auto_shortflags=False,
    help={
        "run": RUN,
        "python": "interpreter that creates the virtualenv on the hosts (default python3)",
        "system-site-packages": "let the virtualenv see --python's packages (a DL AMI's torch)",
        "pip-args": "extra pip arguments, e.g. '--no-index'",
        "torch-index": f"index for torch/torchvision (default {DEFAULT_TORCH_INDEX}; '' for PyPI)",
        "efs": "create an EFS file system for the run and mount it at /mnt/byzshield",
        "timeout": "seconds allowed for the install on each host",
    },
)
def setup(
    c,
    run="",
    python="python3",
    system_site_packages=False,
    pip_args="",
    torch_index=DEFAULT_TORCH_INDEX,
    efs=False,
    timeout="3600",
):
    """Ship this checkout to every host and install it there, in parallel."""
    with cli.one_line_errors("setup"):
        cli.do_setup(
            run=run,
            state_dir=DEFAULT_STATE_DIR,
            source_root=ROOT,
            python=python,
            system_site_packages=system_site_packages,
            pip_args=pip_args,
            torch_index=torch_index,
            efs=efs,
            timeout=timeout,
        )


@task(
    auto_shortflags=False,
    help={
        "run": RUN,
        "hostfile": f"nodes in order, parameter server first (default {DEFAULT_HOSTFILE})",
        "overrides": "Hydra overrides (or put them after --)",
        "nproc-per-node": "processes per host (default 1: one rank per instance)",
        "master-port": f"rendezvous port on the parameter server (default {DEFAULT_MASTER_PORT})",
        "module": f"module torchrun runs (default {DEFAULT_MODULE})",
        "timeout": "stop every node after this many seconds (default 0: no limit)",
    },
)
def train(
    c,
    run="",
    hostfile=DEFAULT_HOSTFILE,
    overrides="",
    nproc_per_node="1",
    master_port=str(DEFAULT_MASTER_PORT),
    module=DEFAULT_MODULE,
    timeout="0",
):
    """torchrun on every host (node 0 = rank 0 = parameter server); streams rank 0."""
    with cli.one_line_errors("train"):
        cli.do_train(
            run=run,
            state_dir=DEFAULT_STATE_DIR,
            hostfile=hostfile,
            overrides=overrides,
            nproc_per_node=nproc_per_node,
            master_port=master_port,
            module=module,
            timeout=timeout,
        )


train.takes_remainder = True


@task(auto_shortflags=False, help={"run": RUN})
def stop(c, run=""):
    """Stop the run's torchrun on every host."""
    with cli.one_line_errors("stop"):
        cli.do_stop(run=run, state_dir=DEFAULT_STATE_DIR)


@task(
    auto_shortflags=False,
    help={
        "run": RUN,
        "train-dir": f"the run's output folder on the hosts (default {DEFAULT_TRAIN_DIR}/)",
        "dest": "local folder (default fetched/<run>/)",
        "all-nodes": "fetch from every host, not only the parameter server",
    },
)
def fetch(c, run="", train_dir=DEFAULT_TRAIN_DIR, dest="", all_nodes=False):
    """Copy the output folder (metrics, checkpoints) back from the hosts."""
    with cli.one_line_errors("fetch"):
        cli.do_fetch(
            run=run,
            state_dir=DEFAULT_STATE_DIR,
            train_dir=train_dir,
            dest=dest,
            all_nodes=all_nodes,
        )


@task(auto_shortflags=False, help={"run": RUN, "region": "region (default: the run's state file)"})
def status(c, run="", region=""):
    """The run's instances and resources as AWS sees them."""
    with cli.one_line_errors("status"):
        cli.do_status(run=run, region=region, state_dir=DEFAULT_STATE_DIR)


@task(auto_shortflags=False, help={"run": RUN, "region": "region (default: the run's state file)"})
def terminate(c, run="", region=""):
    """Delete everything tagged with the run (instances, group, key, EFS); idempotent."""
    with cli.one_line_errors("terminate"):
        cli.do_terminate(run=run, region=region, state_dir=DEFAULT_STATE_DIR)
