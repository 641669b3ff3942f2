"""An S3 outage in the middle of the work (issue 12, defect 6): one line naming the endpoint
and what to do, status 2, and the data already written intact."""

import pytest

from flows.cli import main
from tasks import store


@pytest.fixture
def doomed_s3(monkeypatch):
    """A moto S3 server of this test's own, which the test stops."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "TAILFORGE_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="outage")
    yield endpoint, server
    server.stop()


def test_an_s3_outage_is_one_line_with_status_2(doomed_s3, capsys):
    endpoint, server = doomed_s3
    uri = "s3://outage/datasets/ph"
    assert main(["phantom", "--n", "20", "--size", "32", "--out", uri, "--json"]) == 0
    shards = store.list_shards(store.join(uri, "samples"))
    capsys.readouterr()
    server.stop()
    assert main(["phantom", "--n", "40", "--size", "32", "--out", uri]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert endpoint in err and "run the same command again" in err and "Traceback" not in err
    assert shards  # written before the outage


def test_missing_s3_credentials_are_one_line_with_status_2_in_every_command(doomed_s3, monkeypatch, tmp_path, capsys):
    """Issue 34: no credentials gave a 68-330-line botocore traceback and exit 1; `run` says so
    before any server or stage starts."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                       "AWS_EC2_METADATA_DISABLED": "true", "PREFECT_API_URL": "http://127.0.0.1:9/api"}.items():
        monkeypatch.setenv(key, value)
    settings = tmp_path / "s3.yaml"
    settings.write_text('dataset: {uri: "s3://outage/datasets/ph"}\n')
    for command in (["info", "s3://outage/datasets/ph"], ["query", "SELECT 1", "--root", "s3://outage/datasets"],
                    ["phantom", "--n", "4", "--size", "32", "--out", "s3://outage/datasets/ph"], ["run", str(settings)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no usable AWS credentials" in err, (command, err)


def test_a_write_to_an_endpoint_that_stops_answering_ends_within_its_bound(monkeypatch):
    """A server that takes the connection and never answers (a stalled network, a hung proxy):
    the PUT ends at its bound with StorageTimeout, which the CLI prints as one line."""
    import socket
    import threading
    import time

    from flows.cli_errors import storage_errors, storage_message

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "TAILFORGE_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store, "PUT_BOUND_S", 2.0)
    started = time.monotonic()
    with pytest.raises(store.StorageTimeout, match=r"writing s3://stalled/x.bin did not finish within 2 s") as caught:
        store.write_bytes_atomic("s3://stalled/x.bin", b"x" * 1000)
    assert time.monotonic() - started < 10  # (s3fs alone: its read timeout, retried, for minutes)
    assert isinstance(caught.value, storage_errors()) and endpoint in storage_message(caught.value)
    listener.close()
