"""Peak memory of encoding a large parquet file with `LexicalEmbedder.encode_parquet`.

    python -m bench.memory [--docs 200000]

Writes a parquet file of generated documents (pairs of sample docstrings, so lengths vary
from a few tokens to a few thousand), then streams it through a model of the bench's shape
(200k n-grams, 256-256-384, float16 first layer) in a fresh subprocess and reports that
process's peak RSS (VmHWM: ru_maxrss would count the parent's pages at fork time), next to
its RSS once the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
import numpy as np
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.progress import status_mib
model = LexicalEmbedder.load(sys.argv[1])
model._unigrams  # build the lookup tables before the baseline reading
loaded = status_mib("VmRSS")
load_peak = status_mib("VmHWM")
started = time.perf_counter()
rows, checksum = 0, 0.0
for batch in model.encode_parquet(sys.argv[2], threads=2):
    rows += len(batch)
    checksum += float(batch[:, 0].sum())
seconds = time.perf_counter() - started
peak = status_mib("VmHWM")
print(json.dumps({"rows": rows, "seconds": seconds, "loaded_mib": loaded, "peak_mib": peak, "load_peak_mib": load_peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpora import sample_texts
    from bench.encode import HIDDEN, MAX_N, VOCABULARY, plain_tokenizer_json
    from embedding_assets.engine import LexicalEmbedder
    from embedding_assets.engine.features import build_features
    from embedding_assets.engine.network import init_layers

    texts = sample_texts()
    tokenizer_json = plain_tokenizer_json()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batches = [texts[i : i + 2048] for i in range(0, len(texts), 2048)]
        feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], batches, VOCABULARY, MAX_N, 2, 2_000_000)
        model = LexicalEmbedder(tokenizer_json, feats.vocabulary, init_layers([feats.vocabulary.size, *HIDDEN], 0), np.full(HIDDEN[-1], HIDDEN[-1] ** -0.5, np.float32), 0.3, first_layer_dtype="float16")
        model.save(tmp / "model.safetensors")

        writer = None
        rng = np.random.default_rng(0)
        total_chars = 0
        for start in range(0, args.docs, 10_000):
            n = min(10_000, args.docs - start)
            a, b = rng.integers(0, len(texts), n), rng.integers(0, len(texts), n)
            docs = [texts[i] + "\n\n" + texts[j] for i, j in zip(a, b)]
            total_chars += sum(map(len, docs))
            table = pa.table({"id": [str(start + k) for k in range(n)], "text": docs})
            writer = writer or pq.ParquetWriter(tmp / "docs.parquet", table.schema)
            writer.write_table(table, row_group_size=10_000)
        writer.close()
        size_mib = (tmp / "docs.parquet").stat().st_size / 2**20

        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "model.safetensors"), str(tmp / "docs.parquet")],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2", "RAYON_NUM_THREADS": "2"})
        if out.returncode != 0:
            sys.exit(out.stderr)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{result['rows']:,} documents ({total_chars / 2**20:,.0f} MiB of text, parquet {size_mib:,.0f} MiB), "
              f"model {model.dims[0]:,}-{'-'.join(map(str, HIDDEN))}: encoded in {result['seconds']:.1f} s "
              f"({result['rows'] / result['seconds']:,.0f} docs/s); RSS after loading the model {result['loaded_mib']:,.0f} MiB, "
              f"peak RSS while loading {result['load_peak_mib']:,.0f} MiB, peak RSS overall {result['peak_mib']:,.0f} MiB (subprocess wall {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
