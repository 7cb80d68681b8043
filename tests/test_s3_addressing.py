"""Where a volume's S3 requests go: the plain GETs and PUTs (obstore) use the address
boto3 resolves for the other requests, on AWS (regional, virtual-hosted unless a dot in
the bucket name would break TLS) and on any other endpoint (path-style). Checked with
presigned URLs, which are made locally: no network, no AWS account."""

from __future__ import annotations

from datetime import timedelta

import obstore
import pytest

from fusedrive.store import open_store


@pytest.fixture
def aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def where_a_get_goes(store, key: str) -> str:
    return obstore.sign(store.objects, "GET", key, timedelta(minutes=1)).split("?")[0]


@pytest.mark.parametrize("url, expected", [
    ("s3://drive-bucket/home", "https://drive-bucket.s3.eu-west-1.amazonaws.com/home/volume"),
    ("s3://drive-bucket", "https://drive-bucket.s3.eu-west-1.amazonaws.com/volume"),
    ("s3://my.drive.bucket/home", "https://s3.eu-west-1.amazonaws.com/my.drive.bucket/home/volume"),
])
def test_a_volume_on_aws_is_reached_at_its_regional_address(aws_credentials, url, expected):
    assert where_a_get_goes(open_store(url), "volume") == expected


def test_a_volume_on_another_endpoint_is_reached_path_style(aws_credentials):
    store = open_store("s3://drive-bucket/home", "http://127.0.0.1:9000")
    assert where_a_get_goes(store, "volume") == "http://127.0.0.1:9000/drive-bucket/home/volume"


def test_an_explicit_endpoint_wins_over_the_environments_s3_endpoint_for_every_client(aws_credentials, monkeypatch):
    """MinIO and R2 guides set AWS_ENDPOINT_URL_S3; a device given --endpoint-url lists,
    reads, writes and commits there all the same (obstore puts that variable before an
    endpoint it is given)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    store = open_store("s3://drive-bucket/home", "http://127.0.0.1:9000")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9000"
    for client in (store.objects, store.commit_points):
        url = obstore.sign(client, "GET", "volume", timedelta(minutes=1)).split("?")[0]
        assert url == "http://127.0.0.1:9000/drive-bucket/home/volume"


def test_without_an_explicit_endpoint_both_clients_take_the_environments_s3_endpoint(aws_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9100")
    store = open_store("s3://drive-bucket/home")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:9100"
    assert where_a_get_goes(store, "volume") == "http://127.0.0.1:9100/drive-bucket/home/volume"


def test_a_device_with_endpoint_url_uses_it_whatever_the_environment_says(s3_volume, tmp_path):
    """Through a real mount and the volume commands, with AWS_ENDPOINT_URL_S3 at a dead
    port (as a MinIO guide leaves it): --endpoint-url at the live store works; at a dead
    one, the failure names that endpoint in one sentence."""
    live, dead = s3_volume.cli.env["AWS_ENDPOINT_URL"], "http://127.0.0.1:1"
    environment = {"AWS_ENDPOINT_URL_S3": dead}
    drive = s3_volume.mount("laptop", args=("--endpoint-url", live), env=environment)
    with open(drive.p("notes.txt"), "wb") as f:
        f.write(b"on the live store")
    drive.sync()
    shown = s3_volume.cli.run("status", str(drive.path))
    assert f"at {live}" in shown.stdout, "status names the endpoint in use"
    assert f"at {live}" in (drive.cache_dir / "mount.log").read_text()
    s3_volume.cli.run("du", s3_volume.url, "--endpoint-url", live, env=environment)  # a volume command: exit 0
    (tmp_path / "m2").mkdir()
    failed = s3_volume.cli.run("mount", s3_volume.url, str(tmp_path / "m2"), "--cache-dir", str(tmp_path / "c2"),
                               "--endpoint-url", dead, env={"AWS_ENDPOINT_URL_S3": live}, check=False)
    assert failed.returncode == 6 and dead in failed.stderr, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr and "max_retries" not in failed.stderr
