"""Shared fixtures: isolated $TAILFORGE_HOME, the shared real data, a moto S3 server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIH1000 = SHARED_DATA / "nih1000"
NORMALS = SHARED_DATA / "normals"


@pytest.fixture(autouse=True)
def tailforge_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own state folder; nothing leaks into the checkout."""
    home = tmp_path / "tailforge-home"
    monkeypatch.setenv("TAILFORGE_HOME", str(home))
    return home


@pytest.fixture
def one_thread():
    """Keep a test's torch work on one core: the machine is shared (model tests use it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def nih1000() -> Path:
    if not (NIH1000 / "Data_Entry_2017_v2020.csv").exists():
        pytest.skip(f"real data absent: {NIH1000} (the shared data folder beside the checkout)")
    return NIH1000


@pytest.fixture(scope="session")
def normals() -> Path:
    if not (NORMALS / "normals.csv").exists():
        pytest.skip(f"real data absent: {NORMALS} (the shared data folder beside the checkout)")
    return NORMALS


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server) on 127.0.0.1, with the environment pointing at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "TAILFORGE_S3_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "TAILFORGE_S3_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh bucket per test; returns its s3:// URI."""
    import boto3

    name = "tf-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for the whole session (~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
