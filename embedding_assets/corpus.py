"""Corpus shards: listing them, and reading them in record batches under the corpus contract.

A shard is one file: parquet (columns `id`, `text`, anything else), jsonl (one JSON object
per line with `id` and `text`) or txt (one document per non-blank line, id `<shard>:<line>`).
Every batch that comes out has `id: string`, `text: string` and the shard's other columns.
What breaks the schema (a missing column, a null or non-string id or text, bytes that are not
UTF-8, malformed JSON, a corrupt file) raises `InputError` naming the shard, row and column.
What breaks content rules (duplicate ids, empty texts, ...) is the raw_corpus checks' job.
A shard that cannot be listed or read (a missing bucket, an endpoint that went away, a file
deleted after it was listed) raises `SourceUnavailable`, an `InputError` naming its URL.

Both functions take the fsspec filesystem to use, so a caller can pass one configured for its
endpoint and credentials; without one, the URL's protocol picks a default filesystem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from embedding_assets.engine.errors import InputError, SourceUnavailable

SHARD_SUFFIXES = (".parquet", ".jsonl", ".txt")
REQUIRED_COLUMNS = ("id", "text")
# Errors of the filesystem itself, as opposed to bad content: what s3fs and local files raise.
FILESYSTEM_ERRORS = (OSError, BotoCoreError, ClientError)


def _resolve(url: str, fs: fsspec.AbstractFileSystem | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if fs is None:
        return fsspec.core.url_to_fs(url)
    return fs, fs._strip_protocol(url)


def list_shards(location: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, str]:
    """Shard key (the file name without its suffix) -> URL of every shard file under `location`."""
    fs, root = _resolve(location, fs)
    try:
        # On S3 a prefix with no objects, and a missing bucket, are both "not a directory".
        paths = sorted(fs.find(root)) if fs.isdir(root) else None
    except FILESYSTEM_ERRORS as exc:
        raise SourceUnavailable(f"corpus location {location} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if paths is None:
        raise InputError(f"corpus location {location} does not exist or is not a directory")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    shards: dict[str, str] = {}
    for path in paths:
        name = PurePosixPath(path).name
        suffix = PurePosixPath(name).suffix
        if suffix not in SHARD_SUFFIXES or name.startswith("."):
            continue
        key = name[: -len(suffix)]
        url = path if protocol == "file" else f"{protocol}://{path}"
        if key in shards:
            raise InputError(f"two shards are both named {key!r}: {shards[key]} and {url}")
        shards[key] = url
    return shards


def shard_fingerprints(location: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, str]:
    """Shard key -> a fingerprint of the file (size and ETag, or size and mtime) that changes when it is rewritten."""
    shards = list_shards(location, fs)
    fs, _ = _resolve(location, fs)
    fingerprints = {}
    for key, url in shards.items():
        try:
            info = fs.info(fs._strip_protocol(url))
        except FILESYSTEM_ERRORS as exc:
            raise SourceUnavailable(f"shard {key} ({url}) cannot be read: {type(exc).__name__}: {exc}") from exc
        # S3 gives an ETag (a content hash for single-part puts); local files give mtime only.
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        fingerprints[key] = f"{info.get('size')}-{str(stamp).strip(chr(34))}"
    return fingerprints


def read_shard(url: str, batch_size: int = 8192, fs: fsspec.AbstractFileSystem | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a shard's documents, checked against the corpus contract."""
    shard = PurePosixPath(url).name
    suffix = PurePosixPath(url).suffix
    readers = {".parquet": _parquet_batches, ".jsonl": _jsonl_batches, ".txt": _txt_batches}
    if suffix not in readers:
        raise InputError(f"shard {shard}: unsupported file type {suffix!r} (expected one of {SHARD_SUFFIXES})")
    fs, path = _resolve(url, fs)
    row = 0
    try:
        for batch in readers[suffix](fs, path, shard, batch_size):
            yield _conform(batch, shard, row)
            row += batch.num_rows
    except FILESYSTEM_ERRORS as exc:
        raise SourceUnavailable(f"shard {shard}: cannot read {url} after row {row}: {type(exc).__name__}: {exc}") from exc


def _conform(batch: pa.RecordBatch, shard: str, first_row: int) -> pa.RecordBatch:
    columns = {}
    for name in REQUIRED_COLUMNS:
        if name not in batch.schema.names:
            raise InputError(f"shard {shard}: missing required column {name!r} (has {batch.schema.names})")
        column = batch.column(name)
        if pa.types.is_integer(column.type) and name == "id":
            column = column.cast(pa.string())
        elif pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
            column = column.cast(pa.string())
        elif not pa.types.is_string(column.type):
            raise InputError(f"shard {shard}: column {name!r} has type {column.type}, expected string")
        if column.null_count:
            row = first_row + column.is_null().to_pylist().index(True)
            raise InputError(f"shard {shard}: row {row}: {name} is null")
        columns[name] = column
    for name in batch.schema.names:
        if name not in columns:
            columns[name] = batch.column(name)
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _parquet_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"shard {shard}: not a readable parquet file ({exc})") from exc
        try:
            yield from parquet.iter_batches(batch_size=batch_size)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"shard {shard}: corrupt parquet data ({exc})") from exc


def _lines(fs, path: str, shard: str) -> Iterator[tuple[int, str]]:
    with fs.open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"shard {shard}: line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _jsonl_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    rows: list[dict] = []
    numbers: list[int] = []
    for number, line in _lines(fs, path, shard):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"shard {shard}: line {number}: malformed JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise InputError(f"shard {shard}: line {number}: expected a JSON object, got {type(record).__name__}")
        rows.append(record)
        numbers.append(number)
        if len(rows) == batch_size:
            yield _records_batch(rows, numbers, shard)
            rows, numbers = [], []
    if rows:
        yield _records_batch(rows, numbers, shard)


def _records_batch(rows: list[dict], numbers: list[int], shard: str) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_pylist(rows)
    except UnicodeEncodeError as exc:
        # A JSON escape such as "\ud800" decodes to a lone surrogate, which is not text.
        for number, row in zip(numbers, rows):
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"shard {shard}: line {number}: a string holds a lone surrogate, not valid Unicode") from exc
        raise InputError(f"shard {shard}: lines {numbers[0]}-{numbers[-1]}: not valid Unicode ({exc})") from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"shard {shard}: lines {numbers[0]}-{numbers[-1]}: a column mixes types across lines ({exc})") from exc


def _txt_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    stem = PurePosixPath(shard).stem
    ids: list[str] = []
    texts: list[str] = []
    for number, line in _lines(fs, path, shard):
        if line.strip():
            ids.append(f"{stem}:{number}")
            texts.append(line.rstrip("\r\n"))
        if len(ids) == batch_size:
            yield pa.record_batch({"id": ids, "text": texts})
            ids, texts = [], []
    if ids:
        yield pa.record_batch({"id": ids, "text": texts})
