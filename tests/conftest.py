import os

import pytest
import torch

# Tests are CPU-only and must be repeatable; keep torch from fighting other processes for the 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("PRUNETUNE_TEST", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A real S3-compatible server on 127.0.0.1 for object-storage tests (tests/s3_server.py).
from s3_server import s3_server, s3_uri  # noqa: E402,F401
