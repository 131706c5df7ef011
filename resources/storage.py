"""Where the pipeline keeps what it makes: a local directory (default) or an s3:// prefix.

Reads and writes on S3 go through one client, the boto3 one dagster-aws builds from the S3
settings: parquet is streamed by ranged GETs, so a reader of a footer reads the footer only.

Every write is atomic. Locally, a temporary file in the target directory is renamed over the
target. On S3, bytes go up as one object through the dagster-aws client: a single PUT, or
above boto3's multipart threshold a multipart upload that either completes or is aborted.
Parquet is first written to a local temporary file, so a failure while producing the batches
leaves nothing on S3. Readers therefore see the previous version or the new one, never a part.
A local temporary file left by a killed writer is removed by the next write of the same target.

Transient failures (a connection refused or cut, a 5xx answer) are retried by the clients
(botocore's standard retry mode, `S3Settings.max_attempts`) and then by the assets' Dagster
`RetryPolicy`; a `StorageError` says whether it is worth retrying, so a missing bucket or
object fails at once.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from pydantic import Field, PrivateAttr, field_validator

from embedding_assets.engine.storage import remove_orphaned_temps, temp_file, write_bytes_atomic
from embedding_assets.resources.s3 import S3_ERRORS, S3Settings, describe_s3_error, is_s3, is_transient, split_s3_uri

READ_BUFFER_BYTES = 8 * 1024 * 1024  # one ranged GET reads at least this much


class S3ObjectReader(io.RawIOBase):
    """One S3 object as a seekable, read-only file, read by ranged GETs.

    Every GET names the ETag seen when the reader was opened, so an object replaced while it is
    read fails the read (412) instead of mixing two versions.
    """

    def __init__(self, client, bucket: str, key: str):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        head = client.head_object(Bucket=bucket, Key=key)
        self._size, self._etag, self._position = int(head["ContentLength"]), head["ETag"], 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(start + offset, 0)
        return self._position

    def readinto(self, buffer) -> int:
        if self._position >= self._size or not len(buffer):
            return 0
        last = min(self._position + len(buffer), self._size) - 1
        response = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-{last}", IfMatch=self._etag)
        data = response["Body"].read()
        memoryview(buffer)[: len(data)] = data
        self._position += len(data)
        return len(data)


# For the assets that read and write storage: a step that failed on a transient storage error is
# run again after 1 s, then after 3 s more (on top of the clients' own retries).
STORAGE_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=1, backoff=dg.Backoff.EXPONENTIAL)


class StorageError(dg.Failure):
    """Storage could not be read or written; the message names the URI (bucket and key on S3)."""

    def __init__(self, action: str, uri: str, exc: BaseException, reason: str | None = None):
        where = uri
        metadata = {"uri": uri}
        if is_s3(uri):
            bucket, key = split_s3_uri(uri)
            where = f"{uri} (bucket {bucket!r}, key {key!r})"
            metadata.update(bucket=bucket, key=key)
            reason = reason or describe_s3_error(exc)
        else:
            reason = reason or f"{type(exc).__name__}: {exc}"
        super().__init__(description=f"cannot {action} {where}: {reason}", metadata=metadata, allow_retries=is_transient(exc))


class Storage(dg.ConfigurableResource):
    """Base location of every output: a local directory or `s3://bucket/prefix`."""

    base: str = Field(default="data/storage", description="Local directory or s3://bucket/prefix for all outputs.")
    s3: S3Settings = Field(default=S3Settings(), description="Endpoint, region and profile used when base is on S3.")
    keep_versions: int = Field(
        default=3, ge=1, description="Versions of each output kept (the newest ones); the last one that passed its gates is always kept too."
    )
    _clients: dict = PrivateAttr(default_factory=dict)

    @field_validator("base")
    @classmethod
    def _known_location(cls, value: str) -> str:
        if "://" in value and not is_s3(value):
            raise ValueError(f"storage base must be a local directory or s3://bucket/prefix, got {value!r}")
        if is_s3(value):
            split_s3_uri(value)
        return value

    def uri(self, *parts: str) -> str:
        base = self.base.rstrip("/")
        if is_s3(base):
            return "/".join([base, *parts])
        return str(Path(base).absolute().joinpath(*parts))

    def _client(self):
        """One boto3 client per resource instance, built by dagster-aws from the S3 settings."""
        if "s3" not in self._clients:
            self._clients["s3"] = self.s3.resource().get_client()
        return self._clients["s3"]

    def exists(self, *parts: str) -> bool:
        uri = self.uri(*parts)
        if not is_s3(uri):
            return Path(uri).exists()
        bucket, key = split_s3_uri(uri)
        try:
            self._client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
                raise StorageError("look up", uri, exc) from exc
        except S3_ERRORS as exc:
            raise StorageError("look up", uri, exc) from exc
        # HEAD answers 404 for a missing bucket too; tell the two apart.
        try:
            self._client().head_bucket(Bucket=bucket)
        except ClientError as exc:
            missing = exc.response.get("Error", {}).get("Code") in {"404", "NoSuchBucket", "NotFound"}
            raise StorageError("look up", uri, exc, "the bucket does not exist" if missing else None) from exc
        except S3_ERRORS as exc:
            raise StorageError("look up", uri, exc) from exc
        return False

    def list_names(self, *parts: str) -> list[str]:
        """Names of the entries (files and folders) directly under a folder; empty when there is none."""
        uri = self.uri(*parts)
        try:
            if not is_s3(uri):
                return sorted(p.name for p in Path(uri).iterdir()) if Path(uri).is_dir() else []
            bucket, key = split_s3_uri(uri.rstrip("/") + "/")
            names = set()
            for page in self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key, Delimiter="/"):
                names.update(p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(key) :] for o in page.get("Contents", []))
            return sorted(names)
        except S3_ERRORS as exc:
            raise StorageError("list", uri, exc) from exc

    def delete_folder(self, *parts: str) -> None:
        """Remove a folder and everything under it (on S3, every object under the prefix)."""
        uri = self.uri(*parts)
        try:
            if not is_s3(uri):
                shutil.rmtree(uri, ignore_errors=True)
                return
            bucket, key = split_s3_uri(uri.rstrip("/") + "/")
            for page in self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if objects:
                    self._client().delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        except S3_ERRORS as exc:
            raise StorageError("delete", uri, exc) from exc

    def write_bytes(self, data: bytes, *parts: str) -> str:
        uri = self.uri(*parts)
        if is_s3(uri):
            self._upload(uri, io.BytesIO(data))
        else:
            try:
                write_bytes_atomic(uri, data)
            except OSError as exc:
                raise StorageError("write", uri, exc) from exc
        return uri

    def read_bytes(self, *parts: str) -> bytes:
        uri = self.uri(*parts)
        try:
            if is_s3(uri):
                bucket, key = split_s3_uri(uri)
                return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()
            return Path(uri).read_bytes()
        except S3_ERRORS as exc:
            raise StorageError("read", uri, exc) from exc

    def read_range(self, start: int, length: int, *parts: str) -> bytes:
        """`length` bytes from `start` (fewer at the end of the object): a header without the rest."""
        uri = self.uri(*parts)
        try:
            if is_s3(uri):
                bucket, key = split_s3_uri(uri)
                return self._client().get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
            with open(uri, "rb") as f:
                f.seek(start)
                return f.read(length)
        except S3_ERRORS as exc:
            raise StorageError("read", uri, exc) from exc

    @contextmanager
    def open_parquet(self, *parts: str):
        """A `pyarrow.parquet.ParquetFile` over the stored object, for streaming its batches."""
        uri = self.uri(*parts)
        try:
            if is_s3(uri):
                bucket, key = split_s3_uri(uri)
                with io.BufferedReader(S3ObjectReader(self._client(), bucket, key), buffer_size=READ_BUFFER_BYTES) as f:
                    yield pq.ParquetFile(f)
            else:
                yield pq.ParquetFile(uri)
        except S3_ERRORS as exc:
            # Also catches the endpoint going away while the caller streams batches.
            raise StorageError("read", uri, exc) from exc

    def write_parquet(
        self,
        batches: Iterable[pa.RecordBatch],
        schema: pa.Schema,
        *parts: str,
    ) -> tuple[str, int]:
        """Stream record batches into one parquet object; returns its URI and row count."""
        uri = self.uri(*parts)
        local = not is_s3(uri)
        if local:
            try:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                remove_orphaned_temps(Path(uri))
                fd, tmp = temp_file(Path(uri))
            except OSError as exc:
                raise StorageError("write", uri, exc) from exc
        else:
            # Staged on the local disk, then one upload: nothing is on S3 until the file is whole.
            fd, tmp = temp_file(Path(split_s3_uri(uri)[1]), Path(tempfile.gettempdir()))
        os.close(fd)
        rows = 0
        try:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
            if local:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, uri)
            else:
                with open(tmp, "rb") as f:
                    self._upload(uri, f)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return uri, rows

    def _upload(self, uri: str, fileobj) -> None:
        # s3transfer puts small objects in one PUT and aborts a failed multipart upload.
        bucket, key = split_s3_uri(uri)
        try:
            self._client().upload_fileobj(fileobj, bucket, key)
        except S3_ERRORS as exc:
            raise StorageError("write", uri, exc) from exc
