"""How the pipeline reaches S3: one set of settings for the dagster-aws client (the storage's reads and
writes) and for s3fs (the corpus source, which lists and streams shards of several formats through fsspec).

Credentials are deliberately not settings: boto3 and s3fs find them in the environment
(AWS_ACCESS_KEY_ID, ...), a profile, or the instance role, so they never sit in code or run config.
"""

from __future__ import annotations

import dagster as dg
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, field_validator

# What a call to S3 can raise when the bucket, the key or the endpoint is not there.
S3_ERRORS = (BotoCoreError, ClientError, S3UploadFailedError, OSError)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def describe_s3_error(exc: BaseException) -> str:
    """A short reason: the S3 error code when the service answered, else the connection problem."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code in {"404", "NoSuchKey", "NotFound"}:
            return "no such object"
        if code == "NoSuchBucket":
            return "the bucket does not exist"
        return f"{code}: {message}".rstrip(": ")
    if isinstance(exc, S3UploadFailedError) and "NoSuchBucket" in str(exc):
        return "the bucket does not exist"
    if isinstance(exc, FileNotFoundError):
        text = str(exc)
        return "the bucket does not exist" if "bucket does not exist" in text else "no such object"
    return f"{type(exc).__name__}: {exc}"


PERMANENT_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "400", "InvalidBucketName"}


def is_transient(exc: BaseException | None) -> bool:
    """Whether trying again later may succeed: a connection refused or cut, a timeout, a 5xx or throttling
    answer; not a missing bucket or object, a refused credential, or a file that is not there."""
    while exc is not None:
        if isinstance(exc, ClientError):
            return exc.response.get("Error", {}).get("Code") not in PERMANENT_CODES
        if isinstance(exc, S3UploadFailedError):
            # Only the message names the cause; match named codes, not numbers a port could contain.
            return not any(code in str(exc) for code in PERMANENT_CODES if not code.isdigit())
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(exc, (BotoCoreError, OSError)):
            return True
        exc = exc.__cause__
    return False


class S3Settings(dg.Config):
    """Where S3 is. Unset fields fall back to boto3's own (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE)."""

    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint, e.g. http://localhost:9000 for MinIO; unset for AWS.")
    region_name: str | None = Field(default=None, description="AWS region of the buckets.")
    profile_name: str | None = Field(default=None, description="Profile in ~/.aws/config to take credentials from.")
    max_attempts: int = Field(default=5, description="Attempts per S3 call, the first included (boto3 retry setting).")

    @field_validator("max_attempts")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_attempts must be >= 1, got {value}")
        return value

    def resource(self) -> S3Resource:
        return S3Resource(
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            profile_name=self.profile_name,
            max_attempts=self.max_attempts,
        )

    def filesystem(self):
        """An s3fs filesystem with the same settings, for the corpus source's listings and shard reads."""
        import s3fs

        client_kwargs = {k: v for k, v in {"endpoint_url": self.endpoint_url, "region_name": self.region_name}.items() if v}
        return s3fs.S3FileSystem(
            profile=self.profile_name,
            client_kwargs=client_kwargs,
            # The same retry rules as the boto3 client that dagster-aws builds: connection errors,
            # 5xx and throttling answers are retried with exponential backoff and jitter.
            config_kwargs={"retries": {"max_attempts": self.max_attempts, "mode": "standard"}},
            # Shards keep landing under the prefix: never answer a listing from a stale cache.
            use_listings_cache=False,
        )
