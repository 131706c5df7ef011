"""The engine's maths against direct formulas on small inputs."""

import itertools
import os
import math

import numpy as np
import pytest
import torch

from embedding_assets.engine import ArtifactError, LexicalEmbedder
from embedding_assets.engine.distill import DistillConfig, StudentModule, csr_batch, distill, gram_kl_loss
from embedding_assets.engine.features import Features, build_features
from embedding_assets.engine.network import forward, init_layers
from embedding_assets.engine.hashtable import KeyTable
from embedding_assets.engine.first_layer import first_layer_sums, unigram_entries
from embedding_assets.engine.ngrams import PAD, NgramCounter, lookup, ngram_keys, ngram_windows, prefix_keys
from embedding_assets.engine.quantization import dequantize_uint8, quantize_uint8
from embedding_assets.engine.tfidf import Vocabulary
from embedding_assets.engine.tokenization import WordFrontEnd, WordPieceFrontEnd, load_tokenizer, tokenize


def reference_ngrams(docs: list[list[int]], max_n: int) -> list[tuple[int, tuple[int, ...]]]:
    return [(d, tuple(doc[i : i + n])) for d, doc in enumerate(docs) for n in range(1, max_n + 1) for i in range(len(doc) - n + 1)]


def reference_key(tokens: tuple[int, ...]) -> int:
    h = 14695981039346656037
    for t in tokens:
        h = ((h ^ t) * 1099511628211) % 2**64
    return h


def flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(list(itertools.chain.from_iterable(docs)), dtype=np.uint32)
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    return ids, offsets


def test_ngram_windows_match_direct_enumeration():
    docs = [[5, 6, 7, 8], [], [9], [5, 6, 5, 6, 5, 6, 1, 2, 3]]
    windows = ngram_windows(*flat(docs), max_n=3)
    expected = sorted((d, reference_key(g)) for d, g in reference_ngrams(docs, 3))
    assert sorted(zip(windows.docs.tolist(), windows.keys.tolist())) == expected


def test_ngram_keys_of_padded_rows_equal_window_keys():
    grams = [(5,), (5, 6), (5, 6, 7)]
    rows = np.full((3, 3), PAD, dtype=np.uint32)
    for i, g in enumerate(grams):
        rows[i, : len(g)] = g
    assert ngram_keys(rows).tolist() == [reference_key(g) for g in grams]


def test_key_table_agrees_with_binary_search():
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 2**63, size=5000, dtype=np.uint64))
    # Keys that all aim at one slot force long probe chains.
    crowded = np.arange(1, 65, dtype=np.uint64) << np.uint64(60)
    keys = np.unique(np.concatenate([keys, crowded, [np.uint64(0)]]))
    table = KeyTable(keys)
    queries = np.concatenate([keys, rng.integers(0, 2**63, size=5000, dtype=np.uint64), crowded + np.uint64(1)])
    pos, found = lookup(keys, queries)
    assert np.array_equal(table.lookup(queries), np.where(found, pos, -1))


def test_first_layer_kernel_sums_count_times_idf_times_row_of_every_known_ngram():
    # The last document has more distinct n-grams than the kernel sums at once.
    docs = [[5, 6, 7, 8], [], [9], [5, 6, 5, 6, 5, 6, 1, 2, 3], [6, 5], [4, 4, 4], list(range(10, 30)) + [10, 11, 10]]
    known = [(5,), (6,), (5, 6), (6, 5, 6), (1, 2, 3), (9,)] + [(t,) for t in range(10, 30)] + [(10, 11)]
    keys = np.array([reference_key(g) for g in known], dtype=np.uint64)
    padded = np.array([list(g) + [PAD] * (3 - len(g)) for g in known], dtype=np.uint32)
    rng = np.random.default_rng(0)
    idf = rng.uniform(1, 3, len(known)).astype(np.float32)
    rows = rng.normal(size=(len(known), 7)).astype(np.float32)
    table = KeyTable(keys, prefix_keys(padded))  # (6, 5) is a prefix only: looked up, never counted
    assert table.lookup(np.array([reference_key((6, 5))], dtype=np.uint64)).tolist() == [-1]
    got = first_layer_sums(*flat(docs), table, 3, idf, rows)
    for d, doc in enumerate(docs):
        grams = [g for dd, g in reference_ngrams(docs, 3) if dd == d and g in known]
        expected = sum((idf[known.index(g)] * rows[known.index(g)] for g in grams), np.zeros(7))
        np.testing.assert_allclose(got[d], expected, rtol=1e-5, atol=1e-6)
    assert not got[1].any() and not got[5].any()
    # Single tokens below 20 answered from the array, the rest from the table: the same sums.
    np.testing.assert_allclose(first_layer_sums(*flat(docs), table, 3, idf, rows, unigram_entries(table, 20)), got, rtol=1e-6, atol=1e-7)


def test_counter_is_exact_with_room_and_bounded_without():
    rng = np.random.default_rng(0)
    docs = [rng.zipf(1.5, size=rng.integers(1, 40)).clip(max=500).tolist() for _ in range(300)]
    true_df: dict[tuple, int] = {}
    for d, gram in set(reference_ngrams(docs, 2)):
        true_df[gram] = true_df.get(gram, 0) + 1

    exact = NgramCounter(capacity=10**6, max_n=2)
    bounded = NgramCounter(capacity=200, max_n=2)
    for start in range(0, len(docs), 50):
        exact.update(*flat(docs[start : start + 50]))
        bounded.update(*flat(docs[start : start + 50]))

    def as_dict(counter):
        grams = [tuple(int(t) for t in row if t != PAD) for row in counter.ngrams]
        return dict(zip(grams, zip(counter.counts.tolist(), counter.errors.tolist())))

    assert {g: c for g, (c, _) in as_dict(exact).items()} == true_df
    approx = as_dict(bounded)
    assert len(approx) == 200
    for gram, (count, error) in approx.items():
        assert count - error <= true_df[gram] <= count  # the space-saving guarantee
    top10 = sorted(true_df, key=lambda g: -true_df[g])[:10]
    assert set(top10) <= set(approx)


def test_tfidf_rows_match_the_direct_formula(tokenizer_json):
    texts = ["the socket sends the data", "the data is sent twice: data, data", "a socket"]
    feats = build_features(tokenizer_json, ["a", "b", "c"], [texts], vocabulary_size=1000, max_ngram_length=2, min_document_frequency=1, counter_capacity=10_000)
    tok = load_tokenizer(tokenizer_json)
    docs = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    grams = sorted({g for _, g in reference_ngrams(docs, 2)})
    df = {g: sum(g in {x for _, x in reference_ngrams([doc], 2)} for doc in docs) for g in grams}
    vocab_keys = feats.vocabulary.keys.tolist()
    assert sorted(vocab_keys) == sorted(reference_key(g) for g in grams)
    dense = feats.tfidf.toarray()
    for row, doc in enumerate(docs):
        counts: dict[tuple, int] = {}
        for _, g in reference_ngrams([doc], 2):
            counts[g] = counts.get(g, 0) + 1
        expected = {g: c * (math.log((1 + 3) / (1 + df[g])) + 1) for g, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in expected.values()))
        for g, v in expected.items():
            assert dense[row, vocab_keys.index(reference_key(g))] == pytest.approx(v / norm, rel=1e-5)
        assert np.linalg.norm(dense[row]) == pytest.approx(1.0, abs=1e-6)


def test_tokenizer_ignores_baked_in_truncation_and_padding(tokenizer_json):
    long_text = "word " * 400
    ids, offsets = tokenize(load_tokenizer(tokenizer_json), [long_text, "hi"])
    assert offsets.tolist() == [0, 400, 401]
    assert 0 not in ids.tolist()  # no [PAD]


def reference_gram_kl(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    n = len(student)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        s = np.array([student[i] @ student[j] for j in others]) / tau
        t = np.array([teacher[i] @ teacher[j] for j in others]) / tau
        p = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
        log_q = s - s.max() - np.log(np.exp(s - s.max()).sum())
        total += float(np.sum(p * (np.log(p) - log_q)))
    return tau**2 * total / n


def test_gram_kl_loss_matches_hand_written_reference():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(7, 5))
    t = rng.normal(size=(7, 9))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    for tau in (0.5, 3.0):
        loss = gram_kl_loss(torch.tensor(s), torch.tensor(t), tau).item()
        assert loss == pytest.approx(reference_gram_kl(s, t, tau), rel=1e-9)
    assert gram_kl_loss(torch.tensor(t), torch.tensor(t), 3.0).item() == pytest.approx(0.0, abs=1e-12)


def test_quantization_round_trip_error_is_within_half_a_bin():
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.3, 0.3, size=(1000, 16)).astype(np.float32)
    limit = 0.3
    q = quantize_uint8(x, limit)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    assert np.abs(dequantize_uint8(q, limit) - x).max() <= limit / 255 + 1e-6
    assert dequantize_uint8(quantize_uint8(np.array([[5.0, -5.0]]), limit), limit)[0].tolist() == pytest.approx([limit, -limit])


@pytest.fixture(scope="module")
def small_model(tokenizer_json, sample_texts):
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 3, 2, 100_000)
    layers = init_layers([feats.vocabulary.size, 32, 16], seed=3)
    fallback = np.ones(16, np.float32) / 4.0
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, layers, fallback, 0.4, {"note": "test"}), feats, texts


def test_encode_gives_unit_rows_even_for_empty_and_unknown_text(small_model):
    model, _, texts = small_model
    out = model.encode(texts[:50] + ["", "   ", "\u200b\u200b", "ζζζ"])
    assert out.dtype == np.float32 and out.shape == (54, 16)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.allclose(out[50], model.fallback)


def test_inference_path_equals_training_module(small_model):
    model, feats, texts = small_model
    module = StudentModule(model.layers)
    with torch.no_grad():
        trained_path = module(*csr_batch(model.tfidf(texts), torch.device("cpu"))).numpy()
    fast_path = forward(model.tfidf(texts), model.layers)
    assert np.abs(trained_path - fast_path).max() < 1e-5


def test_fast_encode_equals_the_tfidf_network_on_any_threads(small_model, sample_texts):
    model, _, _ = small_model
    texts = sample_texts[400:1400] + [" ".join(sample_texts[:300]), "", "zzzz"]
    reference = forward(model.tfidf(texts), model.layers)
    reference[~np.any(reference, axis=1)] = model.fallback
    for threads, batch in [(1, 4096), (2, 4096), (2, 100), (3, 37)]:
        assert np.abs(model.encode(texts, batch_size=batch, threads=threads) - reference).max() < 1e-5


def test_float16_first_layer_encodes_as_its_float32_values_and_halves_the_file(small_model, sample_texts, tmp_path):
    model, _, _ = small_model
    half = LexicalEmbedder(model.tokenizer_json, model.vocabulary, model.layers, model.fallback, 0.4, first_layer_dtype="float16")
    texts = sample_texts[400:1400] + [" ".join(sample_texts[:300]), "", "zzzz"]
    reference = forward(half.tfidf(texts), half.layers)
    reference[~np.any(reference, axis=1)] = half.fallback
    with torch.no_grad():
        trained_path = StudentModule(half.layers)(*csr_batch(half.tfidf(texts[:200]), torch.device("cpu"))).numpy()
    out = half.encode(texts, threads=2)
    assert np.abs(out - reference).max() < 1e-5
    assert np.abs(out[:200] - np.where(np.any(trained_path, axis=1, keepdims=True), trained_path, half.fallback)).max() < 1e-5
    assert np.einsum("ij,ij->i", out, model.encode(texts)).min() > 0.9999  # rounding moves embeddings by ~1e-4 at most

    model.save(tmp_path / "full.safetensors")
    half.save(tmp_path / "half.safetensors")
    first_layer_bytes = model.layers[0].nbytes
    assert (tmp_path / "full.safetensors").stat().st_size - (tmp_path / "half.safetensors").stat().st_size >= first_layer_bytes // 2
    loaded = LexicalEmbedder.load(tmp_path / "half.safetensors")
    assert loaded.first_layer_dtype == "float16" and loaded.version == half.version != model.version
    assert np.array_equal(loaded.encode(texts), out)


def test_artifact_round_trip_encodes_identically(small_model, tmp_path):
    model, _, texts = small_model
    model.save(tmp_path / "m.safetensors")
    loaded = LexicalEmbedder.load(tmp_path / "m.safetensors")
    assert loaded.version == model.version
    assert np.array_equal(loaded.encode(texts), model.encode(texts))
    assert loaded.provenance == {"note": "test"}


def test_artifact_rejects_tampering_wrong_shapes_and_pickles(small_model, tmp_path):
    import pickle  # only to build a hostile file; the engine never unpickles

    from embedding_assets.engine import artifact

    model, _, _ = small_model
    data = bytearray(model.to_bytes())
    data[-3] ^= 0xFF
    with pytest.raises(ArtifactError, match="content hash"):
        LexicalEmbedder.from_bytes(bytes(data))

    tensors = model._tensors()
    tensors["layers.1"] = np.zeros((5, 16), np.float32)
    with pytest.raises(ArtifactError, match="layers.1.*shape"):
        LexicalEmbedder.from_bytes(artifact.dump(model._config(), tensors))

    del tensors["layers.1"]
    with pytest.raises(ArtifactError, match="'layers.1' is missing"):
        LexicalEmbedder.from_bytes(artifact.dump(model._config(), tensors))

    newer = bytearray(model.to_bytes())
    marker = b'\\"format_version\\": 1'
    assert marker in newer
    newer = bytes(newer).replace(marker, b'\\"format_version\\": 9')
    with pytest.raises(ArtifactError, match="newer"):
        LexicalEmbedder.from_bytes(newer)

    hostile = tmp_path / "model.safetensors"
    hostile.write_bytes(pickle.dumps({"layers": [1, 2]}))
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        LexicalEmbedder.load(hostile)


def test_distillation_learns_and_is_deterministic(small_model):
    model, feats, _ = small_model
    rng = np.random.default_rng(4)
    teacher = forward(feats.tfidf, init_layers([feats.vocabulary.size, 24], seed=9))  # a target the student can reach
    # From noise and with the Gram-KL term alone, so the loss has all its way to go.
    config = DistillConfig(hidden_dims=(32,), output_dim=24, epochs=15, batch_size=64, seed=5, init="random", cosine_weight=0.0)
    layers_a, history = distill(feats.tfidf, teacher, config)
    layers_b, _ = distill(feats.tfidf, teacher, config)
    assert all(np.array_equal(a, b) for a, b in zip(layers_a, layers_b))
    assert history.epoch_loss[-1] < 0.5 * history.epoch_loss[0]
    del rng


TRICKY_TEXTS = [
    "", " ", "see [MASK] and [mask] here", "ab\x01cd x\x0by \x7fz", "café naïve Ünïcödé ΣΑΣ İstanbul",
    "中文字符 mixed日本語text", "a\u00a0b\u2009c\u200bd", "x" * 150 + " ok", "tab\there\r\nnew line",
    "émoji 🎉🎉 done", "\x00zero", "don't-stop.now(1, 2)", "—dash— e\u0301 combining",
]


def test_wordpiece_front_end_gives_the_tokenizers_ids(tokenizer_json, sample_texts):
    front_end = WordPieceFrontEnd(tokenizer_json)
    assert front_end.cached
    tokenizer = load_tokenizer(tokenizer_json)
    # Three batches: the piece cache is filled by the first and reused, and grown, by the others.
    for batch in (sample_texts[:700], TRICKY_TEXTS + sample_texts[700:1400], sample_texts[:50] + TRICKY_TEXTS[::-1]):
        ids, offsets = front_end.tokenize(batch)
        expected_ids, expected_offsets = tokenize(tokenizer, batch)
        assert np.array_equal(offsets, expected_offsets)
        assert np.array_equal(ids, expected_ids)


def test_word_front_end_splits_lowercased_words_and_punctuation():
    ids, offsets = WordFrontEnd().tokenize(["Socket.recv(SOCKET)", "", "  socket  ÉTÉ été\n"])
    docs = [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    assert [len(d) for d in docs] == [6, 0, 3]
    socket, dot, recv, open_, socket_again, close = docs[0]
    assert socket == socket_again == docs[2][0]
    assert len({socket, dot, recv, open_, close}) == 5
    assert docs[2][1] == docs[2][2]  # Unicode lowercasing
    assert ids.dtype == np.uint32 and np.all(ids != PAD)


@pytest.fixture(scope="module")
def word_model(tokenizer_json, sample_texts):
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 20_000, 2, 2, 100_000, front_end="words")
    layers = init_layers([feats.vocabulary.size, 32, 16], seed=3)
    return LexicalEmbedder(tokenizer_json, feats.vocabulary, layers, np.ones(16, np.float32) / 4.0, 0.4), feats, texts


def test_word_mode_round_trips_and_its_fast_path_equals_the_training_module(word_model, tmp_path, sample_texts):
    model, feats, texts = word_model
    assert feats.vocabulary.front_end == "words"
    assert Features.from_bytes(feats.to_bytes()).vocabulary.front_end == "words"
    model.save(tmp_path / "words.safetensors")
    loaded = LexicalEmbedder.load(tmp_path / "words.safetensors")
    assert loaded.vocabulary.front_end == "words" and loaded.version == model.version
    probe = sample_texts[400:900] + TRICKY_TEXTS
    assert np.array_equal(loaded.encode(probe), model.encode(probe))

    module = StudentModule(model.layers)
    with torch.no_grad():
        trained_path = module(*csr_batch(model.tfidf(probe), torch.device("cpu"))).numpy()
    reference = forward(model.tfidf(probe), model.layers)
    assert np.abs(trained_path - reference).max() < 1e-5
    reference[~np.any(reference, axis=1)] = model.fallback
    assert np.abs(model.encode(probe, batch_size=128, threads=2) - reference).max() < 1e-5
    # A word-mode model and a WordPiece one over the same texts see different n-grams.
    assert model.version != LexicalEmbedder(model.tokenizer_json, Vocabulary(feats.vocabulary.ngrams, feats.vocabulary.idf), model.layers, model.fallback, 0.4).version


def test_luxical_export_refuses_the_word_mode(word_model, tmp_path):
    model, _, _ = word_model
    with pytest.raises(ArtifactError, match="WordPiece"):
        model.to_luxical(tmp_path / "words.npz")
    assert not (tmp_path / "words.npz").exists()


def test_a_teacher_saved_in_fp16_is_held_in_fp32_and_embeds_like_the_original(tmp_path, sample_texts):
    """The compute precision is the Compute setting's, not the checkpoint's: an fp16 copy loads as float32 on a CPU."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from embedding_assets.engine.teacher import default_teacher_dir, embed_with_token_sums, load_teacher

    original = default_teacher_dir()
    half = tmp_path / "teacher-fp16"
    shutil.copytree(original, half, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(original / "model.safetensors")
    save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}, half / "model.safetensors")

    texts = sample_texts[:16]
    model = load_teacher(str(half), "cpu", max_seq_length=128)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    vectors, sums = embed_with_token_sums(model, texts, "cpu", "fp16", batch_size=8, normalize=True)
    reference, reference_sums = embed_with_token_sums(load_teacher(str(original), "cpu", max_seq_length=128), texts, "cpu", "fp16", 8, True)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.999  # fp16 rounding of the weights only
    assert np.array_equal(sums.ids, reference_sums.ids)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_an_atomic_write_leaves_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    from embedding_assets.engine.storage import write_bytes_atomic

    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "out" / "file.bin", b"data")
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "file.bin").stat().st_mode & 0o777 == mode
