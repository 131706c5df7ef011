"""Front ends: text -> flat token id arrays, by WordPiece (through `tokenizers`) or by words.

Both split a whole batch at once over its UTF-8 bytes with numpy: no Python object per token.

- `wordpiece`: exactly the ids of the model's `tokenizers` WordPiece tokenizer. For a BERT-style
  tokenizer, the batch is cut at ASCII whitespace and punctuation (where BERT's pre-tokenizer
  always cuts), each distinct piece is WordPiece-tokenised once by `tokenizers` and cached, and
  occurrences are expanded from the cache. Pieces with non-ASCII or control bytes go through
  `tokenizers` too (it normalises and splits them further); documents that contain an added
  token's text (`[MASK]`, say), and tokenizers of any other kind, go through `tokenizers` whole.
- `words`: lowercased words and single punctuation marks, each hashed to a 32-bit id, as
  fastText does with words; its n-grams then go through the same vocabulary machinery.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from embedding_assets.engine.errors import ArtifactError

WORDPIECE = "wordpiece"
WORDS = "words"
FRONT_ENDS = (WORDPIECE, WORDS)

_SEPARATOR, _WORD, _PUNCT, _OTHER = 0, 1, 2, 3
_CACHE_LIMIT = 1 << 21  # distinct pieces; the cache starts over beyond it


def _classes(other: int) -> np.ndarray:
    classes = np.full(256, other, dtype=np.uint8)  # ASCII controls and every byte >= 0x80
    classes[[ord(c) for c in " \t\n\r"]] = _SEPARATOR
    for lo, hi in ((48, 58), (65, 91), (97, 123)):
        classes[lo:hi] = _WORD
    for lo, hi in ((33, 48), (58, 65), (91, 97), (123, 127)):
        classes[lo:hi] = _PUNCT
    return classes


# WordPiece: non-ASCII and control bytes join a piece and mark it for `tokenizers`
# (BERT's normaliser drops control characters rather than cutting at them).
_WORDPIECE_CLASSES = _classes(_OTHER)
# Words: non-ASCII bytes are letters; ASCII control bytes separate.
_WORD_CLASSES = _classes(_WORD)
_WORD_CLASSES[:32] = _SEPARATOR
_WORD_CLASSES[127] = _SEPARATOR
_ASCII_LOWER = np.arange(256, dtype=np.uint8)
_ASCII_LOWER[65:91] += 32

_POLY = np.uint64(0x100000001B3)


def _powers_of_poly(size: int) -> np.ndarray:
    """_POLY ** i for i < size, wrapping mod 2**64."""
    powers = np.ones(size, dtype=np.uint64)
    step = 1
    while step < size:
        powers[step : 2 * step] = powers[: min(step, size - step)] * np.uint64(int(powers[step - 1]) * int(_POLY) % 2**64)
        step *= 2
    return powers


_powers = _powers_of_poly(1 << 12)


def _power_table(length: int) -> np.ndarray:
    global _powers
    powers = _powers
    if len(powers) < length:
        powers = _powers_of_poly(1 << int(np.ceil(np.log2(length))))
        _powers = powers
    return powers


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a polynomial hash over all 64 bits."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Pieces:
    """The pieces (words and punctuation marks) of a batch, back to back."""

    data: bytes  # the batch's UTF-8 bytes, documents joined by a newline
    starts: np.ndarray  # int64, byte position where each piece starts
    ends: np.ndarray  # int64
    keys: np.ndarray  # uint64, a hash of the piece's bytes with ASCII lowercased
    other: np.ndarray  # bool, the piece has a byte of class _OTHER
    offsets: np.ndarray  # int64 [n + 1], where each document's pieces start and end


def split_pieces(texts: Sequence[str], classes: np.ndarray = _WORDPIECE_CLASSES, lowercase: bool = False, errors: str = "strict") -> Pieces:
    """Cut a batch into pieces: runs of word (and other) bytes, and single punctuation bytes."""
    joined = "\n".join(texts)
    if lowercase:
        joined = joined.lower()
    data = joined.encode("utf-8", errors)
    if len(data) == len(joined):
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        fold = str.lower if lowercase else str
        lengths = np.fromiter((len(fold(t).encode("utf-8", errors)) for t in texts), dtype=np.int64, count=len(texts))
    doc_starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=doc_starts[1:])

    raw = np.frombuffer(data, dtype=np.uint8)
    cls = classes[raw]
    joins = (cls == _WORD) | (cls == _OTHER)
    in_piece = cls != _SEPARATOR
    glued = joins[1:] & joins[:-1]  # byte i and i + 1 belong to one run
    is_start = in_piece.copy()
    is_start[1:] &= ~glued
    is_end = in_piece.copy()
    is_end[:-1] &= ~glued
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(is_end) + 1
    lengths = ends - starts

    # Polynomial hash of each piece: sum of (byte + 1) * P**(position in piece), then mixed.
    selected = np.flatnonzero(in_piece)
    first = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    keys = np.empty(len(starts), dtype=np.uint64)
    other = np.zeros(len(starts), dtype=bool)
    if len(starts):
        within = np.arange(len(selected), dtype=np.int64) - np.repeat(first, lengths)
        powers = _power_table(int(lengths.max()))
        terms = (_ASCII_LOWER[raw[selected]].astype(np.uint64) + np.uint64(1)) * powers[within]
        keys = _mix(np.add.reduceat(terms, first) ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))
        other = np.maximum.reduceat((cls[selected] == _OTHER).view(np.uint8), first).astype(bool)
    offsets = np.searchsorted(starts, doc_starts)
    return Pieces(data, starts, ends, keys, other, offsets)


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
    """Tokenise a batch of texts with `tokenizers` alone, without special tokens.

    Returns the token ids of all documents back to back (uint32) and the offsets (int64,
    length n + 1) where each document's tokens start and end.
    """
    encodings = tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty(offsets[-1], dtype=np.uint32)
    for encoding, start, end in zip(encodings, offsets[:-1], offsets[1:]):
        ids[start:end] = encoding.ids
    return ids, offsets


def _is_bert_style(spec: dict) -> bool:
    normalizer, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (
        normalizer.get("type") == "BertNormalizer"
        and normalizer.get("clean_text", True)
        and pre.get("type") == "BertPreTokenizer"
        and model.get("type") == "WordPiece"
    )


def _interleave(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge (document indices, ids, offsets) of disjoint document subsets into one batch."""
    lengths = np.zeros(count, dtype=np.int64)
    for docs, _, offsets in parts:
        lengths[docs] = np.diff(offsets)
    merged_offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=merged_offsets[1:])
    ids = np.empty(merged_offsets[-1], dtype=np.uint32)
    for docs, part_ids, offsets in parts:
        part_lengths = np.diff(offsets)
        shift = np.repeat(merged_offsets[docs] - offsets[:-1], part_lengths)
        ids[np.arange(len(part_ids), dtype=np.int64) + shift] = part_ids
    return ids, merged_offsets


class WordPieceFrontEnd:
    """WordPiece ids equal to `tokenize(tokenizer, texts)`, with `tokenizers` called once per distinct piece."""

    name = WORDPIECE

    def __init__(self, tokenizer_json: str):
        self.tokenizer = load_tokenizer(tokenizer_json)
        spec = json.loads(tokenizer_json)
        self.cached = _is_bert_style(spec)
        self._added = [(t["content"], bool(t.get("normalized"))) for t in spec.get("added_tokens") or []]
        self._lock = threading.Lock()
        # Sorted piece keys; each piece's ids are flat[start : start + length].
        self._cache = (np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint32))

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = list(texts)
        if not self.cached:
            return tokenize(self.tokenizer, texts)
        whole = self._whole_documents(texts)
        if not whole:
            return self._tokenize_pieces(texts)
        whole_set = set(whole)
        rest = [i for i in range(len(texts)) if i not in whole_set]
        parts = []
        for docs, fn in ((whole, lambda t: tokenize(self.tokenizer, t)), (rest, self._tokenize_pieces)):
            if docs:
                ids, offsets = fn([texts[i] for i in docs])
                parts.append((np.asarray(docs, dtype=np.int64), ids, offsets))
        return _interleave(parts, len(texts))

    def _whole_documents(self, texts: list[str]) -> list[int]:
        """Documents holding an added token's text, which `tokenizers` matches before normalising."""
        joined = "\n".join(texts)
        lowered = None
        found = []
        for content, normalized in self._added:
            if normalized:
                lowered = joined.lower() if lowered is None else lowered
                if content.lower() in lowered:
                    found.append((content.lower(), True))
            elif content in joined:
                found.append((content, False))
        if not found:
            return []
        return [i for i, t in enumerate(texts) if any(c in (t.lower() if norm else t) for c, norm in found)]

    def _tokenize_pieces(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        try:
            pieces = split_pieces(texts, _WORDPIECE_CLASSES)
        except UnicodeEncodeError:
            return tokenize(self.tokenizer, texts)
        unique, first, inverse = np.unique(pieces.keys, return_index=True, return_inverse=True)
        keys, starts, lengths, flat = self._cache
        pos = np.searchsorted(keys, unique)
        known = pos < len(keys)
        known[known] = keys[pos[known]] == unique[known]
        if not known.all():
            keys, starts, lengths, flat = self._learn(pieces, unique[~known], first[~known])
            pos = np.searchsorted(keys, unique)
        piece_lengths = lengths[pos][inverse]
        piece_starts = starts[pos][inverse]
        ends = np.cumsum(piece_lengths)
        ids = flat[np.repeat(piece_starts - (ends - piece_lengths), piece_lengths) + np.arange(ends[-1] if len(ends) else 0)]
        token_ends = np.concatenate([[0], ends])
        return ids, token_ends[pieces.offsets]

    def _learn(self, pieces: Pieces, new_keys: np.ndarray, where: np.ndarray):
        words = [pieces.data[s:e].decode("utf-8") for s, e in zip(pieces.starts[where], pieces.ends[where])]
        encodings = self.tokenizer.encode_batch_fast(words, add_special_tokens=False)
        new_lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        new_ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.uint32, count=int(new_lengths.sum()))
        with self._lock:
            keys, starts, lengths, flat = self._cache
            if len(keys) + len(new_keys) > _CACHE_LIMIT:
                keys, starts, lengths, flat = (a[:0] for a in (keys, starts, lengths, flat))
            fresh = ~np.isin(new_keys, keys)  # another thread may have learnt some meanwhile
            kept_lengths = new_lengths[fresh]
            starts = np.concatenate([starts, len(flat) + np.cumsum(kept_lengths) - kept_lengths])
            flat = np.concatenate([flat, new_ids[np.repeat(fresh, new_lengths)]])
            keys = np.concatenate([keys, new_keys[fresh]])
            lengths = np.concatenate([lengths, kept_lengths])
            order = np.argsort(keys, kind="stable")
            self._cache = (keys[order], starts[order], lengths[order], flat)
            return self._cache


class WordFrontEnd:
    """Lowercased words and punctuation marks, each a 32-bit hash of its bytes."""

    name = WORDS

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        pieces = split_pieces(list(texts), _WORD_CLASSES, lowercase=True, errors="replace")
        ids = (pieces.keys >> np.uint64(32)).astype(np.uint32)
        ids[ids == np.uint32(0xFFFFFFFF)] = 0xFFFFFFFE  # the all-ones id pads n-gram rows
        return ids, pieces.offsets


def make_front_end(name: str, tokenizer_json: str) -> WordPieceFrontEnd | WordFrontEnd:
    if name == WORDPIECE:
        return WordPieceFrontEnd(tokenizer_json)
    if name == WORDS:
        return WordFrontEnd()
    raise ArtifactError(f"unknown front end {name!r}; expected one of {FRONT_ENDS}")
