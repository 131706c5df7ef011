"""WordPiece tokenisation through the `tokenizers` library, into flat token arrays."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from embedding_assets.engine.errors import ArtifactError


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    """Build a tokenizer from the text of a `tokenizer.json`, with truncation and padding off.

    Tokenizer files exported for transformers often carry a fixed truncation and padding
    length; for lexical features every token of every document counts, and pads must not.
    """
    try:
        spec = json.loads(tokenizer_json)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"tokenizer is not valid JSON: {exc}") from exc
    spec["truncation"] = None
    spec["padding"] = None
    return Tokenizer.from_str(json.dumps(spec))


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise a batch of texts without special tokens.

    Returns the token ids of all documents back to back (uint32) and the offsets (int64,
    length n + 1) where each document's tokens start and end.
    """
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty(offsets[-1], dtype=np.uint32)
    for encoding, start, end in zip(encodings, offsets[:-1], offsets[1:]):
        ids[start:end] = encoding.ids
    return ids, offsets
