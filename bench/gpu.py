"""The two GPU stages on this machine's device: the teacher's docs/s and the student's seconds per epoch.

    python -m bench.gpu [--docs N] [--device auto|cpu|cuda|cuda:N] [--precision fp16|bf16|fp32] [--json PATH]

Corpus: the built-in sample (`embedding_assets/data/sample_corpus`, 11,791 stdlib docstrings),
all of it or its first `--docs`; 15% held out by a seeded draw, the pipeline's default share.
The teacher is `EMBEDDING_ASSETS_TEACHER` (any sentence-transformers model directory) or the
packaged all-MiniLM-L6-v2, with the Teacher resource's defaults (256 tokens, batch 64, L2).

(a) Teacher. The project's path, as `teacher_embeddings` runs it: chunks of 512 documents, each
one forward pass giving the vectors and the token sums over the training documents
(`engine.teacher.embed_with_token_sums`), under autocast at `--precision` on a GPU. Anchors in
the same run: sentence-transformers' own `encode` of the same texts with the same model, batch
size and autocast (vectors only), the same `encode` in fp32, and, on a GPU machine, the
project's path on this machine's CPU over the first `--cpu-teacher-docs` documents. After a
warm-up, each figure is the best of `--repeats` passes taken in turn.

(b) Student. `engine.training.train_student`, the function `distilled_model` calls, with the
default `DistillConfig` (5 epochs of batch 512, ridge start toward the token prior), on TF-IDF
features built with the `features` asset's defaults and the teacher vectors and token sums of
(a), on the device and, as the anchor, on this machine's CPU. An epoch's time is its steps plus
the held-out fidelity measured after it, as in the asset; the first epoch carries the device's
warm-up, so the steady figure is the mean of the later ones.

Imports the engine only (no Dagster), so it runs wherever torch and sentence-transformers do.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from embedding_assets.engine.config import DistillConfig  # noqa: E402
from embedding_assets.engine.features import build_features  # noqa: E402
from embedding_assets.engine.prior import TokenSums  # noqa: E402
from embedding_assets.engine.teacher import DEFAULT_TEACHER, default_teacher_dir, embed, embed_with_token_sums, load_teacher  # noqa: E402
from embedding_assets.engine.training import train_student  # noqa: E402
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR  # noqa: E402

CHUNK_SIZE = 512  # TeacherEmbeddingsConfig.chunk_size
BATCH_SIZE = 64  # Teacher.batch_size
MAX_SEQ_LENGTH = 256  # Teacher.max_seq_length
HELDOUT_FRACTION = 0.15  # TrainingSampleConfig.heldout_fraction
FEATURES = {"vocabulary_size": 200_000, "max_ngram_length": 5, "min_document_frequency": 2, "counter_capacity": 2_000_000}  # FeaturesConfig


def read_sample(limit: int | None) -> tuple[list[str], list[str], list[str]]:
    ids, texts, labels = [], [], []
    for path in sorted(SAMPLE_CORPUS_DIR.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "text", "label"])
        ids += table["id"].to_pylist()
        texts += table["text"].to_pylist()
        labels += table["label"].to_pylist()
    return ids[:limit], texts[:limit], labels[:limit]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: torch sees no CUDA device")
    return name


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"CPU {model}, {torch.get_num_threads()} torch threads"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def project_pass(model, texts, heldout, device, precision) -> tuple[np.ndarray, TokenSums]:
    """What `embed_in_chunks` computes for a fresh sample: one forward pass per chunk, vectors and token sums."""
    vectors, sums = [], []
    for start in range(0, len(texts), CHUNK_SIZE):
        window = slice(start, start + CHUNK_SIZE)
        chunk_vectors, chunk_sums = embed_with_token_sums(model, texts[window], device, precision, BATCH_SIZE, True, list(~heldout[window]))
        vectors.append(chunk_vectors)
        sums.append(chunk_sums)
    return np.concatenate(vectors), TokenSums.merge(sums, vectors[0].shape[1])


def timed(device: str, work):
    synchronize(device)
    started = time.perf_counter()
    result = work()
    synchronize(device)
    return time.perf_counter() - started, result


def measure_teacher(source, texts, heldout, device, precision, repeats) -> tuple[dict, np.ndarray, TokenSums]:
    load_seconds, model = timed(device, lambda: load_teacher(source, device, MAX_SEQ_LENGTH))
    project_pass(model, texts[:BATCH_SIZE], heldout[:BATCH_SIZE], device, precision)  # warm-up: kernels, allocator, tokenizer
    runs = {
        "project path (vectors + token sums, chunks of 512)": lambda: project_pass(model, texts, heldout, device, precision),
        f"sentence-transformers encode, {precision if device.startswith('cuda') else 'fp32'}": lambda: embed(model, texts, device, precision, BATCH_SIZE, True),
    }
    if device.startswith("cuda") and precision != "fp32":
        runs["sentence-transformers encode, fp32"] = lambda: embed(model, texts, device, "fp32", BATCH_SIZE, True)
    best, outputs = {name: float("inf") for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds, outputs[name] = timed(device, run)
            best[name] = min(best[name], seconds)
    vectors, sums = outputs[next(iter(runs))]
    anchor = outputs[list(runs)[1]]
    figures = {
        "load_seconds": round(load_seconds, 2),
        "weights_dtype": str(next(model.parameters()).dtype),
        "docs_per_second": {name: round(len(texts) / seconds, 1) for name, seconds in best.items()},
        "seconds": {name: round(seconds, 3) for name, seconds in best.items()},
        "min_cosine_project_vs_encode": round(float(np.min(np.sum(vectors * anchor, axis=1))), 5),
    }
    if device.startswith("cuda"):
        figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20)
    return figures, vectors, sums


def measure_training(features, vectors, sums, texts, heldout, labels, device) -> dict:
    marks = []
    started = time.perf_counter()
    _, report = train_student(
        features, vectors, DistillConfig(), texts=texts, heldout=heldout, labels=labels, token_sums=sums, device=device,
        on_epoch=lambda epoch, history, measured: marks.append(time.perf_counter()),
    )
    wall = time.perf_counter() - started
    # The loop's clock starts after the ridge start; each mark closes an epoch (its steps and held-out fidelity).
    epochs = [report.seconds - (marks[-1] - marks[0]), *np.diff(marks)] if marks else []
    return {
        "device": device,
        "train_documents": report.train_documents,
        "steps": report.steps,
        "seconds_per_epoch": round(report.seconds / max(len(epochs), 1), 3),
        "first_epoch_seconds": round(epochs[0], 3) if epochs else None,
        "later_epoch_seconds": round(float(np.mean(epochs[1:])), 3) if len(epochs) > 1 else None,
        "loop_seconds": round(report.seconds, 2),
        "train_student_seconds": round(wall, 2),
        "heldout_recall_at_10": report.evaluation.get("student", {}).get("recall_at_10"),
    }


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=None, help="the first N documents of the sample (all 11,791 by default)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"), help="the teacher's autocast on a GPU")
    parser.add_argument("--repeats", type=int, default=3, help="teacher passes per variant; the best counts")
    parser.add_argument("--cpu-teacher-docs", type=int, default=1024, help="documents for the teacher's CPU anchor on a GPU machine; 0 skips it")
    parser.add_argument("--no-cpu-training", action="store_true", help="skip the student's CPU anchor on a GPU machine")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    teacher = os.environ.get("EMBEDDING_ASSETS_TEACHER", DEFAULT_TEACHER)
    source = str(default_teacher_dir()) if teacher == DEFAULT_TEACHER else teacher
    ids, texts, labels = read_sample(args.docs)
    heldout = np.random.default_rng(0).random(len(texts)) < HELDOUT_FRACTION
    import sentence_transformers
    import transformers

    results: dict = {
        "device": device_name(device),
        "corpus": f"built-in sample ({SAMPLE_CORPUS_DIR.name}), {len(texts)} documents, {int(heldout.sum())} held out",
        "teacher": teacher,
        "precision": args.precision if device.startswith("cuda") else "fp32",
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "sentence-transformers": sentence_transformers.__version__, "transformers": transformers.__version__},
    }
    print(f"{results['device']}; {results['corpus']}; teacher {teacher}", flush=True)

    results["teacher_on_device"], vectors, sums = measure_teacher(source, texts, heldout, device, args.precision, args.repeats)
    print(json.dumps(results["teacher_on_device"], indent=1), flush=True)
    if device.startswith("cuda") and args.cpu_teacher_docs:
        n = min(args.cpu_teacher_docs, len(texts))
        results["teacher_on_cpu"], _, _ = measure_teacher(source, texts[:n], heldout[:n], "cpu", "fp32", 1)
        results["teacher_on_cpu"]["documents"] = n
        results["teacher_on_cpu"]["device"] = device_name("cpu")
        print(json.dumps(results["teacher_on_cpu"], indent=1), flush=True)

    tokenizer_json = (Path(source) / "tokenizer.json").read_text(encoding="utf-8")
    seconds, features = timed("cpu", lambda: build_features(tokenizer_json, ids, [texts[i : i + 4096] for i in range(0, len(texts), 4096)], **FEATURES))
    results["features"] = {"seconds": round(seconds, 2), "vocabulary": features.vocabulary.size}
    results["training"] = [measure_training(features, vectors, sums, texts, heldout, labels, device)]
    print(json.dumps(results["training"][-1], indent=1), flush=True)
    if device.startswith("cuda") and not args.no_cpu_training:
        results["training"].append(measure_training(features, vectors, sums, texts, heldout, labels, "cpu"))
        print(json.dumps(results["training"][-1], indent=1), flush=True)

    rows = [("device", results["device"]), ("corpus", results["corpus"]), ("teacher", f"{teacher} ({results['teacher_on_device']['weights_dtype']} weights, {results['precision']} compute)")]
    for part in ("teacher_on_device", "teacher_on_cpu"):
        if part in results:
            where = "device" if part == "teacher_on_device" else f"CPU, first {results[part]['documents']} docs"
            rows += [(f"teacher docs/s, {name} ({where})", f"{value:,.1f}") for name, value in results[part]["docs_per_second"].items()]
    project, anchor = list(results["teacher_on_device"]["docs_per_second"].values())[:2]
    rows.append(("teacher: project path / encode anchor", f"{project / anchor:.2f}"))
    rows.append(("features (CPU, once)", f"{results['features']['seconds']} s, {results['features']['vocabulary']:,} n-grams"))
    for run in results["training"]:
        rows.append((f"student s/epoch on {run['device']} (first / later)", f"{run['seconds_per_epoch']} ({run['first_epoch_seconds']} / {run['later_epoch_seconds']}), {run['steps']} steps, train_student {run['train_student_seconds']} s"))
    if len(results["training"]) == 2:
        gpu, cpu = results["training"]
        rows.append(("student s/epoch: CPU / device", f"{cpu['seconds_per_epoch'] / gpu['seconds_per_epoch']:.2f}"))
    print("\n| | |\n|---|---|\n" + table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
