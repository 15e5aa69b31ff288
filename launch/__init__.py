"""Run byzshield on EC2: boto3 provisions, Fabric drives the hosts (see docs/aws.md).

    fab launch --workers 15 --dry-run     # the plan; nothing is called
    fab launch --workers 15               # K+1 instances, hostfile, .byzshield/<run>/state.json
    fab setup                             # this checkout, installed on every host
    fab train -- approach=mols            # torchrun everywhere; node 0 = the parameter server
    fab fetch && fab terminate

Modules: ``plan`` (options, EC2 requests, firewall rules: pure), ``state`` (state file,
hostfile), ``aws`` (boto3: launch all or nothing, terminate by tag), ``hostkeys``
(record and pin SSH host keys), ``commands`` (what runs on a host: pure), ``bundle``
(the checkout as a tarball), ``remote`` (Fabric, in parallel), ``cli`` (the tasks).
This package never imports torch or byzshield.
"""

from launch.errors import LaunchError, UsageError

__all__ = ["LaunchError", "UsageError"]
