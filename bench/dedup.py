"""Semantic near-duplicates: precision and recall on planted duplicates, speed and memory at scale,
and the cluster balance of the selection.

    make run                      # the student, classifier and clusters of the sample, in data/storage
    python -m bench.dedup         # everything below; --no-anchors skips semhash and MinHash, --scale 0 the scale part

The corpus: the built-in sample's prose docstrings (40 words or more, no doctests, at least 60%
letters, so no ASCII tables), with exact
repeats and lexical near-repeats (word 3-gram Jaccard >= 0.3, or containment >= 0.5) removed, so
that the only near-duplicates are, as far as words tell, the planted ones. Of these documents, `--originals` get one edited copy each (a family of two), one
edit kind per quarter: the boilerplate header and footer around the text changed; a paragraph
(or, in one-paragraph documents, a sentence) swapped, deleted, or added from another document;
3 to 6 words replaced by random words of the corpus; the text put inside another page, between
two halves of another document half its length (added paragraphs and host pages come from 300
documents kept out of the corpus). The truth is the pair (original, copy).

Each system runs on the same corpus; its duplicate pairs are (member, representative) of its
groups, so a family of two is one pair:
- ours: `engine.clustering.duplicates_by_cluster`, what the `near_duplicates` asset runs, on uint8
  codes within 32 spherical k-means clusters (what `clusters` fits), for the student of `make run`
  and for the teacher's vectors (all-MiniLM-L6-v2, cached under .bench_cache/);
- semhash 0.5.0 on a model2vec 0.10.0 static model distilled from the same teacher directory
  (no hub; cached under .bench_cache/), at its default threshold 0.9 and at ours;
- MinHash LSH (datasketch 2.0.0, 128 permutations, threshold 0.8) on word 5-gram shingles,
  candidates kept when their MinHash Jaccard estimate is >= 0.8.

Scale: `duplicates_by_cluster` on 100k and 1M synthetic-but-realistic vectors: the student's
embeddings of the sample's 11,791 documents, each drawn many times with Gaussian noise (cosine
about 0.7 to its source, so repeats are not duplicates), and 10% of rows near-copies of another
row (cosine about 0.97), quantised to uint8 as scored shards store them, in 32 clusters fitted
on a 100k sample; each size in a fresh process, CPU seconds and peak RSS (VmHWM) of the search.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.corpora import sample_texts  # noqa: E402
from embedding_assets.engine import LexicalEmbedder  # noqa: E402
from embedding_assets.engine import clustering  # noqa: E402
from embedding_assets.engine.quantization import calibrate_limit, quantize_uint8  # noqa: E402

CACHE_DIR = Path(os.environ.get("EMBEDDING_ASSETS_BENCH_CACHE", Path(__file__).resolve().parent.parent / ".bench_cache"))
KINDS = ("boilerplate", "paragraph", "words", "inside another page")
HEADERS = [
    "Python documentation | Library reference | Previous topic | Next topic",
    "Docs by version: 3.11 3.12 3.13 | Search | Index | Modules",
    "Skip to content. Documentation home > Standard library > Modules",
    "Navigation: index modules next previous | Python 3 documentation",
]
FOOTERS = [
    "Copyright 2001-2024, Python Software Foundation. Last updated on Jan 01, 2024. Found a bug?",
    "This page is licensed under the PSF License. Show source. Report a bug.",
    "Created using Sphinx. Page generated from the reStructuredText source.",
    "Please donate to the PSF. Last modified: 2023-06-15. Edit on GitHub.",
]
K = 32
PARTS = ("planted", "scale", "balance")
HOSTS = 300


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def words(text: str) -> list[str]:
    return text.split()


def shingles(text: str, n: int) -> set[str]:
    tokens = re.findall(r"\w+", text.lower())
    return {" ".join(tokens[i : i + n]) for i in range(max(len(tokens) - n + 1, 1))}


def clean_base(texts: list[str], min_words: int = 40) -> list[str]:
    """Prose documents of `min_words` or more (no doctests, no tables: 60% letters or more), none lexically close to an earlier one:
    word 3-gram Jaccard >= 0.3, or one holding half of the other's 3-grams."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer

    seen, base = set(), []
    for text in texts:
        key = " ".join(text.split()).lower()
        letters = sum(c.isalpha() for c in text) / max(len(text), 1)
        if len(text.split()) >= min_words and ">>>" not in text and letters >= 0.6 and key not in seen:
            seen.add(key)
            base.append(text)
    grams = CountVectorizer(ngram_range=(3, 3), binary=True, token_pattern=r"\w+").fit_transform(base).astype(np.float32)
    grams = sp.csr_matrix(grams)
    size = np.asarray(grams.sum(axis=1)).ravel()
    shared = (grams @ grams.T).tocoo()
    i, j, both = shared.row, shared.col, shared.data
    upper = i < j
    i, j, both = i[upper], j[upper], both[upper]
    close = (both / (size[i] + size[j] - both) >= 0.3) | (both / np.maximum(np.minimum(size[i], size[j]), 1) >= 0.5)
    dropped = np.zeros(len(base), dtype=bool)
    for a, b in sorted(zip(i[close].tolist(), j[close].tolist())):
        if not dropped[a]:
            dropped[b] = True
    return [t for t, d in zip(base, dropped) if not d]


def units(text: str) -> tuple[list[str], str]:
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) >= 3:
        return paragraphs, "\n\n"
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s], " "


def edit(text: str, kind: str, rng: np.random.Generator, others: list[str], vocabulary: list[str]) -> tuple[str, str]:
    """(the original as it stands in the corpus, its edited copy) for one edit kind."""
    if kind == "boilerplate":
        h1, h2 = rng.choice(len(HEADERS), 2, replace=False)
        f1, f2 = rng.choice(len(FOOTERS), 2, replace=False)
        return f"{HEADERS[h1]}\n\n{text}\n\n{FOOTERS[f1]}", f"{HEADERS[h2]}\n\n{text}\n\n{FOOTERS[f2]}"
    if kind == "paragraph":
        parts, sep = units(text)
        how = rng.integers(3) if len(parts) >= 2 else 2
        if how == 0:  # swap two
            i, j = rng.choice(len(parts), 2, replace=False)
            parts[i], parts[j] = parts[j], parts[i]
        elif how == 1:  # delete one
            del parts[int(rng.integers(len(parts)))]
        else:  # add one from another document
            extra, _ = units(others[int(rng.integers(len(others)))])
            parts.insert(int(rng.integers(len(parts) + 1)), extra[int(rng.integers(len(extra)))])
        return text, sep.join(parts)
    if kind == "words":
        tokens = text.split(" ")
        for i in rng.choice(len(tokens), min(len(tokens), int(rng.integers(3, 7))), replace=False):
            tokens[i] = vocabulary[int(rng.integers(len(vocabulary)))]
        return text, " ".join(tokens)
    host = words(others[int(rng.integers(len(others)))])
    host = host[: max(len(words(text)) // 2, 2)]
    half = len(host) // 2
    return text, " ".join(host[:half]) + "\n\n" + text + "\n\n" + " ".join(host[half:])


def build_corpus(originals: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, set[tuple[int, int]]]:
    """Texts, each one's family (-1: none), the edit kind index of each copy (-1: not a copy), and the true pairs."""
    rng = np.random.default_rng(seed)
    base = clean_base(sample_texts())
    order = rng.permutation(len(base))
    # Added paragraphs and host pages come from documents left out of the corpus, so that an
    # edited copy is not also a near-duplicate of a third document.
    chosen, hosts, rest = order[:originals], order[originals : originals + HOSTS], order[originals + HOSTS :]
    others = [base[i] for i in rest]
    fillers = [base[i] for i in hosts]
    vocabulary = sorted({w for t in others for w in re.findall(r"[a-z]{4,}", t)})
    texts, family, kind = [], [], []
    truth = set()
    for f, i in enumerate(chosen):
        k = f % len(KINDS)
        original, copy = edit(base[i], KINDS[k], rng, fillers, vocabulary)
        texts += [original, copy]
        family += [f, f]
        kind += [-1, k]
        truth.add((len(texts) - 2, len(texts) - 1))
    texts += others
    family += [-1] * len(others)
    kind += [-1] * len(others)
    shuffle = rng.permutation(len(texts))
    where = np.empty_like(shuffle)
    where[shuffle] = np.arange(len(shuffle))
    truth = {tuple(sorted((int(where[a]), int(where[b])))) for a, b in truth}
    return [texts[i] for i in shuffle], np.array(family)[shuffle], np.array(kind)[shuffle], truth


def cached(name: str, texts: list[str], compute) -> np.ndarray:
    digest = hashlib.sha256(name.encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = CACHE_DIR / f"dedup-{name}-{digest.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    vectors = compute(texts)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return vectors


def teacher_vectors(texts: list[str]) -> np.ndarray:
    from embedding_assets.resources.teacher import Teacher

    teacher = Teacher()

    def compute(texts):
        model = teacher.load("cpu")
        started, parts = time.perf_counter(), []
        for start in range(0, len(texts), 512):
            parts.append(teacher.embed(model, texts[start : start + 512], "cpu", "fp32"))
            log(f"  teacher {start + len(parts[-1])}/{len(texts)}, {(start + len(parts[-1])) / (time.perf_counter() - started):.1f} docs/s")
        return np.concatenate(parts)

    return cached("teacher-" + json.dumps(teacher.identity(), sort_keys=True), texts, compute)


def our_pairs(codes: np.ndarray, threshold: float, seed: int = 0) -> set[tuple[int, int]]:
    """(member, representative) pairs of the groups `near_duplicates` would find: clusters, then blocks."""
    centroids = clustering.spherical_kmeans(clustering.centred(codes), K, seed)
    cluster, _ = clustering.assign_clusters(clustering.centred(codes), centroids)
    found = clustering.duplicates_by_cluster(codes, cluster, np.arange(len(codes)), threshold, seed=seed)
    members = np.flatnonzero((found.representative >= 0) & (found.representative != np.arange(len(codes))))
    return {tuple(sorted((int(m), int(found.representative[m])))) for m in members}


def quantised(vectors: np.ndarray) -> np.ndarray:
    return quantize_uint8(vectors, calibrate_limit(vectors))


def minhash_pairs(texts: list[str]) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    hashes = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([s.encode() for s in shingles(text, 5)])
        hashes.append(m)
        lsh.insert(i, m)
    left, right = [], []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            if j > i and m.jaccard(hashes[j]) >= 0.8:
                left.append(i)
                right.append(j)
    similarity = np.ones(len(left), dtype=np.float32)
    representative, _ = clustering.greedy_groups(len(texts), np.array(left, dtype=np.int64), np.array(right, dtype=np.int64), similarity, np.arange(len(texts)))
    members = np.flatnonzero((representative >= 0) & (representative != np.arange(len(texts))))
    return {tuple(sorted((int(m), int(representative[m])))) for m in members}


def static_model():
    """A model2vec static model distilled from the teacher's directory, cached on disk."""
    from model2vec import StaticModel

    from embedding_assets.resources.teacher import default_teacher_dir

    path = CACHE_DIR / "model2vec-all-minilm-l6-v2"
    if not (path / "model.safetensors").exists():
        from model2vec.distill import distill

        log(f"distilling a model2vec static model from {default_teacher_dir()} (cached at {path})")
        distill(model_name=str(default_teacher_dir()), pca_dims=256).save_pretrained(str(path))
    return StaticModel.from_pretrained(str(path))


def semhash_pairs(texts: list[str], threshold: float, model) -> set[tuple[int, int]]:
    from semhash import SemHash

    index = {text: i for i, text in enumerate(texts)}
    semhash = SemHash.from_records(records=texts, model=model)
    result = semhash.self_deduplicate(threshold=threshold)
    pairs = set()
    for dropped in result.filtered:
        pairs.add(tuple(sorted((index[dropped.record], index[dropped.duplicate_of]))))
    return pairs


def score(found: set, truth: set, kind: np.ndarray) -> dict:
    hits = found & truth
    row = {"pairs": len(found), "precision": len(hits) / max(len(found), 1), "recall": len(hits) / max(len(truth), 1)}
    copy_kind = {pair: max(kind[pair[0]], kind[pair[1]]) for pair in truth}
    for k, name in enumerate(KINDS):
        of_kind = {p for p in truth if copy_kind[p] == k}
        row[name] = len(of_kind & hits) / max(len(of_kind), 1)
    return row


SCALE_CHILD = r"""
import json, sys, time
import numpy as np
from embedding_assets.engine import clustering
from embedding_assets.progress import status_mib
codes = np.load(sys.argv[1])
threshold = float(sys.argv[2])
n = len(codes)
# What `clusters` fits (32 clusters, a 100k sample) and `scored_corpus` assigns, before the search.
centroids = clustering.spherical_kmeans(clustering.centred(codes[:100_000]), 32, 0)
cluster = np.concatenate([clustering.assign_clusters(clustering.centred(codes[s:s + 100_000]), centroids)[0] for s in range(0, n, 100_000)])
before = status_mib("VmHWM")
cpu0, wall0 = time.process_time(), time.perf_counter()
found = clustering.duplicates_by_cluster(codes, cluster, np.arange(n), threshold)
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
dropped = int(((found.representative >= 0) & (found.representative != np.arange(n))).sum())
print(json.dumps({"n": n, "cpu_s": cpu, "wall_s": wall, "peak_mib": status_mib("VmHWM"), "peak_before_search_mib": before,
                  "duplicates": dropped, "compared_pairs": found.compared_pairs, "largest_block": found.largest_block}))
"""


def synthetic_codes(base: np.ndarray, n: int, path: Path, chunk: int = 100_000, seed: int = 0) -> int:
    """n uint8 codes written to `path`: rows of `base` (unit vectors) with noise that leaves a cosine
    of about 0.7 to their source, a tenth of each chunk replaced by near-copies (cosine about 0.97)
    of other rows of the chunk. Made chunk by chunk, so the float vectors are never all in memory."""
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, d))
    limit = None
    planted = 0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = clustering.unit_rows(base[rng.integers(len(base), size=m)] + rng.normal(0, 0.052, size=(m, d)).astype(np.float32))
        copies = rng.choice(m, m // 10, replace=False)
        x[copies] = clustering.unit_rows(x[rng.integers(m, size=len(copies))] + rng.normal(0, 0.0128, size=(len(copies), d)).astype(np.float32))
        limit = limit or calibrate_limit(x)
        out[start : start + m] = quantize_uint8(x, limit)
        planted += len(copies)
    out.flush()
    del out
    return planted


def scale(model: LexicalEmbedder, sizes: list[int], threshold: float) -> list[dict]:
    base = model.encode(sample_texts())
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        path = CACHE_DIR / f"dedup-scale-{n}.npy"
        planted = synthetic_codes(base, n, path)
        log(f"scale: {n:,} documents in a fresh process")
        out = subprocess.run([sys.executable, "-c", SCALE_CHILD, str(path), str(threshold)], capture_output=True, text=True, check=True)
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "planted": planted})
        path.unlink()
    return rows


def selection_balance(storage: Path, threshold: float) -> list[dict] | None:
    """Cluster-size entropy of the keep set on the scored sample of `make run`, by selection rule."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((storage / "scored_corpus").glob("*.parquet"))
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f, columns=["id", "embedding", "cluster", "score", "keep"]) for f in files])
    if table["cluster"].null_count:
        return None
    cluster = table["cluster"].to_numpy()
    k = int(cluster.max()) + 1
    codes = table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    keep = table["keep"].to_numpy(zero_copy_only=False)
    rank = clustering.rank_by_score(table["score"].to_numpy().astype(np.float64), table["id"].to_numpy(zero_copy_only=False))
    found = clustering.duplicates_by_cluster(codes, cluster, rank, threshold)
    unique = ~((found.representative >= 0) & (found.representative != np.arange(len(cluster))))
    rules = {
        "score threshold only": keep,
        "threshold + near-duplicates dropped": keep & unique,
        "+ temperature 0.5": clustering.balanced_keep(cluster, keep & unique, rank, k, temperature=0.5),
        "+ temperature 0": clustering.balanced_keep(cluster, keep & unique, rank, k, temperature=0.0),
    }
    median = int(np.median(np.bincount(cluster[keep & unique], minlength=k)))
    rules[f"+ cap of {median} per cluster (the median)"] = clustering.balanced_keep(cluster, keep & unique, rank, k, cap=max(median, 1))
    largest = lambda m: float(np.bincount(cluster[m], minlength=k).max() / max(m.sum(), 1))  # noqa: E731
    return [{"rule": name, "kept": int(m.sum()), "entropy": clustering.size_entropy(cluster[m], k), "max_entropy": float(np.log2(k)), "largest_cluster_share": largest(m)} for name, m in rules.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, default=Path("data/storage"), help="where `make run` left the model and the scored shards")
    parser.add_argument("--originals", type=int, default=1000, help="documents that get an edited copy")
    parser.add_argument("--threshold", type=float, default=None, help="our threshold (default: the near_duplicates default)")
    parser.add_argument("--scale", type=int, nargs="*", default=[100_000, 1_000_000], help="corpus sizes of the scale part (0 to skip)")
    parser.add_argument("--no-anchors", action="store_true", help="skip semhash and MinHash")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    args = parser.parse_args(argv)
    from embedding_assets.assets.selection import DEFAULT_THRESHOLD

    threshold = args.threshold or DEFAULT_THRESHOLD
    model_path = args.storage / "distilled_model.safetensors"
    if not model_path.exists():
        sys.exit(f"{model_path} is missing: run `make run` first (it trains the student on the sample)")
    model = LexicalEmbedder.load(model_path)
    if "planted" in args.parts:
        planted_part(model, args.originals, threshold, not args.no_anchors)
    sizes = [n for n in args.scale if n > 0]
    if sizes and "scale" in args.parts:
        scale_part(model, sizes, threshold)
    if "balance" in args.parts:
        balance_part(args.storage, threshold)


def planted_part(model: LexicalEmbedder, originals: int, threshold: float, anchors: bool) -> None:
    texts, family, kind, truth = build_corpus(originals)
    log(f"corpus: {len(texts)} documents, {len(truth)} planted pairs")
    student_codes = model.quantize(model.encode(texts))
    teacher_codes = quantised(teacher_vectors(texts))

    sweep = []
    for t in np.round(np.arange(0.80, 0.985, 0.01), 2):
        sweep.append({"threshold": float(t), **{f"student {k}": v for k, v in score(our_pairs(student_codes, t), truth, kind).items() if k in ("precision", "recall")},
                      **{f"teacher {k}": v for k, v in score(our_pairs(teacher_codes, t), truth, kind).items() if k in ("precision", "recall")}})
    print(f"\n## Near-duplicates on the planted corpus ({len(texts):,} documents, {len(truth):,} planted pairs)\n")
    print("Threshold sweep of our search (cluster, then blocks), student and teacher:\n")
    print("| threshold | student precision | student recall | teacher precision | teacher recall |\n|---:|---:|---:|---:|---:|")
    for row in sweep:
        print(f"| {row['threshold']:.2f} | {row['student precision']:.3f} | {row['student recall']:.3f} | {row['teacher precision']:.3f} | {row['teacher recall']:.3f} |")
    passing = [row["threshold"] for row in sweep if row["student precision"] >= 0.95]
    print(f"\nLowest threshold with student precision >= 0.95: {min(passing) if passing else 'none'}; the default is {threshold}.\n")

    systems = {}
    timings = {}
    started = time.process_time()
    systems[f"ours, student, threshold {threshold}"] = score(our_pairs(student_codes, threshold), truth, kind)
    timings[f"ours, student, threshold {threshold}"] = time.process_time() - started
    systems[f"ours on the teacher's vectors, threshold {threshold}"] = score(our_pairs(teacher_codes, threshold), truth, kind)
    if anchors:
        started = time.process_time()
        systems["MinHash LSH, 128 permutations, Jaccard 0.8, word 5-grams"] = score(minhash_pairs(texts), truth, kind)
        timings["MinHash LSH, 128 permutations, Jaccard 0.8, word 5-grams"] = time.process_time() - started
        static = static_model()
        for t in sorted({0.9, threshold}):
            systems[f"semhash (model2vec from the teacher), threshold {t}"] = score(semhash_pairs(texts, t, static), truth, kind)
    print("| system | pairs found | precision | recall | " + " | ".join(f"recall: {k}" for k in KINDS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(KINDS))
    for name, row in systems.items():
        print(f"| {name} | {row['pairs']} | {row['precision']:.3f} | {row['recall']:.3f} | " + " | ".join(f"{row[k]:.3f}" for k in KINDS) + " |")
    minhash = systems.get("MinHash LSH, 128 permutations, Jaccard 0.8, word 5-grams")
    ours = systems[f"ours, student, threshold {threshold}"]
    if minhash:
        print(f"\nStudent recall / MinHash recall: {ours['recall'] / max(minhash['recall'], 1e-9):.2f}x; student precision {ours['precision']:.3f}.")
    for name, seconds in timings.items():
        print(f"- {name}: {seconds:.2f} CPU-s for {len(texts):,} documents (ours: clustering and search; MinHash: hashing, LSH and verification; embedding not counted)")


def scale_part(model: LexicalEmbedder, sizes: list[int], threshold: float) -> None:
    if sizes:
        rows = scale(model, sizes, threshold)
        print("\n## Near-duplicate search at scale (synthetic vectors from the student's embeddings of the sample)\n")
        print("| documents | CPU s | wall s | docs per CPU-second | peak RSS MiB | pairs compared | largest block | duplicates found / planted |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['n']:,} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {r['n'] / r['cpu_s']:,.0f} | {r['peak_mib']:.0f} | {r['compared_pairs']:,} | {r['largest_block']} | {r['duplicates']:,} / {r['planted']:,} |")
        if len(rows) >= 2:
            a, b = rows[0], rows[-1]
            growth = b["cpu_s"] / a["cpu_s"]
            nlogn = b["n"] * np.log(b["n"]) / (a["n"] * np.log(a["n"]))
            print(f"\nCPU time grew {growth:.1f}x for {b['n'] / a['n']:.0f}x the documents; n log n would be {nlogn:.1f}x.")


def balance_part(storage: Path, threshold: float) -> None:
    balance = selection_balance(storage, threshold)
    if balance:
        print("\n## Cluster balance of the keep set (the scored sample of `make run`)\n")
        print("| selection rule | kept | cluster-size entropy (bits) | of at most | largest cluster's share |\n|---|---:|---:|---:|---:|")
        for r in balance:
            print(f"| {r['rule']} | {r['kept']:,} | {r['entropy']:.3f} | {r['max_entropy']:.3f} | {r['largest_cluster_share']:.3f} |")


if __name__ == "__main__":
    main()
