"""Start-up cost of the two ways in: the engine's encode path and the code location, before and after a change.

    python -m bench.startup [--before REV] [--runs 5]

Lays out two source trees the way a wheel installs them (`jobs/` and `resources/` under
`embedding_assets/`): REV from git (default: the commit before the light engine path) and the
working tree. Then, in fresh processes on each tree, in turn:

- **encode**: `from embedding_assets.engine import LexicalEmbedder; LexicalEmbedder.load(p).encode(texts)`
  on a model of the bench's shape (the sample's n-grams, 256-256-384, float16 first layer);
- **definitions**: `import embedding_assets.definitions`, what every step process and code-server load does.

Each reports wall seconds (import, load, encode), RSS and peak RSS (VmHWM) and which heavy
modules ended up in `sys.modules`; the table shows the median of `--runs` runs after one
warm-up run per tree (which fills numba's on-disk cache).

- **load memory**: in a fresh process, a small model (2,000 n-grams, the same tokenizer) is
  loaded first, to pay the one-time costs of any load (the tokenizer library, numba's runtime);
  then the peak RSS that loading the bench's model adds over the process before it, as a
  multiple of the model file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "8e22a07"  # main before the light engine path, memory-mapped loading and the train extra
HEAVY = ["torch", "sklearn", "great_expectations", "sentence_transformers", "transformers", "scipy", "numba", "pandas", "matplotlib"]

ENCODE = r"""
import json, sys, time
def mib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
t0 = time.perf_counter()
from embedding_assets.engine import LexicalEmbedder
t1 = time.perf_counter()
before_load = mib("VmRSS")
model = LexicalEmbedder.load(sys.argv[1])
t2 = time.perf_counter()
load_peak = mib("VmHWM")
vectors = model.encode(json.load(open(sys.argv[2])))
t3 = time.perf_counter()
import embedding_assets
print(json.dumps({"source": embedding_assets.__file__, "import_s": t1 - t0, "load_s": t2 - t1, "encode_s": t3 - t2,
                  "rss_before_load_mib": before_load, "load_peak_mib": load_peak, "rss_mib": mib("VmRSS"), "peak_mib": mib("VmHWM"),
                  "modules": [m for m in json.loads(sys.argv[3]) if m in sys.modules], "rows": len(vectors)}))
"""

LOAD = r"""
import json, sys
def mib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
from embedding_assets.engine import LexicalEmbedder
LexicalEmbedder.load(sys.argv[2])
before = mib("VmRSS")
model = LexicalEmbedder.load(sys.argv[1])
import embedding_assets
print(json.dumps({"source": embedding_assets.__file__, "extra_peak_mib": mib("VmHWM") - before, "extra_rss_mib": mib("VmRSS") - before}))
"""

DEFINITIONS = r"""
import json, sys, time
def mib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
t0 = time.perf_counter()
import embedding_assets.definitions
t1 = time.perf_counter()
import embedding_assets
print(json.dumps({"source": embedding_assets.__file__, "import_s": t1 - t0, "rss_mib": mib("VmRSS"), "peak_mib": mib("VmHWM"),
                  "modules": [m for m in json.loads(sys.argv[1]) if m in sys.modules]}))
"""


def wheel_layout(files: dict[str, bytes], target: Path) -> Path:
    """Write the package's files as an install would place them: jobs/ and resources/ inside embedding_assets/."""
    for name, data in files.items():
        top, _, rest = name.partition("/")
        if top in ("jobs", "resources"):
            name = f"embedding_assets/{top}/{rest}"
        elif top != "embedding_assets":
            continue
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def tree_at(rev: str, target: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "embedding_assets", "jobs", "resources"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return wheel_layout(files, target)


def working_tree(target: Path) -> Path:
    files = {}
    for top in ("embedding_assets", "jobs", "resources"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    return wheel_layout(files, target)


def run(tree: Path, script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{tree}: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["source"].startswith(str(tree)):
        sys.exit(f"imported {result['source']}, not the tree under test {tree}")
    return result


def build_model(path: Path, vocabulary_size: int = 520_000) -> int:
    """A model of the bench's shape on the sample's n-grams, random weights; returns its file size."""
    import numpy as np

    from bench.corpora import sample_texts
    from bench.encode import HIDDEN, MAX_N, plain_tokenizer_json
    from embedding_assets.engine import LexicalEmbedder
    from embedding_assets.engine.features import build_features
    from embedding_assets.engine.network import init_layers

    texts = sample_texts()
    tokenizer_json = plain_tokenizer_json()
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts[i : i + 2048] for i in range(0, len(texts), 2048)], vocabulary_size, MAX_N, 2, 2_000_000)
    model = LexicalEmbedder(tokenizer_json, feats.vocabulary, init_layers([feats.vocabulary.size, *HIDDEN], 0),
                            np.full(HIDDEN[-1], HIDDEN[-1] ** -0.5, np.float32), 0.3, first_layer_dtype="float16")
    model.save(path)
    return path.stat().st_size


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"git revision to compare with (default {BEFORE})")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    from bench.corpora import sample_texts

    heavy = json.dumps(HEAVY)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        texts = str(tmp / "texts.json")
        Path(texts).write_text(json.dumps(sample_texts()[:1000]))
        model = tmp / "model.safetensors"
        size_mib = build_model(model) / 2**20
        small = tmp / "small.safetensors"
        build_model(small, 2_000)
        trees = {f"before ({args.before})": tree_at(args.before, tmp / "before"), "after (working tree)": working_tree(tmp / "after")}
        results = {}
        for name, tree in trees.items():
            run(tree, ENCODE, str(model), texts, heavy)  # warm-up: numba's cache, the page cache
            run(tree, DEFINITIONS, heavy)
            results[name] = {"encode": [], "definitions": [], "load": []}
        for _ in range(args.runs):  # interleaved, so that a busy moment hits both trees alike
            for name, tree in trees.items():
                results[name]["encode"].append(run(tree, ENCODE, str(model), texts, heavy))
                results[name]["definitions"].append(run(tree, DEFINITIONS, heavy))
                results[name]["load"].append(run(tree, LOAD, str(model), str(small)))
        shutil.rmtree(tmp / "before", ignore_errors=True)

    print(f"model file {size_mib:.0f} MiB; 1,000 sample docstrings encoded; median of {args.runs} fresh processes per row\n")
    print("| path | tree | import s | load s | encode s | RSS MiB | peak RSS MiB | heavy modules loaded |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, runs in results.items():
        enc, dfn = runs["encode"], runs["definitions"]
        print(f"| engine: load + encode | {name} | {median(enc, 'import_s'):.2f} | {median(enc, 'load_s'):.2f} | {median(enc, 'encode_s'):.2f} | "
              f"{median(enc, 'rss_mib'):.0f} | {median(enc, 'peak_mib'):.0f} | {', '.join(enc[-1]['modules'])} |")
        print(f"| definitions | {name} | {median(dfn, 'import_s'):.2f} |  |  | {median(dfn, 'rss_mib'):.0f} | {median(dfn, 'peak_mib'):.0f} | {', '.join(dfn[-1]['modules'])} |")
    print("\n| tree | peak RSS a load adds | x the model file | RSS it keeps |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        peak, kept = median(runs["load"], "extra_peak_mib"), median(runs["load"], "extra_rss_mib")
        print(f"| {name} | {peak:.0f} MiB | {peak / size_mib:.2f}x | {kept:.0f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
