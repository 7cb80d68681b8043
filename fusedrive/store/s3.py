"""A volume in an S3 bucket (`s3://bucket/prefix`), any service with conditional writes.

Endpoint, region and credentials come from wherever boto3 users already keep them
(env vars, ~/.aws, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3) plus an explicit `--endpoint-url`,
which wins over all of them; both clients use the one endpoint boto3 resolves. Transient
failures (5xx, throttling, dropped connections) are retried with exponential backoff;
what still fails becomes StoreUnreachable.

Two clients, one bucket: GETs and PUTs (blocks, journal entries: nearly every request)
go through obstore, a Rust S3 client that spends a fifth (small PUTs) to three quarters
(1 MiB GETs) of boto3's CPU per request and waits without the GIL
(scripts/store_costs.py); everything else (listings, deletes, presigned links, storage
classes) stays on boto3. Conditional creates (journal entries, the volume header: the
commit points) go through an obstore client that sends each body's SHA-256 as
`x-amz-checksum-sha256`, which the server checks (AWS, SeaweedFS, MinIO), refusing a
body cut or garbled on the way, as the Content-MD5 boto3 sent them with did: a commit
point taken from such a body would hold its seq forever. (SigV4's signed payload hash
would not do: SeaweedFS does not check it.) boto3's conditional PUT took twice
obstore's time, and every fsync waits on one.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from typing import Iterator

import boto3
import boto3.exceptions
import botocore.exceptions
import botocore.handlers
import obstore
import obstore.exceptions
import obstore.store
from botocore.config import Config
from obstore.auth.boto3 import Boto3CredentialProvider

from ..errors import StoreRefused, StoreUnreachable, UsageError
from . import Listed, NotFound

log = logging.getLogger(__name__)

_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
CONNECT_TIMEOUT_SECONDS = 5
STALL_TIMEOUT_SECONDS = 30  # no byte for this long: the connection is dead, try again
WHOLE_REQUEST_TIMEOUT_SECONDS = 300  # a 4 MiB block takes 34 s on a 1 Mbit/s uplink
RETRIES = 3  # after the first attempt, as botocore's max_attempts=4


def _in_words(exc: Exception, code: str) -> str:
    """Why an obstore request failed, without the client's retry counters and URLs."""
    text = str(exc).lower()
    if code:
        return f"it answered {code}"
    status = re.search(r"status(?: code)?:? (\d{3})", text)
    if status:
        return f"it answered HTTP {status.group(1)}"
    if "timed out" in text.replace("retry_timeout", ""):
        return "no answer in time"
    return "no answer (the connection failed)"


def _s3_code(exc: Exception) -> str:
    """The S3 error code of an obstore failure ("" if none): obstore keeps the response
    body in the error's text."""
    found = re.search(r"<Code>(\w+)</Code>", str(exc))
    return found.group(1) if found else ""


class S3Store:
    def __init__(self, url: str, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        config = Config(
            retries={"mode": "standard", "max_attempts": RETRIES + 1},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=STALL_TIMEOUT_SECONDS,
            max_pool_connections=32,
            signature_version="s3v4",
            # boto3 sends no bodies that matter (blocks and commit points go through obstore):
            # transport checksums and SHA-256 of each body (SigV4 payload signing, which
            # botocore does on any http:// endpoint) are spare CPU
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
        )
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint: str = self.client.meta.endpoint_url  # the one both clients use
        # botocore sends every PUT body with "Expect: 100-continue" and waits for the
        # server's go-ahead: a round trip per PUT that saves nothing for bodies of a few
        # MiB at most (2,000 4 KiB PUTs: 570 -> 640 per second, 9% less client CPU)
        self.client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self.objects = self._rust_client(session)
        self.commit_points = self._rust_client(session, checksum_algorithm="sha256")

    def _rust_client(self, session: boto3.session.Session, **checksums: str) -> obstore.store.S3Store:
        """An obstore client on the endpoint, region and credentials boto3 resolved.
        `checksum_algorithm="sha256"`: every body's checksum goes along for the server to
        check (blocks carry their own GCM tag and keyed hash: for them it is spare CPU)."""
        if session.get_credentials() is None:
            raise self._no_credentials()
        endpoint = self.client.meta.endpoint_url
        if endpoint.endswith(".amazonaws.com") and "AWS_ENDPOINT_URL_S3" not in os.environ:
            # obstore finds the regional endpoint itself: bucket.s3.region.amazonaws.com,
            # unless a dot in the name would break its TLS name
            where = {"virtual_hosted_style_request": "." not in self.bucket}
        else:
            # the one boto3 resolved (--endpoint-url first, then the environment): obstore
            # would put AWS_ENDPOINT_URL_S3 before an `endpoint` given to it, and a device
            # would list one store and write another
            where = {"endpoint": endpoint, "aws_endpoint_url_s3": endpoint}
        if self.prefix:
            where["prefix"] = self.prefix.rstrip("/")
        return obstore.store.S3Store(
            self.bucket, region=self.client.meta.region_name, **where,
            unsigned_payload=True,  # no SHA-256 in the signature: see payload_signing_enabled above
            **checksums,
            credential_provider=Boto3CredentialProvider(session),
            client_options={"allow_http": endpoint.startswith("http://"),
                            "connect_timeout": timedelta(seconds=CONNECT_TIMEOUT_SECONDS),
                            "read_timeout": timedelta(seconds=STALL_TIMEOUT_SECONDS),
                            "timeout": timedelta(seconds=WHOLE_REQUEST_TIMEOUT_SECONDS)},
            retry_config={"max_retries": RETRIES, "retry_timeout": timedelta(seconds=STALL_TIMEOUT_SECONDS)})

    # The messages both clients' failures end in:
    def _no_credentials(self) -> StoreRefused:
        return StoreRefused(
            f"No S3 credentials found for {self.url}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or configure ~/.aws.")

    def _no_bucket(self) -> StoreRefused:
        return StoreRefused(f"The bucket {self.bucket!r} does not exist.")

    def _refused(self, code: str) -> StoreRefused:
        return StoreRefused(f"The store refused our credentials for {self.url} ({code}).")

    def _unreachable(self, what: str, key: str, exc: Exception) -> StoreUnreachable:
        """An obstore failure in the words the boto3 calls use."""
        code = _s3_code(exc)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if isinstance(exc, (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError)):
            return self._refused(code or "denied")
        log.info("%s %s at %s failed: %s", what, key, self.endpoint, exc)  # the client's own words: for the log
        return StoreUnreachable(f"Cannot reach the store for {self.url} at {self.endpoint} while trying to {what} "
                                f"{key}: {_in_words(exc, code)}.")

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except botocore.exceptions.NoCredentialsError as exc:
            raise self._no_credentials() from exc
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise self._no_bucket() from exc
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise self._refused(code) from exc
            raise
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreUnreachable(f"Cannot reach the store for {self.url} while trying to {what}: {exc}") from exc

    def get(self, key: str) -> bytes:
        return self._read(key, lambda: obstore.get(self.objects, key).bytes())

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._read(key, lambda: obstore.get_range(self.objects, key, start=start, length=length))

    def _read(self, key: str, read) -> bytes:
        try:
            return read().to_bytes()
        except FileNotFoundError as exc:  # what obstore raises for a 404
            if _s3_code(exc) != "NoSuchBucket":
                raise NotFound(key) from exc
            raise self._unreachable("read", key, exc) from exc
        except (obstore.exceptions.BaseError, OSError) as exc:
            raise self._unreachable("read", key, exc) from exc

    def put(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self.objects, key, data)
        except (obstore.exceptions.BaseError, OSError) as exc:
            raise self._unreachable("write", key, exc) from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            obstore.put(self.commit_points, key, data, mode="create")  # If-None-Match: *
            return True
        except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            return False
        except (obstore.exceptions.BaseError, OSError) as exc:
            if _s3_code(exc) in _PRECONDITION_CODES or "409 Conflict" in str(exc):
                return False  # another writer's create was in flight (ConditionalRequestConflict)
            raise self._unreachable("write", key, exc) from exc

    def list(self, prefix: str, start_after: str = "") -> Iterator[Listed]:
        kwargs = {"Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        while True:
            try:
                page = self._call("list", self.client.list_objects_v2, **kwargs)
            except botocore.exceptions.ClientError as exc:
                raise StoreUnreachable(f"Listing {prefix} failed: {exc}") from exc
            for item in page.get("Contents", []):
                yield Listed(item["Key"][len(self.prefix):], item["Size"], item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        try:
            self._call("delete", self.client.delete_object, Key=self.prefix + key)
        except botocore.exceptions.ClientError as exc:
            raise StoreUnreachable(f"Deleting {key} failed: {exc}") from exc

    def put_file(self, key: str, path: str) -> None:
        try:
            self._call("write", lambda Bucket: self.client.upload_file(path, Bucket, self.prefix + key))
        except (botocore.exceptions.ClientError, boto3.exceptions.S3UploadFailedError) as exc:
            raise StoreUnreachable(f"Writing {key} failed: {exc}") from exc

    def share_url(self, key: str, expires_in: int) -> str:
        if expires_in > MAX_PRESIGN_SECONDS:
            raise UsageError("S3 share links can last at most 7 days (a limit of SigV4 presigned URLs); "
                             "choose a shorter --expires.")
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + key}, ExpiresIn=expires_in)

    def set_storage_class(self, key: str, storage_class: str) -> bool:
        full = self.prefix + key
        try:
            self._call("change the storage class of", self.client.copy_object, Key=full, StorageClass=storage_class,
                       CopySource={"Bucket": self.bucket, "Key": full}, MetadataDirective="REPLACE",
                       Metadata={})  # blocks carry no metadata; REPLACE is what makes a self-copy legal everywhere
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidObjectState":
                raise StoreUnreachable(f"Changing the storage class of {key} failed: {exc}") from exc
        # Archived on AWS: ask for a restore; the copy works once it is done (hours).
        try:
            self._call("restore", self.client.restore_object, Key=full, RestoreRequest={"Days": 7})
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise StoreUnreachable(f"Restoring {key} from the archive failed: {exc}") from exc
        return False
