"""Curation without labels: a reference set against the corpus, on the student, the teacher, TF-IDF and fastText.

    python -m bench.curation [--corpus sample python-docs django-docs zsh-docs kernel-docs] [--n 100 1000]
                             [--sample-size 4000] [--quick] [--tune] [--no-speed]

Each corpus has labels, and they are hidden. One label group is the target.
- sample, python-docs, kernel-docs: the reference set is N of the target's own documents (a
  seeded draw, nested: the 100 are the first 100 of the 1,000), and the corpus is every other
  document.
- django-docs, zsh-docs: several Debian manuals mixed (`MIXED`), one of them the target; the
  reference set is N paragraphs of another package's manual on the same subject (every one when
  fewer), as a user brings examples from elsewhere: the Flask manual for Django's, the Bash
  manual for zsh's. The corpus is every document of the mix.
A target document in the corpus is a positive, for evaluation only.

The student is trained as `distilled_model` trains it: on a seeded training sample of corpus
documents (85% train, 15% held out), from the teacher's vectors and its token sums over the train
split, with the product's feature and distillation defaults. A second student's sample also holds
the 1,000 reference documents (the issue asks whether that helps).

Heads, each on the same reference set, each against the same negatives: the student's training
documents (at most 5,000; the product's own heads take up to 20,000, as `max_negatives`), as
`quality_classifier` draws them:
- product: the heads as `quality_classifier` fits them (`product_heads`): the cross-fitted
  blend of `cross_fitted_head` and the similarity head of `lexical_similarity_head`, calibrated
  on every corpus document as `calibrated_on_corpus` does, scored with `score_documents`; their
  keep set is their own threshold's, so their kept share and their keep rates inside and outside
  the training sample are reported. A second table per corpus compares ways of calibrating.
- reference-classifier: class-balanced logistic regression (C = 1) on the student embedding,
  the former student hybrid (the embedding next to the student's L2-normalised TF-IDF rows, one
  C), the teacher's vectors and scikit-learn TF-IDF (word 1-2 grams, sublinear, fitted on the
  student's training sample); and fastText supervised, trained on the same positives and
  negatives with word bigrams, the positives repeated so the classes weigh the same (DCLM trains
  on equal counts).
- reference-similarity: a document's score is the mean of its top-k cosines to the reference set.

Every head scores the whole corpus. Reported: average precision of that ranking for the target
group; recall and precision of the keep set at the keep fraction, which is the target group's
share of the corpus (the top of the ranking for the anchors, so recall equals precision; the
calibrated threshold for the product's heads); kept share; agreement of the keep set with the
teacher head's keep set of the same mode; documents scored per CPU-second from texts to scores
(`time.process_time`, all threads), and the seconds to fit the head on its features.

The teacher's vectors and token sums are cached under `.bench_cache/`, keyed by the teacher's
identity and the texts, one file per group of documents (train split, references, the rest).
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
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from bench.corpora import kernel_docs_files, manual_package, manual_paragraphs, python_docs_files, sample_labels  # noqa: E402
from bench.fidelity import manual_corpus  # noqa: E402
from embedding_assets.engine import LexicalEmbedder  # noqa: E402
from embedding_assets.engine.curation import (  # noqa: E402
    cross_fitted_head,
    fit_logistic,
    word_ngrams,
    lexical_similarity_head,
    lexical_features,
    linear_head,
    reference_similarity,
    similarity_head,
)
from embedding_assets.engine.config import DistillConfig  # noqa: E402
from embedding_assets.engine.training import train_student as engine_train_student  # noqa: E402
from embedding_assets.engine.evaluation import neighbour_recall  # noqa: E402
from embedding_assets.engine.features import build_features  # noqa: E402
from embedding_assets.engine.prior import TokenSums  # noqa: E402
from embedding_assets.sample_corpus import NETWORKING_LABELS  # noqa: E402
from embedding_assets.resources.teacher import Teacher  # noqa: E402

CORPORA = ["sample", "python-docs", "django-docs", "zsh-docs", "kernel-docs"]
# Corpora mixed from Debian manuals: name -> (manuals and how many paragraphs of each, the target
# manual, the reference manual: another package on the target's subject).
MIXED = {
    "django-docs": ({"django": 3_000, "cmake": 3_500, "zsh": 3_500}, "django", "flask"),
    "zsh-docs": ({"zsh": 2_500, "apache": 3_750, "django": 3_750}, "zsh", "bash"),
}
REFERENCE_LABEL = "reference set"
CACHE_DIR = Path(os.environ.get("EMBEDDING_ASSETS_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))
# The teacher embeds every document once (about 60 a second on two cores): the manuals are cut to
# what it embeds in a few minutes each.
PYTHON_DOCS_LIMIT = 6_000
KERNEL_DOCS_LIMIT = 30_000
HELD_OUT_FRACTION = 0.15  # of the training sample, as `training_sample` splits it
TEACHER_SPEED_DOCS = 500  # the teacher's scoring rate is measured on this many corpus documents


@dataclass(frozen=True)
class HeadSettings:
    """The knobs of the heads; `--tune` sweeps them one at a time from these defaults."""

    c: float = 1.0
    negatives: int = 5_000
    top_k: int = 10
    fasttext_epoch: int = 5
    fasttext_lr: float = 0.1
    fasttext_balanced: bool = True


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Labelled:
    name: str
    texts: list[str]
    labels: list[str]
    target: tuple[str, ...]
    target_name: str
    # Reference documents from another source, appended after the corpus's own texts (label REFERENCE_LABEL).
    external: int = 0

    @property
    def positive(self) -> np.ndarray:
        wanted = set(self.target)
        return np.array([label in wanted for label in self.labels])


def load_corpus(name: str, limit: int | None) -> Labelled | None:
    if name == "sample":
        texts, labels = sample_labels()
        corpus = Labelled(name, texts, labels, tuple(NETWORKING_LABELS), "networking packages")
    elif name == "python-docs":
        found = manual_corpus(name, python_docs_files(), "/_sources/", min_words=20, limit=PYTHON_DOCS_LIMIT)
        corpus = found and Labelled(name, found.texts, found.labels, ("library",), "the library reference (library/)")
    elif name in MIXED:
        return mixed_corpus(name)
    else:
        found = manual_corpus(name, kernel_docs_files(), "/Documentation/", min_words=8, limit=KERNEL_DOCS_LIMIT,
                              markup=("::", "|", "+-", "==", "--", "#"))
        corpus = found and Labelled(name, found.texts, found.labels, ("networking",), "networking/")
    if corpus and limit and len(corpus.texts) > limit:
        keep = np.sort(np.random.default_rng(0).permutation(len(corpus.texts))[:limit])
        corpus = Labelled(corpus.name, [corpus.texts[i] for i in keep], [corpus.labels[i] for i in keep], corpus.target, corpus.target_name)
    return corpus


def mixed_corpus(name: str) -> Labelled | None:
    """Paragraphs of several manuals (a seeded draw of each), then every paragraph of the reference manual."""
    parts, target, reference = MIXED[name]
    texts, labels = [], []
    for manual, count in parts.items():
        found = manual_paragraphs(manual)
        if found is None:
            return None
        chosen = np.sort(np.random.default_rng(0).permutation(len(found))[:count])
        texts += [found[i] for i in chosen]
        labels += [manual] * len(chosen)
    refs = manual_paragraphs(reference)
    if refs is None:
        return None
    seen = set(texts)
    refs = [t for t in refs if t not in seen]
    return Labelled(name, texts + refs, labels + [REFERENCE_LABEL] * len(refs), (target,),
                    f"the {target} manual; references: the {reference} manual", external=len(refs))


def missing_packages(name: str) -> str:
    if name in MIXED:
        return " ".join(sorted({manual_package(m) for m in [*MIXED[name][0], MIXED[name][2]]}))
    return {"python-docs": "python3-doc", "kernel-docs": "linux-doc"}[name]


@dataclass
class Split:
    """Who is what: the reference draws, the student's training sample and its held-out part."""

    references: dict[int, np.ndarray]  # N -> document indices, nested
    train: np.ndarray  # indices of the student's training documents
    heldout: np.ndarray  # indices of the sample's held-out documents
    external: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # references from another source

    def corpus(self, n: int, size: int) -> np.ndarray:
        keep = np.ones(size, dtype=bool)
        keep[self.references[n]] = False
        keep[self.external] = False
        return np.flatnonzero(keep)


def make_split(corpus: Labelled, ns: list[int], sample_size: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    external = np.arange(len(corpus.texts) - corpus.external, len(corpus.texts))
    if corpus.external:
        # Every reference document when fewer than N.
        drawn = rng.permutation(external)
        references = {n: np.sort(drawn[:n]) for n in ns}
    else:
        targets = rng.permutation(np.flatnonzero(corpus.positive))
        if max(ns) >= len(targets):
            raise SystemExit(f"{corpus.name}: the target group has {len(targets)} documents, too few for a reference set of {max(ns)}")
        references = {n: np.sort(targets[:n]) for n in ns}
    pool = np.setdiff1d(np.arange(len(corpus.texts)), np.concatenate([references[max(ns)], external]))
    sample = rng.permutation(pool)[: min(sample_size, len(pool))]
    cut = int(round(len(sample) * HELD_OUT_FRACTION))
    return Split(references, np.sort(sample[cut:]), np.sort(sample[:cut]), external)


def _digest(teacher: Teacher, texts: list[str], with_sums: bool) -> str:
    digest = hashlib.sha256(json.dumps({**teacher.identity(), "sums": with_sums}, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _write_atomically(path: Path, data: bytes) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TeacherCache:
    """The teacher's vectors of a group of documents, and its token sums over the group when asked; cached on disk."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self._model = None

    def model(self):
        if self._model is None:
            self._model = self.teacher.load("cpu")
        return self._model

    def embed(self, corpus: str, group: str, texts: list[str], with_sums: bool) -> tuple[np.ndarray, TokenSums | None]:
        stem = CACHE_DIR / f"curation-teacher-{corpus}-{group}-{_digest(self.teacher, texts, with_sums)}"
        vectors_path, sums_path = stem.with_suffix(".npy"), stem.with_suffix(".safetensors")
        if vectors_path.exists() and (sums_path.exists() or not with_sums):
            sums = TokenSums.from_bytes(sums_path.read_bytes()) if with_sums else None
            return np.load(vectors_path, allow_pickle=False), sums
        log(f"{corpus}: embedding {len(texts)} documents ({group}) with the teacher, cached at {vectors_path.name}")
        started, vectors, parts = time.perf_counter(), [], []
        for start in range(0, len(texts), 1024):
            batch = texts[start : start + 1024]
            batch_vectors, sums = self.teacher.embed_with_token_sums(self.model(), batch, "cpu", "fp32", [with_sums] * len(batch))
            vectors.append(batch_vectors)
            parts.append(sums)
            done = start + len(batch)
            log(f"  teacher {done}/{len(texts)}, {done / (time.perf_counter() - started):.1f} docs/s")
        vectors = np.concatenate(vectors) if vectors else np.empty((0, 384), np.float32)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        _write_atomically(vectors_path, buffer.getvalue())
        merged = None
        if with_sums:
            merged = TokenSums.merge(parts, vectors.shape[1])
            _write_atomically(sums_path, merged.to_bytes())
        return vectors, merged


def teacher_vectors(cache: TeacherCache, corpus: Labelled, split: Split) -> tuple[np.ndarray, TokenSums, TokenSums]:
    """Vectors of every document, token sums over the train split, and over the largest reference set."""
    n = len(corpus.texts)
    references = split.references[max(split.references)]
    rest = np.setdiff1d(np.arange(n), np.concatenate([split.train, references]))
    vectors = np.empty((n, 0), np.float32)
    sums = {}
    for group, rows, with_sums in (("train", split.train, True), ("references", references, True), ("rest", rest, False)):
        group_vectors, sums[group] = cache.embed(corpus.name, group, [corpus.texts[i] for i in rows], with_sums)
        if vectors.shape[1] == 0:
            vectors = np.zeros((n, group_vectors.shape[1]), np.float32)
        vectors[rows] = group_vectors
    return vectors, sums["train"], sums["references"]


def cached_student(teacher: Teacher, corpus: str, key: str, texts: list[str], vectors: np.ndarray, sums: TokenSums) -> tuple[LexicalEmbedder, dict]:
    """`train_student`, its model file and figures cached by the teacher's identity and the training texts."""
    stem = CACHE_DIR / f"curation-{key}-{corpus}-{_digest(teacher, texts, True)}"
    model_path, info_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if model_path.exists() and info_path.exists():
        return LexicalEmbedder.load(model_path), json.loads(info_path.read_text())
    student, info = train_student(teacher.tokenizer_json(), texts, vectors, sums)
    _write_atomically(model_path, student.to_bytes())
    _write_atomically(info_path, json.dumps(info).encode())
    return student, info


def train_student(tokenizer_json: str, texts: list[str], vectors: np.ndarray, sums: TokenSums) -> tuple[LexicalEmbedder, dict]:
    """The student as `features` and `distilled_model` build it, at the product's defaults: the engine's `train_student`."""
    started = time.perf_counter()
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts[i : i + 4096] for i in range(0, len(texts), 4096)],
                           vocabulary_size=200_000, max_ngram_length=5, min_document_frequency=2, counter_capacity=2_000_000)
    embedder, report = engine_train_student(feats, vectors, DistillConfig(), texts=texts, token_sums=sums)
    return embedder, {"documents": len(texts), "vocabulary": feats.vocabulary.size, "steps": report.steps,
                      "seconds": round(time.perf_counter() - started, 1)}


def ranking(scores: np.ndarray, positive: np.ndarray, keep: int, kept: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """AP, and recall and precision of the keep set: the top `keep` documents, or `kept` (a head's own keep rule)."""
    from sklearn.metrics import average_precision_score

    top = np.argsort(-scores, kind="stable")[:keep] if kept is None else np.flatnonzero(kept)
    hits = positive[top].sum()
    return {"ap": float(average_precision_score(positive, scores)), "recall": float(hits / positive.sum()),
            "precision": float(hits / max(len(top), 1)), "kept_share": len(top) / len(scores)}, top


def agreement(student_top: np.ndarray, teacher_top: np.ndarray) -> float:
    return len(np.intersect1d(student_top, teacher_top)) / len(teacher_top)


def one_line(text: str) -> str:
    return " ".join(text.split())


class FastText:
    """fastText supervised on reference (positive) against corpus documents (negative), word bigrams."""

    def __init__(self, positives: list[str], negatives: list[str], settings: HeadSettings, seed: int):
        import fasttext

        # balanced: each reference document is repeated so the two classes weigh the same, as DCLM's equal counts do
        repeats = max(1, round(len(negatives) / max(len(positives), 1))) if settings.fasttext_balanced else 1
        rows = [f"__label__pos {one_line(t)}" for t in positives] * repeats + [f"__label__neg {one_line(t)}" for t in negatives]
        np.random.default_rng(seed).shuffle(rows)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        try:
            self.model = fasttext.train_supervised(f.name, wordNgrams=2, epoch=settings.fasttext_epoch, lr=settings.fasttext_lr,
                                                   thread=1, seed=seed, verbose=0)
        finally:
            os.unlink(f.name)

    def score(self, texts: list[str]) -> np.ndarray:
        # predict takes a list of strings (a single string fails under numpy 2), one line each. Under
        # numpy 2 its k=2 probabilities repeat the first one, so the top label's is read and turned
        # into P(pos): the two classes' probabilities sum to one.
        labels, probs = self.model.predict([one_line(t) for t in texts], k=1)
        top = np.array([p[0] for p in probs], dtype=np.float64)
        return np.where(np.array([lab[0] == "__label__pos" for lab in labels]), top, 1.0 - top)


@dataclass
class Features:
    """Every document's features, per system, computed once."""

    dense: dict[str, np.ndarray] = field(default_factory=dict)  # student, teacher, student+refs
    sparse: dict[str, sp.csr_matrix] = field(default_factory=dict)  # the students' TF-IDF rows, scikit-learn TF-IDF


def tfidf_vectorizer(train_texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32).fit(train_texts)


def sparse_similarity(queries: sp.csr_matrix, references: sp.csr_matrix, top_k: int, block: int = 2048) -> np.ndarray:
    """reference_similarity for L2-normalised sparse rows (TF-IDF), exact, in blocks of queries."""
    k = min(top_k, references.shape[0])
    out = np.empty(queries.shape[0], dtype=np.float32)
    refs_t = references.T.tocsc()
    for start in range(0, queries.shape[0], block):
        cosines = (queries[start : start + block] @ refs_t).toarray()
        out[start : start + len(cosines)] = np.partition(cosines, cosines.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
    return out


SYSTEMS_DENSE = {"student": "student", "student + references in sample": "student_refs", "teacher": "teacher"}


def classifier_inputs(features: Features, system: str):
    """The head's feature matrix for a system: dense, sparse, or the hybrid of both."""
    if system == "student hybrid":
        return sp.hstack([sp.csr_matrix(features.dense["student"]), features.sparse["student"]], format="csr")
    if system == "student + references in sample, hybrid":
        return sp.hstack([sp.csr_matrix(features.dense["student_refs"]), features.sparse["student_refs"]], format="csr")
    if system == "TF-IDF":
        return features.sparse["tfidf"]
    return features.dense[SYSTEMS_DENSE[system]]


CLASSIFIER_SYSTEMS = ["teacher", "student", "student hybrid", "TF-IDF", "fastText",
                      "student + references in sample", "student + references in sample, hybrid"]
SIMILARITY_SYSTEMS = ["teacher", "student", "TF-IDF", "student + references in sample"]


PRODUCT_NEGATIVES = 20_000  # Curation.max_negatives


def negatives_of(split: Split, settings: HeadSettings) -> np.ndarray:
    """Every head's negatives: the student's training documents (as quality_classifier draws them), at most `negatives`."""
    return np.sort(np.random.default_rng(1).permutation(split.train)[: settings.negatives])
STUDY_BLEND = bool(os.environ.get("BENCH_STUDY_BLEND"))
PRODUCT_HEADS: dict[tuple[str, int], dict] = {}  # (corpus, N) -> the product's fitted heads, for the speed run


def product_heads(corpus: Labelled, split: Split, n: int, features: Features, students: dict, keep_fraction: float, settings: HeadSettings):
    """The heads as quality_classifier fits and calibrates them, scored as scored_corpus scores.

    Classifier: the references against the sample's training documents (at most 20,000), the
    blended, cross-fitted head of `cross_fitted_head`. Similarity: `lexical_similarity_head`, its
    lexical weight chosen on folds of the references against the same sample documents. Both
    score every corpus document with `score_documents` (the documents a head was fitted on by
    their fold head) and keep by the threshold calibrated on those scores. The product holds 20%
    of the references out to measure the head; here, as for every other head, all N are fitted on.

    Also yields the calibration alternatives (rows of mode `calibration`): no cross-fitting, and a
    threshold from the sample's held-out documents only (the former rule), to show which holds."""
    student = students["student"]
    docs = split.corpus(n, len(corpus.texts))
    refs = split.references[n]
    emb, lex = features.dense["student"], features.sparse["student"]
    # The sample is in hash order in the product, so its first documents are a random draw.
    negatives = np.sort(np.random.default_rng(1).permutation(split.train)[:PRODUCT_NEGATIVES])
    rows = np.concatenate([refs, negatives])
    y = np.r_[np.ones(len(refs), bool), np.zeros(len(negatives), bool)]
    ids = [f"reference:{i}" for i in refs] + [str(i) for i in negatives]
    in_corpus = np.r_[np.zeros(len(refs), bool), np.ones(len(negatives), bool)]
    doc_ids, texts = [str(i) for i in docs], [corpus.texts[i] for i in docs]
    in_sample = np.isin(docs, np.concatenate([split.train, split.heldout]))
    heldout = np.isin(docs, split.heldout)

    def rates(kept):
        return {"keep_in_sample": float(kept[in_sample].mean()) if in_sample.any() else None,
                "keep_outside_sample": float(kept[~in_sample].mean()) if (~in_sample).any() else None}

    started = time.perf_counter()
    mask = word_ngrams(student)
    head = cross_fitted_head("reference-classifier", "logistic", student.version, {"c": settings.c}, emb[rows], y, lex[rows], ids, in_corpus,
                             lexical_mask=mask)
    fit_seconds = time.perf_counter() - started
    log(f"  product classifier: {json.dumps({k: v for k, v in head.settings.items() if k not in ('c',)})} {json.dumps(head.evaluation)}")
    sample_ids = [str(i) for i in split.train]
    unmapped = head.score_documents(student, doc_ids, texts)[1]
    calibrated, scores = head.calibrated_on_corpus(student, doc_ids, texts, sample_ids, keep_fraction)
    kept = calibrated.keep(scores)
    choice = {k: head.settings[k] for k in ("chosen_c", "view_agreement") if k in head.settings}
    PRODUCT_HEADS[corpus.name, n] = {"classifier": calibrated}
    yield "reference-classifier", "product", scores, kept, fit_seconds, {**rates(kept), **choice}

    if STUDY_BLEND:
        from sklearn.metrics import average_precision_score

        from embedding_assets.engine.curation import _cross_fit, folds_of, document_keys

        positive = corpus.positive[docs]
        fold = folds_of(document_keys(ids))
        halves, oof = {}, {}
        masked = (lex @ sp.diags(mask.astype(np.float32))).tocsr()
        for view, x in (("dense", emb), ("lexical", masked)):
            for c in (0.03, 0.1, 0.3, 1.0, 3.0, 30.0):
                coef, intercept = fit_logistic(x[rows], y, c)
                halves[view, c] = np.asarray(x[docs] @ coef).ravel() + intercept
                run = _cross_fit(x[rows], y, fold, 5, lambda a, b, c=c: fit_logistic(a, b, c))
                oof[view, c] = run.oof
        log("  blend study, per half and C, corpus AP / out-of-fold AP: " + json.dumps(
            {f"{view} C={c}": f"{average_precision_score(positive, z):.3f} / {average_precision_score(y, oof[view, c]):.3f}" for (view, c), z in halves.items()}))
        for cd, cl in ((head.settings.get("chosen_c", 1.0), head.settings.get("chosen_c", 1.0)), (0.3, 0.3), (1.0, 1.0), (0.1, 0.1)):
            zd, zl = halves["dense", cd], halves["lexical", cl]
            log(f"  blend study, dense C={cd}, lexical C={cl}, per dense weight, corpus AP / out-of-fold AP: "
                + json.dumps({w: f"{average_precision_score(positive, w * zd + (1 - w) * zl):.3f} / {average_precision_score(y, w * oof['dense', cd] + (1 - w) * oof['lexical', cl]):.3f}"
                              for w in (0, 0.2, 0.4, 0.5, 0.6, 0.8, 1)}))
    plain = head.score_texts(student, texts)[1]
    for name, these, calibration in (("cross-fitted, mapped, corpus threshold (the product)", scores, scores),
                                     ("cross-fitted, mapped, held-out sample threshold", scores, scores[heldout]),
                                     ("cross-fitted, corpus threshold", unmapped, unmapped),
                                     ("cross-fitted, held-out sample threshold", unmapped, unmapped[heldout]),
                                     ("one head, corpus threshold", plain, plain),
                                     ("one head, held-out sample threshold", plain, plain[heldout])):
        kept_here = head.calibrated(calibration, keep_fraction).keep(these)
        yield "calibration", name, these, kept_here, 0.0, rates(kept_here)

    started = time.perf_counter()
    sim = lexical_similarity_head(student.version, {"top_k": settings.top_k}, emb[refs], lex[refs], [f"reference:{i}" for i in refs],
                                  emb[negatives], lex[negatives], lexical_mask=mask)
    fit_seconds = time.perf_counter() - started
    log(f"  product similarity: lexical weight {sim.settings.get('lexical_weight')}, cross-validated AP {sim.settings.get('cross_validated_ap')}")
    sim, scores = sim.calibrated_on_corpus(student, doc_ids, texts, sample_ids, keep_fraction)
    kept = sim.keep(scores)
    PRODUCT_HEADS[corpus.name, n]["similarity"] = sim
    yield "reference-similarity", "product", scores, kept, fit_seconds, {**rates(kept), "lexical_weight": sim.settings.get("lexical_weight", 0.0)}


def evaluate(corpus: Labelled, split: Split, n: int, features: Features, settings: HeadSettings, seed: int,
             classifier_systems: list[str] = CLASSIFIER_SYSTEMS, similarity_systems: list[str] = SIMILARITY_SYSTEMS,
             students: dict | None = None, product: bool = True) -> list[dict]:
    """Rows of AP, recall at the keep fraction and agreement with the teacher, per mode and system."""
    docs = split.corpus(n, len(corpus.texts))
    positive = corpus.positive[docs]
    keep = int(positive.sum())
    references = split.references[n]
    negatives = negatives_of(split, settings)
    rows_fit = np.concatenate([references, negatives])
    y = np.concatenate([np.ones(len(references), bool), np.zeros(len(negatives), bool)])
    results, tops = [], {}

    def record(mode, system, scores, fit_seconds, kept=None, extra=None):
        metrics, top = ranking(scores, positive, keep, kept)
        tops[mode, system] = top
        results.append({"corpus": corpus.name, "n": n, "mode": mode, "system": system, **metrics, "fit_s": round(fit_seconds, 2),
                        "keep_fraction": keep / len(docs), "corpus_documents": len(docs), "positives": keep, **(extra or {})})

    if students and product:
        for mode, system, scores, kept, fit_seconds, extra in product_heads(corpus, split, n, features, students, keep / len(docs), settings):
            record(mode, system, scores, fit_seconds, kept, extra)

    for system in classifier_systems:
        if system.startswith("student + references") and "student_refs" not in features.dense:
            continue
        started = time.perf_counter()
        if system == "fastText":
            model = FastText([corpus.texts[i] for i in references], [corpus.texts[i] for i in negatives], settings, seed)
            fit_seconds = time.perf_counter() - started
            scores = model.score([corpus.texts[i] for i in docs])
        else:
            x = classifier_inputs(features, system)
            coef, intercept = fit_logistic(x[rows_fit], y, settings.c, seed)
            fit_seconds = time.perf_counter() - started
            scores = np.asarray(x[docs] @ coef).ravel() + intercept
        record("reference-classifier", system, scores, fit_seconds)

    for system in similarity_systems:
        if system == "TF-IDF":
            scores = sparse_similarity(features.sparse["tfidf"][docs], features.sparse["tfidf"][references], settings.top_k)
        elif SYSTEMS_DENSE[system] in features.dense:
            emb = features.dense[SYSTEMS_DENSE[system]]
            scores = reference_similarity(emb[docs], emb[references], settings.top_k)
        else:
            continue
        record("reference-similarity", system, scores, 0.0)

    for row in results:
        teacher_top = tops.get((row["mode"], "teacher"))
        if teacher_top is not None and row["system"] != "teacher":
            row["agreement"] = agreement(tops[row["mode"], row["system"]], teacher_top)
    return results


def timed(fn, *args) -> tuple[float, object]:
    started = time.process_time()
    out = fn(*args)
    return time.process_time() - started, out


def scoring_speed(corpus: Labelled, split: Split, n: int, student: LexicalEmbedder, features: Features, vectorizer,
                  cache: TeacherCache, settings: HeadSettings, seed: int) -> dict[str, dict]:
    """Documents per CPU-second from texts to scores, the whole corpus (the teacher: a slice), one run."""
    docs = split.corpus(n, len(corpus.texts))
    texts = [corpus.texts[i] for i in docs]
    references = split.references[n]
    negatives = negatives_of(split, settings)
    rows_fit = np.concatenate([references, negatives])
    y = np.concatenate([np.ones(len(references), bool), np.zeros(len(negatives), bool)])
    version = student.version
    heads = {
        "student": linear_head("reference-classifier", "logistic", version, {"c": settings.c}, features.dense["student"][rows_fit], y),
        "student hybrid": linear_head("reference-classifier", "logistic", version, {"c": settings.c},
                                      features.dense["student"][rows_fit], y, lexical=features.sparse["student"][rows_fit]),
    }
    similarity = similarity_head(version, {"top_k": settings.top_k}, features.dense["student"][references])
    tfidf_coef, tfidf_intercept = fit_logistic(features.sparse["tfidf"][rows_fit], y, settings.c, seed)
    teacher_coef, teacher_intercept = fit_logistic(features.dense["teacher"][rows_fit], y, settings.c, seed)
    fasttext_model = FastText([corpus.texts[i] for i in references], [corpus.texts[i] for i in negatives], settings, seed)
    model = cache.model()
    teacher_texts = texts[:TEACHER_SPEED_DOCS]

    def teacher_scores(batch):
        vectors = model.encode(batch, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return vectors @ teacher_coef + teacher_intercept

    ids = [str(i) for i in docs]
    product = PRODUCT_HEADS.get((corpus.name, n), {})
    runs = {
        **({"product, reference-classifier": (lambda t: product["classifier"].score_documents(student, ids[: len(t)], t), texts),
            "product, reference-similarity": (lambda t: product["similarity"].score_documents(student, ids[: len(t)], t), texts)} if product else {}),
        "student, reference-classifier": (lambda t: heads["student"].score_texts(student, t), texts),
        "student hybrid, reference-classifier": (lambda t: heads["student hybrid"].score_texts(student, t), texts),
        "student, reference-similarity": (lambda t: similarity.score_texts(student, t), texts),
        "TF-IDF, reference-classifier": (lambda t: vectorizer.transform(t) @ tfidf_coef + tfidf_intercept, texts),
        "fastText predict": (fasttext_model.score, texts),
        "teacher, reference-classifier": (teacher_scores, teacher_texts),
    }
    out = {}
    for name, (fn, batch) in runs.items():
        fn(batch[:64])  # compiles and builds tables once, outside the timing
        # best of three (one for the teacher, the slowest): the machine is shared
        seconds = min(timed(fn, batch)[0] for _ in range(1 if name.startswith("teacher") else 3))
        out[name] = {"documents": len(batch), "cpu_s": round(seconds, 3), "docs_per_cpu_s": len(batch) / max(seconds, 1e-9)}
        log(f"  {name}: {len(batch)} documents in {seconds:.2f} CPU-s, {out[name]['docs_per_cpu_s']:,.0f} docs/CPU-s")
    return out


def build_features_for(corpus: Labelled, split: Split, vectors: np.ndarray, students: dict[str, LexicalEmbedder]) -> tuple[Features, object]:
    features = Features()
    features.dense["teacher"] = vectors
    for key, student in students.items():
        features.dense[key] = student.encode(corpus.texts)
        features.sparse[key] = lexical_features(student, corpus.texts)
    vectorizer = tfidf_vectorizer([corpus.texts[i] for i in split.train])
    features.sparse["tfidf"] = vectorizer.transform(corpus.texts).tocsr()
    return features, vectorizer


def tune(corpus: Labelled, split: Split, n: int, features: Features, student: LexicalEmbedder, seed: int) -> list[dict]:
    """AP (and keep-set agreement) of each head setting, one knob at a time from the defaults; cheap heads first."""
    base = HeadSettings()
    dense = ["teacher", "student", "TF-IDF"]
    plan = ([("top_k", k, [], dense) for k in (1, 3, 10, 30, 100)]
            + [("c", c, dense, []) for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)]
            + [("negatives", k, dense, []) for k in (1_000, 2_000, 1_000_000)]
            + [("fasttext_epoch", 25, ["fastText"], []), ("fasttext_lr", 1.0, ["fastText"], []), ("fasttext_balanced", True, ["fastText"], []),
               ("fasttext_lr", 0.1, ["fastText"], [])]
            + [("c", c, ["teacher", "student hybrid"], []) for c in (1.0, 10.0, 100.0)])
    rows = []
    for knob, value, classifiers, similarities in plan:
        settings = HeadSettings(**{**base.__dict__, knob: value})
        for row in evaluate(corpus, split, n, features, settings, seed, classifier_systems=classifiers, similarity_systems=similarities, product=False):
            rows.append({"knob": knob, "value": value, **row})
            log(json.dumps(rows[-1]))
    return rows


def tuning_table(rows: list[dict]) -> str:
    """AP per head, and the keep-set agreement with the teacher head in brackets."""
    systems = list(dict.fromkeys(f"{r['mode'].split('-')[1]}: {r['system']}" for r in rows))
    lines = ["| knob | value | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
    for key in dict.fromkeys((r["knob"], r["value"]) for r in rows):
        cells = {}
        for r in rows:
            if (r["knob"], r["value"]) == key:
                cells[f"{r['mode'].split('-')[1]}: {r['system']}"] = f"{r['ap']:.3f}" + (f" ({r['agreement']:.2f})" if "agreement" in r else "")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells.get(s, "") for s in systems) + " |")
    return "\n".join(lines) + "\n"


def results_table(rows: list[dict], speed: dict[str, dict] | None) -> str:
    """One table per corpus and N: AP (x teacher), recall and precision of the keep set, kept share
    (in and outside the training sample for the product's heads), agreement, speed (x fastText), fit time."""
    teacher_ap = {r["mode"]: r["ap"] for r in rows if r["system"] == "teacher"}
    fasttext_rate = speed["fastText predict"]["docs_per_cpu_s"] if speed else None
    lines = ["| mode | head on | AP | x teacher | recall at keep | precision at keep | kept share | kept in / outside sample | agreement with teacher | docs/CPU-s | x fastText | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] == "calibration":
            continue
        rate = None
        if speed:
            key = {"fastText": "fastText predict"}.get(r["system"], f"{r['system']}, {r['mode']}")
            rate = speed.get(key, {}).get("docs_per_cpu_s")
        agree = f"{r['agreement']:.3f}" if "agreement" in r else ""
        inside = f"{r['keep_in_sample']:.3f} / {r['keep_outside_sample']:.3f}" if r.get("keep_in_sample") is not None and r.get("keep_outside_sample") is not None else ""
        ratio = f"{r['ap'] / teacher_ap[r['mode']]:.2f}" if r["mode"] in teacher_ap else ""
        lines.append(f"| {r['mode']} | {r['system']} | {r['ap']:.3f} | {ratio} | {r['recall']:.3f} | {r['precision']:.3f} | {r['kept_share']:.4f} | {inside} | {agree} | "
                     f"{'' if rate is None else f'{rate:,.0f}'} | {'' if rate is None else f'{rate / fasttext_rate:.2f}'} | "
                     f"{r['fit_s'] if r['mode'] == 'reference-classifier' or r['system'] == 'product' else ''} |")
    return "\n".join(lines) + "\n"


def calibration_table(rows: list[dict]) -> str:
    """The product classifier's keep rule under each way of calibrating it: kept share of the corpus, in and outside the sample."""
    lines = ["| scoring, threshold | kept share (target " + f"{rows[0]['keep_fraction']:.4f}" + ") | kept in sample | kept outside sample | recall at keep |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] == "calibration":
            lines.append(f"| {r['system']} | {r['kept_share']:.4f} | {r['keep_in_sample']:.4f} | {r['keep_outside_sample']:.4f} | {r['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def bars(rows: list[dict], speed: dict[str, dict] | None) -> list[str]:
    """The issue's bars at the largest N, each stated as held or not, with the figures."""
    ap = {(r["mode"], r["system"]): r for r in rows}
    out = []

    def bar(text: str, held: bool) -> None:
        out.append(f"- {text}: {'holds' if held else 'fails'}")

    classifier, similarity = ap.get(("reference-classifier", "product")), ap.get(("reference-similarity", "product"))
    if classifier:
        simple = max((ap[k]["ap"], k[1]) for k in (("reference-classifier", "TF-IDF"), ("reference-classifier", "fastText")) if k in ap)
        teacher = ap["reference-classifier", "teacher"]["ap"]
        bar(f"product classifier AP {classifier['ap']:.3f} >= best simple head ({simple[1]} {simple[0]:.3f})", classifier["ap"] >= simple[0])
        bar(f"product classifier AP / teacher + LR = {classifier['ap'] / teacher:.3f} (bar 0.95)", classifier["ap"] >= 0.95 * teacher)
    if similarity:
        teacher = ap["reference-similarity", "teacher"]["ap"]
        tfidf = ap["reference-similarity", "TF-IDF"]["ap"]
        bar(f"product similarity AP / teacher similarity = {similarity['ap'] / teacher:.3f} (bar 0.95)", similarity["ap"] >= 0.95 * teacher)
        bar(f"product similarity AP {similarity['ap']:.3f} >= TF-IDF similarity {tfidf:.3f}", similarity["ap"] >= tfidf)
    for name, head in (("classifier", classifier), ("similarity", similarity)):
        if head:
            gap = abs(head["kept_share"] - head["keep_fraction"])
            bar(f"product {name} kept share {head['kept_share']:.4f} within 0.005 of {head['keep_fraction']:.4f}", gap <= 0.005)
            if head.get("keep_in_sample") is not None and head.get("keep_outside_sample") is not None:
                diff = abs(head["keep_in_sample"] - head["keep_outside_sample"])
                bar(f"product {name} keep rate in sample {head['keep_in_sample']:.4f} vs outside {head['keep_outside_sample']:.4f} (within 0.02)", diff <= 0.02)
    if speed:
        fasttext_rate = speed["fastText predict"]["docs_per_cpu_s"]
        for key in ("product, reference-classifier", "product, reference-similarity"):
            if key in speed:
                ratio = speed[key]["docs_per_cpu_s"] / fasttext_rate
                bar(f"{key}: {ratio:.2f} x fastText predict docs/CPU-s (bar 1.2)", ratio >= 1.2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=CORPORA[:4], choices=CORPORA,
                        help="kernel-docs (30,000 paragraphs, target networking/) is left out by default: its teacher pass is the longest")
    parser.add_argument("--n", nargs="+", type=int, default=[100, 1000], help="reference set sizes (nested draws)")
    parser.add_argument("--sample-size", type=int, default=4_000,
                        help="the student's training sample (before the 15%% held out); smaller than the corpora, so that some documents are outside it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="use at most this many documents of each corpus (a seeded draw)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4,000 documents a corpus, N = 100 and 300, 2,000 training documents")
    parser.add_argument("--tune", action="store_true", help="also sweep C, the negatives count, fastText's epochs and rate, and top_k on the first corpus")
    parser.add_argument("--teacher-only", action="store_true", help="only embed (and cache) the corpora with the teacher")
    parser.add_argument("--no-speed", action="store_true", help="skip the scoring-speed runs")
    parser.add_argument("--no-references-student", action="store_true", help="skip the second student whose sample holds the reference set")
    parser.add_argument("--c", type=float, default=HeadSettings.c)
    parser.add_argument("--negatives", type=int, default=HeadSettings.negatives)
    parser.add_argument("--top-k", type=int, default=HeadSettings.top_k)
    parser.add_argument("--output", type=Path, default=CACHE_DIR / "curation.json", help="where the JSON results go")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.n, args.sample_size = args.limit or 4_000, [100, 300], min(args.sample_size, 2_000)
    settings = HeadSettings(c=args.c, negatives=args.negatives, top_k=args.top_k)
    teacher = Teacher()
    cache = TeacherCache(teacher)
    report: dict = {"settings": settings.__dict__, "sample_size": args.sample_size, "seed": args.seed, "corpora": {}}
    for index, name in enumerate(args.corpus):
        corpus = load_corpus(name, args.limit)
        if corpus is None:
            package = missing_packages(name)
            log(f"{name}: skipped, Debian's {package} is not installed (apt-get install {package})")
            continue
        split = make_split(corpus, args.n, args.sample_size, args.seed)
        positives = int(corpus.positive.sum())
        log(f"{name}: {len(corpus.texts)} documents, target {corpus.target_name}: {positives} ({positives / len(corpus.texts):.1%}); "
            f"student sample {len(split.train)} train + {len(split.heldout)} held out")
        vectors, train_sums, reference_sums = teacher_vectors(cache, corpus, split)
        if args.teacher_only:
            continue
        students, student_info = {}, {}
        largest = split.references[max(args.n)]
        plans = [("student", split.train, train_sums)]
        if not args.no_references_student:
            plans.append(("student_refs", np.concatenate([split.train, largest]), TokenSums.merge([train_sums, reference_sums], vectors.shape[1])))
        for key, rows, sums in plans:
            log(f"{name}: training {key} on {len(rows)} documents")
            student, info = cached_student(teacher, name, key, [corpus.texts[i] for i in rows], vectors[rows], sums)
            heldout_texts = [corpus.texts[i] for i in split.heldout]
            info["heldout_recall_at_10"] = round(neighbour_recall(student.encode(heldout_texts), vectors[split.heldout]), 4)
            students[key], student_info[key] = student, info
            log(f"  {json.dumps(info)}")
        features, vectorizer = build_features_for(corpus, split, vectors, students)
        entry = {"documents": len(corpus.texts), "target": corpus.target_name, "target_documents": positives, "students": student_info, "runs": {}}
        if args.tune and index == 0:
            rows = tune(corpus, split, max(args.n), features, students["student"], args.seed)
            entry["tuning"] = rows
            print(f"**{name}, N = {max(args.n)}: head settings, one knob at a time from {settings.__dict__}**\n\n{tuning_table(rows)}", flush=True)
        for n in args.n:
            rows = evaluate(corpus, split, n, features, settings, args.seed, students=students)
            speed = None
            if n == max(args.n) and not args.no_speed:
                log(f"{name}: scoring speed, N = {n}")
                speed = scoring_speed(corpus, split, n, students["student"], features, vectorizer, cache, settings, args.seed)
            if n != max(args.n):  # the second student's sample holds the largest reference set
                rows = [r for r in rows if "references in sample" not in r["system"]]
            entry["runs"][n] = {"rows": rows, "speed": speed}
            r0 = rows[0]
            title = (f"**{name}, N = {n}**: {r0['corpus_documents']} corpus documents, {r0['positives']} of the target group "
                     f"({corpus.target_name}); keep fraction {r0['keep_fraction']:.3f} (the target's share)")
            print(f"{title}\n\n{results_table(rows, speed)}", flush=True)
            if any(r["mode"] == "calibration" for r in rows):
                print(f"Calibration of the product classifier, {name}, N = {n}:\n\n{calibration_table(rows)}", flush=True)
            if n == max(args.n):
                print("\n".join(bars(rows, speed)) + "\n", flush=True)
        report["corpora"][name] = entry
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    log(f"results written to {args.output}")


if __name__ == "__main__":
    main()
