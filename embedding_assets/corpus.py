"""Corpus shards: listing them, and reading them in record batches under the corpus contract.

A shard is one file: parquet (columns `id`, `text`, anything else), jsonl (one JSON object
per line with `id` and `text`) or txt (one document per non-blank line, id `<shard>:<line>`).
Every batch that comes out has `id: string`, `text: string` and the shard's other columns.
What breaks the schema (a missing column, a null or non-string id or text, bytes that are not
UTF-8, malformed JSON, a corrupt file) raises `InputError` naming the shard, row and column.
Rows count from 1 (row 1 is the first row of the file); jsonl and txt name the line of the file,
also from 1, blank lines included.
What breaks content rules (duplicate ids, empty texts, ...) is the raw_corpus checks' job.
A shard that cannot be listed or read (a missing bucket, an endpoint that went away, a file
deleted after it was listed) raises `SourceUnavailable`, an `InputError` naming its URL.

Both functions take the fsspec filesystem to use, so a caller can pass one configured for its
endpoint and credentials; without one, the URL's protocol picks a default filesystem.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from embedding_assets.engine.errors import InputError, SourceUnavailable

SHARD_SUFFIXES = (".parquet", ".jsonl", ".txt")
REQUIRED_COLUMNS = ("id", "text")
# A shard key names a Dagster partition and a storage folder: word characters, and . + = @ - or a
# space inside; no "..", which Dagster reserves, no control characters, commas, brackets or quotes.
SHARD_KEY = re.compile(r"\w(?:[\w .+=@-]{0,198}[\w.+=@-])?")
# Ids are stored, joined and shown in the UI: one line of text of a sane length.
MAX_ID_CHARS = 2048
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f]"
# Errors of the filesystem itself, as opposed to bad content: what s3fs and local files raise.
FILESYSTEM_ERRORS = (OSError, BotoCoreError, ClientError)


def _resolve(url: str, fs: fsspec.AbstractFileSystem | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if fs is None:
        return fsspec.core.url_to_fs(url)
    return fs, fs._strip_protocol(url)


@dataclass
class Listing:
    """What a corpus location holds: shard key -> URL, and every other file with why it is not a shard.
    `fingerprints`: shard key -> the file's size and ETag (S3) or mtime (local), from the same listing.
    `refused`: shard files that cannot be taken as they are (a name that cannot be a partition key, a
    link out of the location), with what to do; a user must fix them rather than lose their documents."""

    shards: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def fingerprint(info: dict) -> str:
    """Size and ETag, or size and mtime, of a listed file: changes when the file is rewritten."""
    # S3 gives an ETag (a content hash for single-part puts); local files give mtime only.
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return f"{info.get('size')}-{str(stamp).strip(chr(34))}"


def scan_location(location: str, fs: fsspec.AbstractFileSystem | None = None) -> Listing:
    """The shard files directly under `location` (not in subdirectories; no hidden files), and the files left out.

    A shard's key is its file name without the suffix; when two files share a stem (`a.jsonl`
    and `a.txt`), each is keyed by its whole name instead, so neither hides the other.
    """
    fs, root = _resolve(location, fs)
    try:
        # On S3 a prefix with no objects, and a missing bucket, are both "not a directory".
        entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"]) if fs.isdir(root) else None
    except FILESYSTEM_ERRORS as exc:
        raise SourceUnavailable(f"corpus location {location} cannot be listed: {type(exc).__name__}: {exc}") from exc
    if entries is None:
        raise InputError(f"corpus location {location} does not exist or is not a directory")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    found: list[tuple[str, str, str, str]] = []
    skipped: dict[str, str] = {}
    refused: dict[str, str] = {}
    for entry in entries:
        path = entry["name"].rstrip("/")
        name = PurePosixPath(path).name
        if name.startswith(".") or not name or path == root.rstrip("/"):
            continue
        if entry.get("type") == "directory":
            skipped[name + "/"] = "a subdirectory: only files directly under the corpus location are shards"
            continue
        suffix = PurePosixPath(name).suffix
        if suffix.lower() not in SHARD_SUFFIXES:
            skipped[name] = f"not a shard file type (expected one of {', '.join(SHARD_SUFFIXES)})"
            continue
        if protocol == "file" and entry.get("islink"):
            target = os.path.realpath(path)
            if os.path.commonpath([target, os.path.realpath(root)]) != os.path.realpath(root):
                refused[name] = f"a symbolic link to {target}, outside the corpus location: copy the file into {location}, or point the corpus at its directory"
                continue
        url = path if protocol == "file" else f"{protocol}://{path}"
        found.append((name[: -len(suffix)], name, url, fingerprint(entry)))
    stems = [stem for stem, _, _, _ in found]
    keys = [stem if stems.count(stem) == 1 else name for stem, name, _, _ in found]
    shards, fingerprints = {}, {}
    for key, (_, name, url, stamp) in zip(keys, found):
        problem = shard_key_problem(key)
        if problem:
            refused[name] = problem
        else:
            shards[key], fingerprints[key] = url, stamp
    return Listing(shards, skipped, fingerprints, refused)


def shard_key_problem(key: str) -> str | None:
    """Why a file's shard key cannot name a partition and a storage folder, with what to do; None when it can."""
    if SHARD_KEY.fullmatch(key) and ".." not in key:
        return None
    return (
        f"its shard name {key!r} cannot be a partition key: rename the file to letters, digits and . _ + = @ - "
        "(a space inside is allowed; no '..', control characters, commas, brackets or quotes), at most 200 characters"
    )


def list_shards(location: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, str]:
    """Shard key -> URL of every shard file directly under `location` (see `scan_location`)."""
    return scan_location(location, fs).shards


def shard_fingerprints(location: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, str]:
    """Shard key -> a fingerprint of the file (see `fingerprint`), from one listing of the location."""
    return scan_location(location, fs).fingerprints


def read_shard(url: str, batch_size: int = 8192, fs: fsspec.AbstractFileSystem | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a shard's documents, checked against the corpus contract."""
    shard = PurePosixPath(url).name
    suffix = PurePosixPath(url).suffix.lower()
    readers = {".parquet": _parquet_batches, ".jsonl": _jsonl_batches, ".txt": _txt_batches}
    if suffix not in readers:
        raise InputError(f"shard {shard}: unsupported file type {suffix!r} (expected one of {SHARD_SUFFIXES})")
    fs, path = _resolve(url, fs)
    row = 0
    try:
        for batch, lines in readers[suffix](fs, path, shard, batch_size):
            yield _conform(batch, shard, row, lines)
            row += batch.num_rows
    except FILESYSTEM_ERRORS as exc:
        raise SourceUnavailable(f"shard {shard}: cannot read {url} after {row} rows: {type(exc).__name__}: {exc}") from exc


def _where(index: int, first_row: int, lines: list[int] | None) -> str:
    """Row `index` of a batch, as the file counts it: its line (jsonl) or its row, both from 1."""
    return f"line {lines[index]}" if lines is not None else f"row {first_row + index + 1}"


def _conform(batch: pa.RecordBatch, shard: str, first_row: int, lines: list[int] | None) -> pa.RecordBatch:
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
            index = column.is_null().to_pylist().index(True)
            raise InputError(f"shard {shard}: {_where(index, first_row, lines)}: {name} is null")
        if name == "id":
            _refuse_bad_ids(column, shard, first_row, lines)
        columns[name] = column
    for name in batch.schema.names:
        if name not in columns:
            columns[name] = batch.column(name)
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _refuse_bad_ids(ids: pa.Array, shard: str, first_row: int, lines: list[int] | None) -> None:
    """An id must be one line of text: not empty, no control character (NUL, newline, ...), at most MAX_ID_CHARS."""
    lengths = pc.utf8_length(ids)
    checks = (
        (pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), lambda i: "id is empty or only whitespace"),
        (pc.match_substring_regex(ids, CONTROL_CHARACTERS), lambda i: f"id {ids[i].as_py()[:80]!r} holds a control character (a NUL, a newline, a tab, ...)"),
        (pc.greater(lengths, MAX_ID_CHARS), lambda i: f"id is {lengths[i].as_py():,} characters long; at most {MAX_ID_CHARS:,} are allowed"),
    )
    for bad, why in checks:
        if pc.any(bad).as_py():
            index = bad.to_pylist().index(True)
            raise InputError(f"shard {shard}: {_where(index, first_row, lines)}: {why(index)}")


def _parquet_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    with fs.open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"shard {shard}: not a readable parquet file ({exc})") from exc
        try:
            for batch in parquet.iter_batches(batch_size=batch_size):
                yield batch, None
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"shard {shard}: corrupt parquet data ({exc})") from exc


def _lines(fs, path: str, shard: str) -> Iterator[tuple[int, str]]:
    with fs.open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"shard {shard}: line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _json_records(fs, path: str, shard: str) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(fs, path, shard):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"shard {shard}: line {number}: malformed JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise InputError(f"shard {shard}: line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


JSON_KINDS = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}


def _jsonl_schema(fs, path: str, shard: str) -> pa.Schema:
    """The file's columns: every key of every line, in order of first appearance, with one type each.

    Read in a first pass over the whole file, so a key that first appears late (or is missing from
    the first line) is a column like any other. A key whose values mix JSON types (other than
    integers with numbers) is refused, naming the first line of each type.
    """
    kinds: dict[str, dict[str, int]] = {}
    examples: dict[str, object] = {}
    for number, record in _json_records(fs, path, shard):
        for key, value in record.items():
            seen = kinds.setdefault(key, {})
            if value is None:
                continue
            seen.setdefault(JSON_KINDS.get(type(value), type(value).__name__), number)
            examples.setdefault(key, value)
    fields = []
    for key, seen in kinds.items():
        found = set(seen)
        if found == {"integer", "number"}:
            fields.append(pa.field(key, pa.float64()))
            continue
        if len(found) > 1:
            where = ", ".join(f"{kind} on line {line}" for kind, line in sorted(seen.items(), key=lambda kv: kv[1]))
            raise InputError(f"shard {shard}: line {max(seen.values())}: column {key!r} mixes types across lines ({where})")
        if not found:
            fields.append(pa.field(key, pa.null()))
            continue
        try:
            fields.append(pa.field(key, pa.infer_type([examples[key]])))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(f"shard {shard}: line {seen[next(iter(found))]}: column {key!r}: {exc}") from exc
    return pa.schema(fields)


def _jsonl_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[tuple[pa.RecordBatch, list[int]]]:
    schema = _jsonl_schema(fs, path, shard)
    rows: list[dict] = []
    numbers: list[int] = []
    for number, record in _json_records(fs, path, shard):
        rows.append(record)
        numbers.append(number)
        if len(rows) == batch_size:
            yield _records_batch(rows, numbers, shard, schema), numbers
            rows, numbers = [], []
    if rows:
        yield _records_batch(rows, numbers, shard, schema), numbers


def _records_batch(rows: list[dict], numbers: list[int], shard: str, schema: pa.Schema) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_pylist(rows, schema=schema)
    except UnicodeEncodeError as exc:
        # A JSON escape such as "\ud800" decodes to a lone surrogate, which is not text.
        for number, row in zip(numbers, rows):
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"shard {shard}: line {number}: a string holds a lone surrogate, not valid Unicode") from exc
        raise InputError(f"shard {shard}: lines {numbers[0]}-{numbers[-1]}: not valid Unicode ({exc})") from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"shard {shard}: lines {numbers[0]}-{numbers[-1]}: a value does not fit its column's type ({exc})") from exc


def _txt_batches(fs, path: str, shard: str, batch_size: int) -> Iterator[tuple[pa.RecordBatch, None]]:
    stem = PurePosixPath(shard).stem
    ids: list[str] = []
    texts: list[str] = []
    for number, line in _lines(fs, path, shard):
        if line.strip():
            ids.append(f"{stem}:{number}")
            texts.append(line.rstrip("\r\n"))
        if len(ids) == batch_size:
            yield pa.record_batch({"id": ids, "text": texts}), None
            ids, texts = [], []
    if ids:
        yield pa.record_batch({"id": ids, "text": texts}), None
