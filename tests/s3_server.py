"""A real S3-compatible server (moto's standalone server) on 127.0.0.1, for storage tests.

``s3_server`` (session) starts it on a free loopback port, creates a bucket, points the
AWS variables of this process at it (fake keys, a region, ``AWS_ENDPOINT_URL``) and stops
it at the end. ``S3Server.env`` holds the same variables for a subprocess (a driver that
a test SIGKILLs and resumes; give it ``PRUNETUNE_CACHE_DIR`` too, so the journal cache is
not ``~/.cache``). ``s3_uri`` (function) is a fresh ``s3://`` prefix per test. The variables
stay set in this process from the first test that uses the server to the end of the session.
Tests using them are skipped with the reason when moto is not installed
(``pip install -e '.[test]'`` brings ``moto[server]``).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import uuid
from collections.abc import Iterator

import pytest


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str]  # the variables a process needs to reach the server

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    import pyarrow.fs as pafs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
    }
    bucket = "prunetune-test"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("PRUNETUNE_S3_ENDPOINT", raising=False)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                               allow_bucket_creation=True)
        fs.create_dir(bucket)
        try:
            yield S3Server(endpoint=endpoint, bucket=bucket, env=env)
        finally:
            server.stop()


@pytest.fixture
def s3_uri(s3_server: S3Server) -> str:
    """A prefix no other test uses, in the test bucket."""
    return s3_server.uri(f"t-{uuid.uuid4().hex[:10]}")
