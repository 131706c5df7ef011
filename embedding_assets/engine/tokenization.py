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

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from tokenizers import Tokenizer

from embedding_assets.engine.errors import ArtifactError
from embedding_assets.engine.hashtable import GOLDEN, KeyTable

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


@dataclass(frozen=True)
class Pieces:
    """The pieces (words and punctuation marks) of a batch, back to back."""

    data: bytes  # the batch's UTF-8 bytes, documents joined by a newline
    starts: np.ndarray  # int64, byte position where each piece starts
    ends: np.ndarray  # int64
    keys: np.ndarray  # uint64, a hash of the piece's bytes with ASCII lowercased
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
    starts, ends, keys = _split(np.frombuffer(data, dtype=np.uint8), classes, _ASCII_LOWER)
    return Pieces(data, starts, ends, keys, np.searchsorted(starts, doc_starts))


@numba.njit(nogil=True, cache=True)
def _split(raw, classes, lower):
    """One pass over the bytes: each piece's span, and its key: splitmix64's finaliser applied
    to (sum of (byte + 1) * P**position) xor (length * golden ratio), bytes ASCII-lowercased."""
    starts = np.empty(len(raw), dtype=np.int64)
    ends = np.empty(len(raw), dtype=np.int64)
    keys = np.empty(len(raw), dtype=np.uint64)
    count = 0
    i = 0
    while i < len(raw):
        kind = classes[raw[i]]
        if kind == _SEPARATOR:
            i += 1
            continue
        start = i
        total = np.uint64(lower[raw[i]]) + np.uint64(1)
        power = np.uint64(1)
        i += 1
        if kind != _PUNCT:
            while i < len(raw) and (classes[raw[i]] == _WORD or classes[raw[i]] == _OTHER):
                power *= _POLY
                total += (np.uint64(lower[raw[i]]) + np.uint64(1)) * power
                i += 1
        z = total ^ (np.uint64(i - start) * GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        starts[count], ends[count], keys[count] = start, i, z ^ (z >> np.uint64(31))
        count += 1
    return starts[:count], ends[:count], keys[:count]


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    """Build a tokenizer from the text of a `tokenizer.json`, with truncation and padding off.

    Tokenizer files exported for transformers often carry a fixed truncation and padding
    length; for lexical features every token of every document counts, and pads must not.
    """
    return Tokenizer.from_str(json.dumps(_untruncated_spec(tokenizer_json)))


def _untruncated_spec(tokenizer_json: str) -> dict:
    try:
        spec = json.loads(tokenizer_json)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"tokenizer is not valid JSON: {exc}") from exc
    spec["truncation"] = None
    spec["padding"] = None
    return spec


def tokenizer_sha256(tokenizer_json: str) -> str:
    """A content hash of what the tokenizer does: its JSON, keys sorted, truncation and padding
    left out (as `load_tokenizer` drops them), so the same vocabulary and rules hash the same."""
    canonical = json.dumps(_untruncated_spec(tokenizer_json), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
        self._cache = _PieceCache.empty()

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
        cache = self._cache
        entries = cache.table.lookup(pieces.keys)
        missing = np.flatnonzero(entries < 0)
        if len(missing):
            new_keys, first = np.unique(pieces.keys[missing], return_index=True)
            cache = self._learn(pieces, new_keys, missing[first])
            entries = cache.table.lookup(pieces.keys)
        return _expand(entries, cache.starts, cache.lengths, cache.flat, pieces.offsets)

    def _learn(self, pieces: Pieces, new_keys: np.ndarray, where: np.ndarray) -> _PieceCache:
        words = [pieces.data[s:e].decode("utf-8") for s, e in zip(pieces.starts[where], pieces.ends[where])]
        encodings = self.tokenizer.encode_batch_fast(words, add_special_tokens=False)
        new_lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        new_ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.uint32, count=int(new_lengths.sum()))
        with self._lock:
            cache = self._cache
            if len(cache.keys) + len(new_keys) > _CACHE_LIMIT:
                cache = _PieceCache.empty()
            fresh = cache.table.lookup(new_keys) < 0  # another thread may have learnt some meanwhile
            kept_lengths = new_lengths[fresh]
            keys = np.concatenate([cache.keys, new_keys[fresh]])
            self._cache = _PieceCache(
                keys,
                KeyTable(keys),
                np.concatenate([cache.starts, len(cache.flat) + np.cumsum(kept_lengths) - kept_lengths]),
                np.concatenate([cache.lengths, kept_lengths]),
                np.concatenate([cache.flat, new_ids[np.repeat(fresh, new_lengths)]]),
            )
            return self._cache


@dataclass(frozen=True)
class _PieceCache:
    """Token ids of pieces already seen: piece i (key keys[i]) is flat[starts[i] : starts[i] + lengths[i]].

    A new batch of pieces replaces the whole object, so a thread reading an older one is never disturbed.
    """

    keys: np.ndarray  # uint64
    table: KeyTable  # key -> i
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    flat: np.ndarray  # uint32

    @classmethod
    def empty(cls) -> _PieceCache:
        keys = np.empty(0, np.uint64)
        return cls(keys, KeyTable(keys), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint32))


@numba.njit(nogil=True, cache=True)
def _expand(entries, starts, lengths, flat, piece_offsets):
    """The token ids of a batch from its pieces' cache entries, and where each document's tokens start."""
    total = 0
    for e in entries:
        total += lengths[e]
    ids = np.empty(total, dtype=np.uint32)
    piece_token_starts = np.empty(len(entries) + 1, dtype=np.int64)
    at = 0
    for p, e in enumerate(entries):
        piece_token_starts[p] = at
        ids[at : at + lengths[e]] = flat[starts[e] : starts[e] + lengths[e]]
        at += lengths[e]
    piece_token_starts[len(entries)] = at
    return ids, piece_token_starts[piece_offsets]


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
