"""moto as a real HTTP server on 127.0.0.1 for the launcher's boto3 tests.

boto3 reaches it through AWS_ENDPOINT_URL with fake credentials, in this process and
in `fab` subprocesses alike; nothing leaves the machine.
"""

from __future__ import annotations

import atexit
import logging
import os
import urllib.request

from moto.server import ThreadedMotoServer

REGION = "eu-west-1"


class MotoServer:
    """One ThreadedMotoServer on 127.0.0.1 (a free port), without moto's ~900 default
    AMIs (loading them costs seconds per reset; the tests register their own)."""

    _shared: MotoServer | None = None

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._saved_ami_setting: str | None = None
        self.url = ""

    @classmethod
    def shared(cls) -> MotoServer:
        """The server for this test process, started on first use, stopped at exit."""
        if cls._shared is None:
            cls._shared = cls().start()
            atexit.register(cls._shared.stop)
        return cls._shared

    def start(self) -> MotoServer:
        self._saved_ami_setting = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
        os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
        self._server.start()
        host, port = self._server.get_host_and_port()
        assert host.startswith("127."), host
        self.url = f"http://{host}:{port}"
        return self

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            response.read()

    def stop(self) -> None:
        self._server.stop()
        if self._saved_ami_setting is None:
            os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
        else:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = self._saved_ami_setting

    def register_ami(self, ec2) -> str:
        """A bootable-looking x86_64 AMI in moto (the launcher reads its root device)."""
        return ec2.register_image(
            Name="byzshield-test-ubuntu",
            Architecture="x86_64",
            RootDeviceName="/dev/sda1",
            VirtualizationType="hvm",
        )["ImageId"]

    def env(self, region: str = REGION) -> dict[str, str]:
        """Environment for boto3 to use this server, and nothing from the real ~/.aws."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": "/nonexistent/byzshield-test-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/byzshield-test-aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


NO_AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
