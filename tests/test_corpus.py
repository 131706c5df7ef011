"""Reading shards: every format, and a clear error naming the shard, row and column for bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_assets.corpus import list_shards, read_shard
from embedding_assets.engine.errors import InputError


def read_all(path):
    return pa.Table.from_batches(list(read_shard(str(path), batch_size=2)))


def test_every_format_reads_into_the_contract(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"], "lang": ["en", "fr"]}), tmp_path / "p.parquet")
    (tmp_path / "j.jsonl").write_text('{"id": "x", "text": "hello"}\n\n{"id": "y", "text": "world"}\n')
    (tmp_path / "t.txt").write_text("first line\n\nthird line\n")
    (tmp_path / "README.md").write_text("not a shard")
    shards = list_shards(str(tmp_path))
    assert sorted(shards) == ["j", "p", "t"]
    parquet = read_all(shards["p"])
    assert parquet["id"].to_pylist() == ["1", "2"] and parquet["lang"].to_pylist() == ["en", "fr"]
    assert read_all(shards["j"])["id"].to_pylist() == ["x", "y"]
    txt = read_all(shards["t"])
    assert txt["id"].to_pylist() == ["t:1", "t:3"] and txt["text"].to_pylist() == ["first line", "third line"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"text": ["a"]}), r"bad\.parquet: missing required column 'id'"),
        (pa.table({"id": ["a"]}), r"bad\.parquet: missing required column 'text'"),
        (pa.table({"id": ["a", None, "c"], "text": ["x", "y", "z"]}), r"bad\.parquet: row 2: id is null"),
        (pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]}), r"bad\.parquet: row 2: text is null"),
        (pa.table({"id": [1.5], "text": ["x"]}), r"bad\.parquet: column 'id' has type double"),
    ],
)
def test_contract_violations_name_shard_row_and_column(tmp_path, table, message):
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=message):
        read_all(tmp_path / "bad.parquet")


def test_corrupt_parquet_is_named(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "cut.parquet")
    data = (tmp_path / "cut.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.parquet: not a readable parquet file"):
        read_all(tmp_path / "cut.parquet")


def test_malformed_jsonl_and_non_utf8_lines_are_named(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "text": "x"}) + "\n{broken\n")
    with pytest.raises(InputError, match=r"m\.jsonl: line 2: malformed JSON"):
        read_all(tmp_path / "m.jsonl")
    (tmp_path / "u.txt").write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(InputError, match=r"u\.txt: line 2: not valid UTF-8"):
        read_all(tmp_path / "u.txt")


def test_missing_location_and_clashing_shard_names(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_shards(str(tmp_path / "nowhere"))
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    # Two files with one stem are both shards, each named by its whole file name.
    assert sorted(list_shards(str(tmp_path))) == ["a.jsonl", "a.txt"]
