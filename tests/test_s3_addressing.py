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
