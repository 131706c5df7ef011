"""Streaming a parquet column through the embedder."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_assets.engine import InputError, LexicalEmbedder
from embedding_assets.engine.features import build_features
from embedding_assets.engine.network import init_layers


@pytest.fixture(scope="module")
def model(tokenizer_json, sample_texts):
    feats = build_features(tokenizer_json, [str(i) for i in range(300)], [sample_texts[:300]], 20_000, 3, 2, 100_000)
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, init_layers([feats.vocabulary.size, 24, 8], 1), np.ones(8, np.float32) / np.sqrt(8), 0.4)


def test_encode_parquet_streams_the_column_in_order(model, sample_texts, tmp_path):
    texts = sample_texts[:1000]
    pq.write_table(pa.table({"id": [str(i) for i in range(1000)], "body": texts}), tmp_path / "docs.parquet", row_group_size=300)
    batches = list(model.encode_parquet(tmp_path / "docs.parquet", column="body", batch_size=256))
    assert [len(b) for b in batches] == [256, 256, 256, 232]
    assert np.array_equal(np.concatenate(batches), model.encode(texts, batch_size=256))


def test_encode_parquet_names_the_bad_row_and_missing_column(model, tmp_path):
    pq.write_table(pa.table({"text": ["fine", None]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="row 1, column 'text'"):
        list(model.encode_parquet(tmp_path / "bad.parquet"))
    with pytest.raises(InputError, match="no column 'body'"):
        list(model.encode_parquet(tmp_path / "bad.parquet", column="body"))
