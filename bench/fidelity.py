"""Distillation fidelity: our student against luxical's own recipe, the teacher and plain TF-IDF.

    python -m bench.fidelity [--corpus sample python-docs kernel-docs] [--ablations]

Three real corpora, no download: the built-in sample (stdlib docstrings, labelled by
package), the prose paragraphs of the Python manual from Debian's `python3-doc` (labelled by
the manual's part: library, reference, c-api, howto, ...), and those of the Linux kernel's
documentation from Debian's `linux-doc` (about 60k, labelled by its top directory:
admin-guide, networking, driver-api, ...). Each is split once, by a seed, into training
documents and 2,000 held-out documents. One teacher pass per corpus gives the vectors of
every document and the sums of its contextual token vectors over the training documents
(the first layer's prior); both are cached on disk, keyed by the teacher's identity and the texts.

On the held-out documents, every system is compared with the teacher: neighbour recall@10,
Spearman of cosines over 20k random pairs, and linear-probe accuracy on the labels. Our
student is trained by `engine.training.train_student`, the function `distilled_model` calls.
luxical 1.1.2 is trained by its own recipe (its vocabulary builder, initialisation, AdamW
with one beta, warmup-stable-decay schedule and Gram-KL loss at tau 3) on the same
documents, teacher vectors and step budget.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.corpora import kernel_docs_files, python_docs_files, read_source, sample_labels  # noqa: E402
from embedding_assets.engine import LexicalEmbedder  # noqa: E402
from embedding_assets.engine.config import DistillConfig  # noqa: E402
from embedding_assets.engine.evaluation import (  # noqa: E402
    cosine_spearman,
    hybrid_probe_accuracy,
    neighbour_recall,
    probe_accuracy,
    probe_labels,
    tfidf_probe_accuracy,
)
from embedding_assets.engine.features import Features, build_features  # noqa: E402
from embedding_assets.engine.network import init_layers  # noqa: E402
from embedding_assets.engine.prior import TokenSums  # noqa: E402
from embedding_assets.engine.tfidf import count_matrix, tfidf_rows  # noqa: E402
from embedding_assets.engine.tokenization import make_front_end  # noqa: E402
from embedding_assets.engine.training import train_student  # noqa: E402
from embedding_assets.resources.teacher import Teacher  # noqa: E402

HELD_OUT = 2_000
PYTHON_DOCS_LIMIT = 24_000
KERNEL_DOCS_LIMIT = 62_000
CORPORA = ["sample", "python-docs", "kernel-docs"]
CACHE_DIR = Path(os.environ.get("EMBEDDING_ASSETS_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Corpus:
    name: str
    texts: list[str]
    labels: list[str]
    heldout: np.ndarray  # bool mask

    @property
    def train(self) -> np.ndarray:
        return ~self.heldout


def split(n: int, seed: int = 0) -> np.ndarray:
    heldout = np.zeros(n, dtype=bool)
    heldout[np.random.default_rng(seed).permutation(n)[: min(HELD_OUT, n // 5)]] = True
    return heldout


def sample_corpus() -> Corpus:
    texts, labels = sample_labels()
    return Corpus("sample", texts, labels, split(len(texts)))


def manual_corpus(name: str, files: list[Path], root: str, min_words: int, limit: int, markup: tuple[str, ...] = ()) -> Corpus | None:
    """Prose paragraphs (not code, not directives) of a reStructuredText manual, labelled by its top directory."""
    if not files:
        return None
    seen, texts, labels = set(), [], []
    for path in files:
        rel = path.as_posix().split(root, 1)[1]
        part = rel.split("/", 1)[0] if "/" in rel else "top"
        for paragraph in read_source(path).split("\n\n"):
            text = " ".join(paragraph.split())
            if len(text.split()) < min_words or text.startswith(("..", ">>>", "$ ", *markup)) or paragraph.startswith(("    ", "\t")) or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(part)
    order = np.sort(np.random.default_rng(0).permutation(len(texts))[:limit])
    texts, labels = [texts[i] for i in order], [labels[i] for i in order]
    return Corpus(name, texts, labels, split(len(texts)))


def python_docs_corpus() -> Corpus | None:
    return manual_corpus("python-docs", python_docs_files(), "/_sources/", min_words=20, limit=PYTHON_DOCS_LIMIT)


def kernel_docs_corpus() -> Corpus | None:
    # Eight words keeps about 60k paragraphs; tables and rules are not prose.
    return manual_corpus("kernel-docs", kernel_docs_files(), "/Documentation/", min_words=8, limit=KERNEL_DOCS_LIMIT,
                         markup=("::", "|", "+-", "==", "--", "#"))


def cache_path(kind: str, corpus: Corpus, texts: list[str], teacher: Teacher, suffix: str) -> Path:
    digest = hashlib.sha256(json.dumps(teacher.identity(), sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return CACHE_DIR / f"{kind}-{corpus.name}-{digest.hexdigest()[:16]}{suffix}"


def write_atomically(path: Path, data: bytes) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def teacher_pass(corpus: Corpus, teacher: Teacher) -> tuple[np.ndarray, TokenSums]:
    """The teacher's L2-normalised vectors of every document, and the sums of its contextual token
    vectors over the training documents, from one pass; both cached by teacher identity and texts."""
    vectors_path = cache_path("teacher", corpus, corpus.texts, teacher, ".npy")
    sums_path = cache_path("token-sums", corpus, [corpus.texts[i] for i in np.flatnonzero(corpus.train)], teacher, ".safetensors")
    if vectors_path.exists() and sums_path.exists():
        return np.load(vectors_path, allow_pickle=False), TokenSums.from_bytes(sums_path.read_bytes())
    log(f"{corpus.name}: embedding {len(corpus.texts)} documents with the teacher (cached at {vectors_path})")
    model = teacher.load("cpu")
    started, vectors, parts = time.perf_counter(), [], []
    for start in range(0, len(corpus.texts), 1024):
        batch_vectors, sums = teacher.embed_with_token_sums(model, corpus.texts[start : start + 1024], "cpu", "fp32", corpus.train[start : start + 1024])
        vectors.append(batch_vectors)
        parts.append(sums)
        done = start + len(batch_vectors)
        log(f"  teacher {done}/{len(corpus.texts)}, {done / (time.perf_counter() - started):.1f} docs/s")
    vectors = np.concatenate(vectors)
    sums = TokenSums.merge(parts, vectors.shape[1])
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    write_atomically(vectors_path, buffer.getvalue())
    write_atomically(sums_path, sums.to_bytes())
    return vectors, sums


PROBE_LABELS = 20
PROBE_TRAIN = 6_000


@dataclass(frozen=True)
class Recipe:
    """One way of building a student: the lexical features and the training config."""

    vocabulary_size: int = 200_000
    max_ngram_length: int = 5
    min_document_frequency: int = 2
    front_end: str = "wordpiece"
    distill: DistillConfig = field(default_factory=DistillConfig)


def fidelity(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    return {"recall_at_10": neighbour_recall(student, teacher, k=10), "spearman": cosine_spearman(student, teacher)}


class Probe:
    """Logistic-regression probes on the top labels, fitted on a fixed random draw of the training documents.

    A draw, not the first rows: the corpora are in file order, so their first rows hold a few labels only.
    """

    def __init__(self, corpus: Corpus):
        labels = probe_labels(corpus.labels, PROBE_LABELS)
        train = np.flatnonzero(corpus.train)
        self.train_rows = np.sort(np.random.default_rng(0).choice(train, min(PROBE_TRAIN, len(train)), replace=False))
        self.train_y, self.test_y = labels[self.train_rows], labels[corpus.heldout]

    def __call__(self, train_x: np.ndarray, test_x: np.ndarray) -> float:
        return probe_accuracy(train_x, self.train_y, test_x, self.test_y)


def train_ours(corpus: Corpus, teacher: np.ndarray, recipe: Recipe, tokenizer_json: str, sums: TokenSums | None = None,
               features: Features | None = None) -> tuple[LexicalEmbedder, dict]:
    """Our student, trained by `train_student` (the call `distilled_model` makes) at the recipe's settings.

    The vocabulary is built from the training documents; the held-out ones are only encoded with it.
    `features` (rows in corpus order) replaces that, e.g. with the features the pipeline built.
    """
    started = time.perf_counter()
    if features is None:
        texts = [corpus.texts[i] for i in np.flatnonzero(corpus.train)]
        feats = build_features(
            tokenizer_json, [str(i) for i in range(len(texts))], [texts[i : i + 4096] for i in range(0, len(texts), 4096)],
            vocabulary_size=recipe.vocabulary_size, max_ngram_length=recipe.max_ngram_length,
            min_document_frequency=recipe.min_document_frequency, counter_capacity=2_000_000, front_end=recipe.front_end,
        )
        front_end = make_front_end(feats.vocabulary.front_end, tokenizer_json)
        features = replace(feats, tfidf=tfidf_rows(count_matrix(front_end, feats.vocabulary, corpus.texts), feats.vocabulary.idf),
                           ids=[str(i) for i in range(len(corpus.texts))])
    features_seconds = time.perf_counter() - started
    embedder, report = train_student(features, teacher, recipe.distill, texts=corpus.texts, heldout=corpus.heldout, token_sums=sums)
    return embedder, {
        "vocabulary": features.vocabulary.size,
        "steps": report.steps,
        "batch_size": recipe.distill.batch_size,
        "features_seconds": round(features_seconds, 1),
        "training_seconds": round(report.seconds, 1),
        "recall_per_epoch": [round(e["recall_at_10"], 4) for e in report.epoch_eval if e],
    }


def train_luxical(corpus: Corpus, teacher: np.ndarray, tokenizer_json: str, steps: int = 290, batch_size: int = 2048,
                  vocabulary_size: int = 520_000, dims: tuple[int, ...] = (256, 256, 384), temperature: float = 3.0,
                  learning_rate: float = 1e-3, seed: int = 0):
    """luxical 1.1.2 trained by its own parts: space-saving n-gram summary, its initialisation,
    equal-beta AdamW, its warmup-stable-decay schedule and its Gram-KL loss."""
    import pyarrow as pa
    import torch
    from luxical.embedder import initialize_embedder_from_ngram_summary
    from luxical.ngrams import space_saving_ngram_summary
    from luxical.sparse_to_dense_neural_nets import SparseToDenseEmbedder
    from luxical.tokenization import ArrowTokenizer
    from luxical.training import batch_index_generator, contrastive_distillation_loss, equal_beta_adamw, wsd_lr_schedule

    spec = json.loads(tokenizer_json)
    spec["truncation"], spec["padding"] = None, None
    tokenizer = ArrowTokenizer(json.dumps(spec))
    texts = [corpus.texts[i] for i in np.flatnonzero(corpus.train)]
    started = time.perf_counter()
    tokens = tokenizer.tokenize(pa.array(texts), add_special_tokens=False).to_numpy(zero_copy_only=False)
    summary = space_saving_ngram_summary(tokens, max_ngram_length=5, num_top_items=4 * vocabulary_size)
    model = initialize_embedder_from_ngram_summary(summary, tokenizer, list(dims), min_ngram_count_multiple=1.0,
                                                   max_vocabulary_size=vocabulary_size, embedder_init_seed=seed)
    tfidf = model.tfidf_from_bow(model.bow_from_texts(texts)).astype(np.float32)
    module = model.bow_to_dense_embedder.to_torch()
    optimizer = equal_beta_adamw(module.parameters(), lr=learning_rate)
    warmup, decay = max(1, steps // 20), steps // 5
    target = torch.from_numpy(np.ascontiguousarray(teacher[corpus.train], dtype=np.float32))
    trained = time.perf_counter()
    for step, rows in enumerate(batch_index_generator(len(texts), steps, batch_size, seed=seed)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * wsd_lr_schedule(step, steps, warmup, decay)
        batch = tfidf[np.sort(rows)]
        x = torch.sparse_csr_tensor(torch.from_numpy(batch.indptr.astype(np.int64)), torch.from_numpy(batch.indices.astype(np.int64)),
                                    torch.from_numpy(batch.data), size=batch.shape)
        loss = contrastive_distillation_loss(module(x), target[np.sort(rows)], temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model = model.replace_sparse_to_dense_embedder(SparseToDenseEmbedder.from_torch(module))
    return model, {"vocabulary": int(model.recognized_ngrams.shape[0]), "steps": steps, "batch_size": batch_size,
                   "features_seconds": round(trained - started, 1), "training_seconds": round(time.perf_counter() - trained, 1)}


def evaluate(corpus: Corpus, teacher: np.ndarray, recipe: Recipe, tokenizer_json: str, sums: TokenSums | None, luxical: bool = True) -> list[dict]:
    """One row per system: fidelity to the teacher and probe accuracy on held-out documents."""
    probe = Probe(corpus)
    heldout_texts = [corpus.texts[i] for i in np.flatnonzero(corpus.heldout)]
    probe_texts = [corpus.texts[i] for i in probe.train_rows]
    teacher_heldout = teacher[corpus.heldout]
    rows = [{"system": "teacher", "recall_at_10": 1.0, "spearman": 1.0, "probe": probe(teacher[probe.train_rows], teacher_heldout)}]

    ours, info = train_ours(corpus, teacher, recipe, tokenizer_json, sums)
    ours_train, ours_heldout = ours.encode(probe_texts), ours.encode(heldout_texts)
    rows.append({"system": "ours", **fidelity(ours_heldout, teacher_heldout), "probe": probe(ours_train, ours_heldout), **info})
    random = LexicalEmbedder(tokenizer_json, ours.vocabulary, init_layers(ours.dims, recipe.distill.seed), ours.fallback, ours.quantization_limit)
    rows.append({"system": "ours, random init, untrained", **fidelity(random.encode(heldout_texts), teacher_heldout),
                 "probe": probe(random.encode(probe_texts), random.encode(heldout_texts))})
    if luxical:
        model, info = train_luxical(corpus, teacher, tokenizer_json)
        rows.append({"system": "luxical 1.1.2, own recipe", **fidelity(model(heldout_texts), teacher_heldout),
                     "probe": probe(model(probe_texts), model(heldout_texts)), **info})
    rows.append({"system": "scikit-learn TF-IDF", "recall_at_10": None, "spearman": None,
                 "probe": tfidf_probe_accuracy(probe_texts, probe.train_y, heldout_texts, probe.test_y)})
    rows.append({"system": "ours + TF-IDF (hybrid probe)", "recall_at_10": None, "spearman": None,
                 "probe": hybrid_probe_accuracy(ours_train, probe_texts, probe.train_y, ours_heldout, heldout_texts, probe.test_y)})
    return rows


def ablations(base: Recipe) -> dict[str, Recipe]:
    """Each idea switched off (or changed) alone, from the default recipe."""
    d = base.distill
    return {
        "default": base,
        "no cosine term (Gram-KL only)": replace(base, distill=d.replace(cosine_weight=0.0)),
        "random init, Gram-KL only (the previous recipe)": replace(base, distill=d.replace(init="random", cosine_weight=0.0)),
        "ridge start only, no training": replace(base, distill=d.replace(epochs=0)),
        "no token prior (ridge toward zero)": replace(base, distill=d.replace(token_prior=False)),
        "no token prior, ridge start only, no training": replace(base, distill=d.replace(token_prior=False, epochs=0)),
        "token prior, ridge alpha 0.3": replace(base, distill=d.replace(ridge_alpha=0.3)),
        "token prior, ridge alpha 3": replace(base, distill=d.replace(ridge_alpha=3.0)),
        "random init, cosine term": replace(base, distill=d.replace(init="random")),
        "ridge alpha 0.3, no training": replace(base, distill=d.replace(epochs=0, ridge_alpha=0.3)),
        "ridge alpha 3, no training": replace(base, distill=d.replace(epochs=0, ridge_alpha=3.0)),
        "ridge alpha 0.1, no training": replace(base, distill=d.replace(epochs=0, ridge_alpha=0.1)),
        "ridge alpha 0.3": replace(base, distill=d.replace(ridge_alpha=0.3)),
        "ridge alpha 0.1": replace(base, distill=d.replace(ridge_alpha=0.1)),
        "learning rate 3e-4": replace(base, distill=d.replace(learning_rate=3e-4)),
        "learning rate 3e-3": replace(base, distill=d.replace(learning_rate=3e-3)),
        "15 epochs": replace(base, distill=d.replace(epochs=15)),
        "constant learning rate (no warmup-stable-decay)": replace(base, distill=d.replace(warmup_fraction=0.0, decay_fraction=0.0)),
        "vocabulary 520k": replace(base, vocabulary_size=520_000, min_document_frequency=1),
        "vocabulary 50k": replace(base, vocabulary_size=50_000),
        "n-grams up to 3": replace(base, max_ngram_length=3),
        "word front end (hashed word n-grams)": replace(base, front_end="words"),
        "batch 2048": replace(base, distill=d.replace(batch_size=2048)),
        "temperature 1": replace(base, distill=d.replace(temperature=1.0)),
        "hidden 512-512": replace(base, distill=d.replace(hidden_dims=(512, 512))),
        "hidden 512-512, no training": replace(base, distill=d.replace(hidden_dims=(512, 512), epochs=0)),
        "one hidden layer": replace(base, distill=d.replace(hidden_dims=(256,))),
    }


def run_ablations(corpus: Corpus, teacher: np.ndarray, tokenizer_json: str, sums: TokenSums | None, only: list[str] | None) -> list[dict]:
    probe = Probe(corpus)
    heldout_texts = [corpus.texts[i] for i in np.flatnonzero(corpus.heldout)]
    probe_texts = [corpus.texts[i] for i in probe.train_rows]
    rows = []
    for name, recipe in ablations(Recipe()).items():
        if only and name not in only:
            continue
        embedder, info = train_ours(corpus, teacher, recipe, tokenizer_json, sums)
        heldout = embedder.encode(heldout_texts)
        row = {"corpus": corpus.name, "variant": name, **fidelity(heldout, teacher[corpus.heldout]),
               "probe": probe(embedder.encode(probe_texts), heldout), **info}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(corpus: str, rows: list[dict]) -> str:
    """The comparison as a table, with recall as a ratio to luxical's and probes as a ratio to the teacher's."""
    luxical = next((r["recall_at_10"] for r in rows if r["system"].startswith("luxical")), None)
    teacher = rows[0]["probe"]

    def num(value, digits=3):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [f"**{corpus}**", "", "| system | recall@10 | x luxical | Spearman | probe | x teacher | steps x batch | training s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['recall_at_10'] / luxical:.2f}" if luxical and r["recall_at_10"] is not None and r["system"] != "teacher" else ""
        budget = f"{r['steps']} x {r['batch_size']}" if "steps" in r else ""
        lines.append(f"| {r['system']} | {num(r['recall_at_10'])} | {ratio} | {num(r['spearman'])} | {num(r['probe'])} | "
                     f"{r['probe'] / teacher:.2f} | {budget} | {r.get('training_seconds', '')} |")
    return "\n".join(lines) + "\n"


def corpora(names: list[str]) -> list[Corpus]:
    found = []
    for name in names:
        corpus = {"sample": sample_corpus, "python-docs": python_docs_corpus, "kernel-docs": kernel_docs_corpus}[name]()
        if corpus is None:
            package = {"python-docs": "python3-doc", "kernel-docs": "linux-doc"}[name]
            log(f"{name}: skipped, Debian's {package} is not installed (apt-get install {package})")
            continue
        found.append(corpus)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=CORPORA, choices=CORPORA)
    parser.add_argument("--ablations", nargs="*", help="train the ablation variants (all, or those named) instead of the comparison")
    parser.add_argument("--no-luxical", action="store_true", help="leave out luxical's recipe (it needs the bench extra)")
    parser.add_argument("--teacher-only", action="store_true", help="only embed (and cache) the corpora with the teacher")
    args = parser.parse_args(argv)
    teacher = Teacher()
    for corpus in corpora(args.corpus):
        vectors, sums = teacher_pass(corpus, teacher)
        log(f"{corpus.name}: {len(corpus.texts)} documents, {corpus.train.sum()} training, {corpus.heldout.sum()} held-out, {len(set(corpus.labels))} labels, teacher dim {vectors.shape[1]}")
        if args.teacher_only:
            continue
        if args.ablations is not None:
            run_ablations(corpus, vectors, teacher.tokenizer_json(), sums, args.ablations)
            continue
        rows = evaluate(corpus, vectors, Recipe(), teacher.tokenizer_json(), sums, luxical=not args.no_luxical)
        for row in rows:
            log(json.dumps({"corpus": corpus.name, **row}))
        print(markdown(f"{corpus.name}: {corpus.train.sum()} training, {corpus.heldout.sum()} held-out documents", rows), flush=True)


if __name__ == "__main__":
    main()
