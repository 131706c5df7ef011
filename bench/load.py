"""Load: score a synthetic 1M-document corpus in shards, and the peak RSS of the scoring process.

    python -m bench.load [--docs 1000000] [--shards 20] [--words 40] [--seed 0] [--workdir DIR]

Trains a small model once on the sample corpus (as bench.scale does), then generates the corpus
from the seed (nothing stored: documents of about WORDS words drawn from the sample's word
frequencies, written as parquet shards in a temporary directory), ingests every shard, and scores
them one after another in ONE fresh process, each shard a `scored_corpus` materialisation through
Dagster (the real scoring code path). After each shard the process reports its documents so far,
its peak RSS and its current RSS: since shards stream in record batches, the peak after the first
100k documents and after all of them should be the same. The peak is the process's own high-water
mark (VmHWM): ru_maxrss would not do, since Linux carries it over from the parent through
vfork and exec, and the parent held the teacher while training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCORER = r"""
import json, os, sys, time
import dagster as dg
from embedding_assets.definitions import ALL_ASSETS, resources_from_env
from embedding_assets.progress import status_mib
from embedding_assets.resources import Compute

instance = dg.DagsterInstance.get()
resources = {**resources_from_env(), "compute": Compute(device="cpu")}
shards = sys.argv[1:]
docs = 0
started = time.perf_counter()
for shard in shards:
    result = dg.materialize(ALL_ASSETS, selection=["scored_corpus"], partition_key=shard, instance=instance, resources=resources)
    [event] = result.get_asset_materialization_events()
    docs += event.materialization.metadata["dagster/row_count"].value
    print(json.dumps({"shard": shard, "docs": docs, "seconds": time.perf_counter() - started,
                      "peak_rss_mb": status_mib("VmHWM"), "rss_mb": status_mib("VmRSS")}), flush=True)
"""


def word_distribution(top: int = 30_000) -> tuple[list[str], np.ndarray]:
    from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR

    counts: Counter[str] = Counter()
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet")):
        for text in pq.read_table(path, columns=["text"])["text"].to_pylist():
            counts.update(text.split())
    words, freq = zip(*counts.most_common(top))
    freq = np.array(freq, dtype=np.float64)
    return list(words), freq / freq.sum()


def write_synthetic_corpus(directory: Path, docs: int, shards: int, words_per_doc: int, seed: int) -> list[str]:
    """`docs` documents in `shards` parquet files; the same seed gives the same corpus."""
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary, probabilities = word_distribution()
    vocabulary = np.array(vocabulary, dtype=object)
    rng = np.random.default_rng(seed)
    names = []
    per_shard = -(-docs // shards)
    for s in range(shards):
        n = min(per_shard, docs - s * per_shard)
        if n <= 0:
            break
        lengths = rng.integers(words_per_doc // 2, words_per_doc * 3 // 2 + 1, size=n)
        tokens = vocabulary[rng.choice(len(vocabulary), size=int(lengths.sum()), p=probabilities)]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        texts = [" ".join(tokens[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        name = f"synthetic-{s:03d}"
        ids = [f"{name}:{i}" for i in range(n)]
        pq.write_table(pa.table({"id": ids, "text": texts}), directory / f"{name}.parquet")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--words", type=int, default=40, help="mean words per document")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where corpora, storage and instances go (default: a temp dir)")
    args = parser.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-load-"))
    root.mkdir(parents=True, exist_ok=True)

    from bench.scale import fresh_instance, train, write_corpus

    storage = root / "storage"
    started = time.perf_counter()
    write_corpus(root / "corpus-4", 4)
    train(root, storage)
    print(f"trained a small model in {time.perf_counter() - started:.0f} s; workdir {root}", flush=True)

    started = time.perf_counter()
    corpus = root / "synthetic"
    shards = write_synthetic_corpus(corpus, args.docs, args.shards, args.words, args.seed)
    size = sum(p.stat().st_size for p in corpus.glob("*.parquet"))
    print(f"generated {args.docs:,} documents in {len(shards)} shards ({size / 2**20:.0f} MiB of parquet) in {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    instance = fresh_instance(root, corpus, storage)  # registers and ingests every shard
    home = instance.root_directory
    instance.dispose()
    print(f"ingested in {time.perf_counter() - started:.0f} s", flush=True)

    env = {**os.environ, "DAGSTER_HOME": home, "EMBEDDING_ASSETS_CORPUS": str(corpus), "EMBEDDING_ASSETS_STORAGE": str(storage)}
    child = subprocess.Popen([sys.executable, "-c", SCORER, *shards], env=env, stdout=subprocess.PIPE, text=True)
    print(f"{'shards':>6} {'documents':>10} {'seconds':>8} {'docs/s':>7} {'peak RSS MB':>11} {'RSS MB':>7}")
    reports = []
    for line in child.stdout:
        if not line.startswith("{"):
            continue
        report = json.loads(line)
        reports.append(report)
        print(f"{len(reports):>6} {report['docs']:>10,} {report['seconds']:>8.1f} {report['docs'] / report['seconds']:>7.0f} {report['peak_rss_mb']:>11.0f} {report['rss_mb']:>7.0f}", flush=True)
    if child.wait() != 0 or not reports:
        print(f"the scoring process failed (rc {child.returncode})", file=sys.stderr)
        return 1
    first = next(r for r in reports if r["docs"] >= min(100_000, reports[-1]["docs"]))
    last = reports[-1]
    print(
        f"peak RSS of the scoring process: {first['peak_rss_mb']:.0f} MB after {first['docs']:,} documents, "
        f"{last['peak_rss_mb']:.0f} MB after {last['docs']:,}; {last['docs'] / last['seconds']:.0f} docs/s overall "
        f"({last['seconds']:.0f} s, one scoring run per shard, Dagster run overhead included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
