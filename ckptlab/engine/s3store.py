"""The S3 implementation of :class:`.objectstore.ObjectStore`, on boto3 (the ``s3`` extra).

Credentials, region and endpoint come from boto3's standard chain and nothing else:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
``~/.aws/config`` / ``~/.aws/credentials`` (SSO, roles and ``credential_process`` included),
instance and container roles, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and for S3-compatible
stores (MinIO, SeaweedFS, Ceph, R2, GCS's XML API) ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the profile). ckptlab never reads a secret
itself, so none can reach a manifest, a log line or an error message.

Why boto3 (measured in docs/architecture.md, "Checkpoints on object storage"): it is the
reference client, reads the whole standard configuration chain above (obstore reads
environment variables but not profiles), exposes S3's conditional writes on every call
ckptlab needs (``IfNoneMatch`` and ``IfMatch`` on PutObject, ``IfNoneMatch`` on
CompleteMultipartUpload), and streams a download into caller-owned memory (``readinto``).
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from .objectstore import (
    ObjectMeta,
    ObjectNotFound,
    ObjectRead,
    ObjectTooLarge,
    PreconditionFailed,
    StoreError,
)

# Objects from this size on go up in parts, in parallel (a part may not be under 5 MiB).
MULTIPART_MIN = 16 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024
_MAX_PARTS = 10_000
# S3 copies an object of up to 5 GiB in one request; a larger one is copied in parts.
COPY_SINGLE_MAX = 5 * 1024 ** 3
COPY_PART_BYTES = 512 * 1024 * 1024
# Parallel part uploads and connections per store.
UPLOAD_THREADS = 8
_CREDENTIALS_IN_URL = re.compile(r"//[^/@]*@")


def _scrub(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL removed (endpoints may carry them)."""
    return _CREDENTIALS_IN_URL.sub("//", text)


def _server_time(response: dict[str, Any]) -> float | None:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


class _Stream:
    """A download in progress: the response body, read into the caller's buffers."""

    def __init__(self, body: Any, size: int, etag: str, where: str) -> None:
        self._body, self.size, self.etag, self._where = body, size, etag, where

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._body.readinto(buffer)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreError(f"reading {self._where} failed: {_scrub(str(exc))}") from None

    def close(self) -> None:
        self._body.close()


class S3Store:
    """One S3 bucket, through one boto3 client (thread-safe; its connection pool is shared
    by the parallel part uploads)."""

    scheme = "s3"
    # S3's limits: keys per listing page and per DeleteObjects request, the size copied in
    # one request and the part size above it. Tests lower them (on the class or on one
    # store) to exercise pagination, batching and copies in parts with few, small objects.
    page_size = 1000
    delete_batch = 1000
    copy_single_max = COPY_SINGLE_MAX
    copy_part_bytes = COPY_PART_BYTES

    def __init__(self, bucket: str, *, client: Any = None) -> None:
        self.bucket = bucket
        if client is None:
            try:
                session = boto3.session.Session()
                config = Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    max_pool_connections=2 * UPLOAD_THREADS,
                    # Every object is SHA-256-checked by ckptlab as it is read: CRC32s of the
                    # same bytes would only cost CPU on both sides.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
                client = session.client("s3", config=config,
                                        region_name=session.region_name or "us-east-1")
            except botocore.exceptions.BotoCoreError as exc:
                raise StoreError(f"cannot set up the S3 client: {_scrub(str(exc))}") from None
        self.client = client
        self.endpoint = _scrub(str(client.meta.endpoint_url))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- errors -------------------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _error(self, exc: Exception, key: str, action: str) -> Exception:
        """The store exception for a client error (never a message with a secret in it)."""
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return PreconditionFailed(f"{self._where(key)}: {action} lost a conditional "
                                          f"write ({code or status})")
            if code == "NoSuchBucket":
                return ObjectNotFound(f"bucket {self.bucket!r} does not exist at "
                                      f"{self.endpoint}; create it first")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return ObjectNotFound(f"{self._where(key)} does not exist")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                        "ExpiredToken") or status == 403:
                return StoreError(
                    f"{action} {self._where(key)} was refused ({code}): check the credentials "
                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket's "
                    "permissions")
            if code == "NotImplemented" or status == 501:
                return StoreError(
                    f"{action} {self._where(key)}: the store at {self.endpoint} does not "
                    f"implement a request ckptlab needs ({error.get('Message', code)}); "
                    "ckptlab needs conditional writes (If-None-Match / If-Match)")
            return StoreError(f"{action} {self._where(key)} failed: {code} "
                              f"{_scrub(str(error.get('Message', '')))}".rstrip())
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StoreError("no AWS credentials were found: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an "
                              "instance role applies")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError):
            return StoreError(f"cannot reach the S3 endpoint {self.endpoint} to {action} "
                              f"{self._where(key)}; check AWS_ENDPOINT_URL and the network")
        return StoreError(f"{action} {self._where(key)} failed: {_scrub(str(exc))}")

    def _call(self, key: str, action: str, function: Any, **kwargs: Any) -> Any:
        try:
            return function(Bucket=self.bucket, **kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, key, action) from None

    # -- writes -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> str:
        extra: dict[str, str] = {}
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        response = self._call(key, "writing", self.client.put_object, Key=key, Body=data,
                              **extra)
        return str(response["ETag"])

    def upload(self, key: str, views: Sequence[memoryview],
               on_part: Callable[[int], None] | None = None) -> str:
        total = sum(len(v) for v in views)
        if total < MULTIPART_MIN:
            etag = self.put(key, b"".join(views))
            if on_part is not None:
                on_part(1)  # a small object is one part
            return etag
        part_bytes = max(PART_BYTES, -(-total // _MAX_PARTS))
        upload = self._call(key, "starting the upload of", self.client.create_multipart_upload,
                            Key=key)
        upload_id = upload["UploadId"]

        def send(number: int, body: bytes) -> dict[str, Any]:
            response = self._call(key, "uploading a part of", self.client.upload_part, Key=key,
                                  UploadId=upload_id, PartNumber=number, Body=body)
            if on_part is not None:
                on_part(number)
            return {"PartNumber": number, "ETag": response["ETag"]}

        try:
            pool = self._executor()
            # At most two parts per thread copied and waiting: memory stays bounded however
            # large the object is.
            window = threading.BoundedSemaphore(2 * UPLOAD_THREADS)
            futures = []
            for number, body in enumerate(_parts(views, part_bytes), start=1):
                window.acquire()
                future = pool.submit(send, number, body)
                future.add_done_callback(lambda _: window.release())
                futures.append(future)
            parts = [future.result() for future in futures]
            response = self._call(key, "completing the upload of",
                                  self.client.complete_multipart_upload, Key=key,
                                  UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            # Never leave the parts billed and invisible; an abort that fails is cleaned by
            # the bucket's lifecycle rule for incomplete uploads (docs/architecture.md).
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                pass  # the original error is the one to report
            raise
        return str(response["ETag"])

    def copy(self, source: str, key: str) -> str:
        meta = self.head(source)
        if meta is None:
            raise ObjectNotFound(f"{self._where(source)} does not exist")
        origin = {"Bucket": self.bucket, "Key": source}
        if meta.size <= self.copy_single_max:
            response = self._call(key, "copying to", self.client.copy_object, Key=key,
                                  CopySource=origin)
            return str(response["CopyObjectResult"]["ETag"])
        upload = self._call(key, "starting the copy to", self.client.create_multipart_upload,
                            Key=key)
        upload_id = upload["UploadId"]

        def send(number: int, start: int) -> dict[str, Any]:
            end = min(start + self.copy_part_bytes, meta.size) - 1
            response = self._call(key, "copying a part to", self.client.upload_part_copy,
                                  Key=key, UploadId=upload_id, PartNumber=number,
                                  CopySource=origin, CopySourceRange=f"bytes={start}-{end}")
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        try:
            starts = range(0, meta.size, self.copy_part_bytes)
            parts = list(self._executor().map(send, range(1, len(starts) + 1), starts))
            response = self._call(key, "completing the copy to",
                                  self.client.complete_multipart_upload, Key=key,
                                  UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:  # as for an upload: never leave invisible parts behind
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                pass  # the original error is the one to report
            raise
        return str(response["ETag"])

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="ckptlab-s3")
            return self._pool

    def delete(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), self.delete_batch):
            batch = keys[start:start + self.delete_batch]
            response = self._call(batch[0], "deleting", self.client.delete_objects,
                                  Delete={"Objects": [{"Key": k} for k in batch],
                                          "Quiet": True})
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StoreError(f"deleting {self._where(first.get('Key', ''))} failed: "
                                 f"{first.get('Code')} {first.get('Message', '')}".rstrip())

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str, max_bytes: int) -> ObjectRead:
        response = self._call(key, "reading", self.client.get_object, Key=key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise ObjectTooLarge(f"{self._where(key)} has {size} bytes, more than the "
                                     f"{max_bytes} it may have")
            data = body.read(max_bytes + 1)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreError(f"reading {self._where(key)} failed: {_scrub(str(exc))}") \
                from None
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"{self._where(key)} is larger than the {max_bytes} bytes it "
                                 "may have")
        modified = response.get("LastModified")
        return ObjectRead(data, str(response.get("ETag", "")),
                          modified.timestamp() if modified is not None else None,
                          _server_time(response))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self._call(key, "reading", self.client.get_object, Key=key,
                              Range=f"bytes={start}-{start + length - 1}")
        body = response["Body"]
        try:
            return bytes(body.read(length))
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StoreError(f"reading {self._where(key)} failed: {_scrub(str(exc))}") \
                from None
        finally:
            body.close()

    def open(self, key: str) -> _Stream:
        response = self._call(key, "reading", self.client.get_object, Key=key)
        return _Stream(response["Body"], int(response.get("ContentLength", 0)),
                       str(response.get("ETag", "")), self._where(key))

    def head(self, key: str) -> ObjectMeta | None:
        try:
            response = self._call(key, "looking up", self.client.head_object, Key=key)
        except ObjectNotFound:
            return None
        modified = response.get("LastModified")
        return ObjectMeta(key, int(response.get("ContentLength", 0)),
                          str(response.get("ETag", "")),
                          modified.timestamp() if modified is not None else None)

    def list(self, prefix: str) -> Iterator[ObjectMeta]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(prefix, "listing", self.client.list_objects_v2, Prefix=prefix,
                              MaxKeys=self.page_size, **extra)
            for item in page.get("Contents", []):
                modified = item.get("LastModified")
                yield ObjectMeta(str(item["Key"]), int(item.get("Size", 0)),
                                 str(item.get("ETag", "")),
                                 modified.timestamp() if modified is not None else None)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(prefix, "listing", self.client.list_objects_v2, Prefix=prefix,
                              Delimiter="/", MaxKeys=self.page_size, **extra)
            for item in page.get("CommonPrefixes", []):
                yield str(item["Prefix"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, endpoint={self.endpoint!r})"


def _parts(views: Sequence[memoryview], part_bytes: int) -> Iterator[bytes]:
    """The bytes of ``views`` cut into consecutive parts of ``part_bytes`` (the last shorter)."""
    pending: list[memoryview] = []
    filled = 0
    for view in views:
        view = memoryview(view).cast("B")
        while len(view):
            take = min(len(view), part_bytes - filled)
            pending.append(view[:take])
            filled += take
            view = view[take:]
            if filled == part_bytes:
                yield b"".join(pending)
                pending, filled = [], 0
    if pending:
        yield b"".join(pending)


def endpoint_from_environment() -> str | None:
    """The endpoint boto3 will use from the environment, if one is set (for messages)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
